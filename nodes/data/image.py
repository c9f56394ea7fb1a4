"""A data replica's state as a migration image: its ChainStore, moved by dirty keys. Sans-I/O.

Used by the replica service (nodes/data/service.py) on both ends of a
MigrateOut/MigrateIn stream, driven by nodes.vm.strategies.SourceMigration
exactly as a kv guest is (nodes/vm/keyimage.py): every key belongs to one of
SLOTS hash slots (crc32 of the key, keyimage.slot_of), every key an update
puts or deletes marks its slot dirty while tracking is on (the store's
`observer`), and a unit is a serialized SyncChunk of the slot's entries with
their versions. The image is sparse: an empty slot is never sent, and a spare
starts empty. Installing a slot replaces what the destination holds in it.

The seq is not a unit: the source sends it in the commit, and `finish` sets
it, after checking the whole state as a snapshot taken at that seq.

Locking is the caller's: `lock` is the service's state lock, held by the
migration driver around every call here; the store calls `_observe` with it
already held (inside ReplicaCore.record), so `_observe` takes no lock.
"""

from __future__ import annotations

import hashlib
import threading

from google.protobuf.message import DecodeError

from nodes.data.store import (
    ChainStore,
    InvalidRequest,
    Limits,
    check_key,
    check_snapshot,
    entry_size,
)
from nodes.rpc import chain_pb2
from nodes.vm.keyimage import SLOTS, slot_of
from nodes.vm.memory import DirtyBitmap, PageError


class ChainImage:
    """SLOTS slots of a ChainStore's keys with dirty tracking (see the module docstring)."""

    def __init__(self, store: ChainStore, *, max_value_bytes: int,
                 lock: threading.Lock | threading.RLock | None = None) -> None:
        self.pages = SLOTS
        self.sparse = True
        self.dirty = DirtyBitmap(SLOTS)
        self.tracking = False
        self.lock = lock or threading.RLock()
        self.store = store
        self._max_value_bytes = max_value_bytes
        self._slots: list[set[str]] = [set() for _ in range(SLOTS)]
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        entries, _ = store.snapshot()
        for entry in entries:
            self._count(entry.key)
        store.observer = self._observe

    def detach(self) -> None:
        """Stop hearing of the store's changes (the migration is over)."""
        if self.store.observer == self._observe:
            self.store.observer = None

    # -- what the store tells it (state lock held by the caller) ---------------------
    def _observe(self, key: str) -> None:
        self._count(key)
        if self.tracking:
            self.dirty.mark(slot_of(key))

    def _count(self, key: str) -> None:
        self._bytes -= self._sizes.pop(key, 0)
        found = self.store.get(key)
        slot = slot_of(key)
        if found is None:
            self._slots[slot].discard(key)
            return
        size = entry_size(chain_pb2.KeyValue(key=key, value=found[0], version=found[1]))
        self._sizes[key] = size
        self._bytes += size
        self._slots[slot].add(key)

    # -- the Image protocol (nodes.vm.strategies) ------------------------------------
    @property
    def size_bytes(self) -> int:
        return self._bytes

    def units(self) -> list[int]:
        return [slot for slot, keys in enumerate(self._slots) if keys]

    def check_page(self, page: int) -> None:
        if not 0 <= page < SLOTS:
            raise PageError(f"unit {page} is outside the data image (slots 0-{SLOTS - 1})")

    def page(self, page: int) -> bytes:
        self.check_page(page)
        chunk = chain_pb2.SyncChunk()
        for key in sorted(self._slots[page]):
            value, version = self.store.get(key)
            chunk.entries.add(key=key, value=value, version=version)
        return chunk.SerializeToString()

    def install(self, page: int, data: bytes) -> None:
        """Make slot `page` hold exactly the entries in `data`; never marks it dirty.
        PageError, with nothing changed, when `data` is not entries of this slot."""
        self.check_page(page)
        try:
            chunk = chain_pb2.SyncChunk.FromString(data)
        except DecodeError:
            raise PageError(f"unit {page} is not a serialized SyncChunk") from None
        seen: set[str] = set()
        for entry in chunk.entries:
            try:
                check_key(entry.key, "unit key")
            except InvalidRequest as exc:
                raise PageError(f"unit {page}: {exc}") from None
            if slot_of(entry.key) != page:
                raise PageError(f"unit {page} holds {entry.key!r}, a key of slot "
                                f"{slot_of(entry.key)}")
            if entry.key in seen:
                raise PageError(f"unit {page} holds {entry.key!r} twice")
            if entry.version < 1 or len(entry.value) > self._max_value_bytes:
                raise PageError(f"unit {page}: {entry.key!r} has version {entry.version} or "
                                f"a value over {self._max_value_bytes} bytes")
            seen.add(entry.key)
        tracking, self.tracking = self.tracking, False
        try:
            self.store.replace_keys(sorted(self._slots[page] - seen), chunk.entries)
        finally:
            self.tracking = tracking

    def start_tracking(self) -> None:
        self.dirty.take()
        self.tracking = True

    def stop_tracking(self) -> None:
        self.tracking = False
        self.dirty.take()

    def take_dirty(self) -> list[int]:
        return self.dirty.take()

    # -- the commit ------------------------------------------------------------------
    def finish(self, seq: int, limits: Limits) -> list[chain_pb2.KeyValue]:
        """Set the seq the source committed at, after checking every entry as a snapshot
        taken at it (InvalidRequest, nothing changed, when one is not); return the entries."""
        entries, _ = self.store.snapshot()
        check_snapshot([chain_pb2.SyncChunk(entries=entries, seq=seq)], limits)
        self.store.install(entries, seq)
        return entries

    def checksum(self) -> str:
        """Of every key, value and version, and the seq."""
        digest = hashlib.sha256(str(self.store.last_seq).encode())
        for entry in self.store.snapshot()[0]:
            digest.update(entry.SerializeToString())
        return digest.hexdigest()
