"""A kv guest's state as a migration image: the kv role's store, moved by dirty keys.

The kv guest runs the kv role's state machine (nodes.kv.store: the same
validation, versions and records) inside a vm process, so it moves by the
same pre-copy as a memory image (nodes.vm.strategies). What is tracked is
keys, not pages: every key belongs to one of SLOTS hash slots (crc32 of the
key, as Redis Cluster moves keys by slot), a write or delete marks its key's
slot dirty, and a unit sent is the current records of one slot's keys — a
round re-sends only the keys written during the one before (with the few
that share their slot). One more unit, VERSION_UNIT, carries the store's
version and is dirtied by every write, so the destination's versions go on
from the source's.

The image is sparse: a slot with no keys is never sent, and an empty
destination already holds it. Installing a slot replaces what the
destination holds in that slot, so a key deleted at the source is deleted
there too. Plain data under one lock, no I/O.
"""

from __future__ import annotations

import hashlib
import zlib

from nodes.kv.store import CHECKPOINT, DELETE, PUT, KVStore, Record, decode_records
from nodes.vm.memory import DirtyTracking, PageError

SLOTS = 4096
VERSION_UNIT = SLOTS
MAX_VALUE_BYTES = 64 * 1024  # a slot must fit a Transfer message with room to spare


def slot_of(key: str) -> int:
    return zlib.crc32(key.encode()) % SLOTS


class KeyImage(DirtyTracking):
    """SLOTS slots of keys and the version unit, with dirty tracking (see the module doc)."""

    def __init__(self, *, max_value_bytes: int = MAX_VALUE_BYTES) -> None:
        super().__init__(SLOTS + 1)
        self.pages = SLOTS + 1
        self.sparse = True
        self.store = KVStore(max_value_bytes=max_value_bytes)
        self._slots: list[set[str]] = [set() for _ in range(SLOTS)]
        self._bytes = 0  # encoded size of every record held

    # -- the kv guest's operations (the kv role's semantics) -------------------------
    def put(self, key: str, value: bytes) -> int:
        with self.lock:
            record = self.store.prepare_put(key, value)
            self._apply(record)
            return record.version

    def delete(self, key: str) -> bool:
        with self.lock:
            record = self.store.prepare_delete(key)
            if record is None:
                return False
            self._apply(record)
            return True

    def get(self, key: str) -> tuple[bytes, int] | None:
        with self.lock:
            return self.store.get(key)

    def keys(self, prefix: str, limit: int) -> tuple[list[str], bool]:
        with self.lock:
            return self.store.keys(prefix, limit)

    def __len__(self) -> int:
        return len(self.store)

    def _apply(self, record: Record) -> None:
        old = self.store.get(record.key) if record.op != CHECKPOINT else None
        if old is not None:
            self._bytes -= _size(record.key, old[0])
        self.store.apply(record)
        if record.op == CHECKPOINT:
            return
        slot = slot_of(record.key)
        if record.op == PUT:
            self._slots[slot].add(record.key)
            self._bytes += _size(record.key, record.value)
        else:
            self._slots[slot].discard(record.key)
        if self.tracking:
            self.dirty.mark(slot)
            self.dirty.mark(VERSION_UNIT)

    # -- the Image protocol (nodes.vm.strategies) ------------------------------------
    @property
    def size_bytes(self) -> int:
        return self._bytes + _size("", b"")  # the version unit

    def units(self) -> list[int]:
        with self.lock:
            return [slot for slot, keys in enumerate(self._slots) if keys] + [VERSION_UNIT]

    def check_page(self, page: int) -> None:
        if not 0 <= page < self.pages:
            raise PageError(f"unit {page} is outside the key image (0-{self.pages - 1})")

    def page(self, page: int) -> bytes:
        self.check_page(page)
        with self.lock:
            if page == VERSION_UNIT:
                return Record(CHECKPOINT, self.store.version, "").encode()
            return b"".join(Record(PUT, version, key, value).encode()
                            for key in sorted(self._slots[page])
                            for value, version in (self.store.get(key),))

    def install(self, page: int, data: bytes) -> None:
        """Make slot `page` hold exactly the records in `data`; never marks it dirty."""
        self.check_page(page)
        records, intact = decode_records(data)
        if intact != len(data):
            raise PageError(f"unit {page} is corrupt after byte {intact} of {len(data)}")
        if page == VERSION_UNIT:
            if len(records) != 1 or records[0].op != CHECKPOINT:
                raise PageError("the version unit holds one checkpoint record")
        elif any(r.op != PUT or slot_of(r.key) != page for r in records):
            raise PageError(f"unit {page} holds a record that is not a put of one of its keys")
        with self.lock:
            tracking, self.tracking = self.tracking, False
            try:
                if page != VERSION_UNIT:
                    arriving = {r.key for r in records}
                    for key in sorted(self._slots[page] - arriving):
                        self._apply(Record(DELETE, 0, key))
                for record in records:
                    self._apply(record)
            finally:
                self.tracking = tracking

    def checksum(self) -> str:
        """Of every key, value and version, and the store's version."""
        with self.lock:
            digest = hashlib.sha256()
            for record in self.store.records():
                digest.update(record.encode())
            return digest.hexdigest()


RECORD_OVERHEAD = len(Record(PUT, 0, "").encode())  # framing and header of one record


def _size(key: str, value: bytes) -> int:
    return RECORD_OVERHEAD + len(key.encode()) + len(value)
