"""The data tier's key-value state machine and its request checks. Sans-I/O.

`ChainStore` holds every key with its value and version (the seq of the
update that last set it) and the seq of the last update applied. The head
calls `evaluate` to turn a checked `TxnRequest` into the next `Update`;
every replica calls `apply` with updates in seq order, `read` at the tail,
and `snapshot`/`install` for full-state transfers. The replica service and
the unit tests drive this same class; it never touches a file or a socket.

The checks (`check_txn`, `check_read`, and for what another replica sends,
`check_update` and `check_snapshot`) hold every request to the same limits,
whoever sent it: a predecessor with a bug (or a caller holding the lab
credential) cannot store what a client could not.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from nodes.rpc import chain_pb2

MAX_KEY_LENGTH = 256
# Bytes a KeyValue costs on the wire beyond its key and value (tags, lengths, version).
ENTRY_OVERHEAD_BYTES = 32


class InvalidRequest(ValueError):
    """A request the data tier refuses (INVALID_ARGUMENT); the message says why."""


class TooLarge(ValueError):
    """A reply would not fit in one message (RESOURCE_EXHAUSTED); the message says why."""


@dataclass(frozen=True)
class Limits:
    max_value_bytes: int
    max_txn_ops: int
    max_read_limit: int


@dataclass(frozen=True)
class TxnOutcome:
    """What a Txn does: `holds` is False when a compare failed; `update` is None when
    there is nothing to change (a failed compare, or deletes of absent keys only)."""

    holds: bool
    update: chain_pb2.Update | None


def check_key(key: str, what: str = "key") -> None:
    if not key:
        raise InvalidRequest(f"{what} must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"{what} is {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    if not key.isprintable():
        raise InvalidRequest(f"{what} must be printable text")


def check_txn(request: chain_pb2.TxnRequest, limits: Limits) -> None:
    """Raise InvalidRequest when `request` is malformed; a valid one may still fail a compare."""
    ops = len(request.compares) + len(request.puts) + len(request.deletes)
    if ops > limits.max_txn_ops:
        raise InvalidRequest(f"txn has {ops} compares, puts and deletes; "
                             f"the limit is {limits.max_txn_ops}")
    for compare in request.compares:
        check_key(compare.key, "compare key")
        if compare.target == chain_pb2.Compare.VERSION:
            continue
        if compare.target != chain_pb2.Compare.VALUE:
            raise InvalidRequest(f"compare on {compare.key!r} needs a target (VERSION or VALUE)")
        if len(compare.value) > limits.max_value_bytes:
            raise InvalidRequest(f"compare value is {len(compare.value)} bytes; "
                                 f"the limit is {limits.max_value_bytes}")
    _check_writes(request.puts, request.deletes, limits)


def _check_writes(puts: Iterable[chain_pb2.KeyValue], deletes: Iterable[str],
                  limits: Limits) -> None:
    written: set[str] = set()
    for put in puts:
        check_key(put.key, "put key")
        if len(put.value) > limits.max_value_bytes:
            raise InvalidRequest(f"value of {put.key!r} is {len(put.value)} bytes; "
                                 f"the limit is {limits.max_value_bytes}")
        if put.key in written:
            raise InvalidRequest(f"key {put.key!r} is written twice in one txn")
        written.add(put.key)
    for key in deletes:
        check_key(key, "delete key")
        if key in written:
            raise InvalidRequest(f"key {key!r} is written twice in one txn")
        written.add(key)


def check_update(update: chain_pb2.Update, limits: Limits) -> None:
    """Raise InvalidRequest when a forwarded `update` is not one a head could have made
    from a valid txn (a probe carries no payload, and may ask for seq 0)."""
    if update.probe:
        if update.puts or update.deletes:
            raise InvalidRequest("a probe carries no puts or deletes")
        return
    if update.seq < 1:
        raise InvalidRequest("an update's seq starts at 1")
    ops = len(update.puts) + len(update.deletes)
    if ops > limits.max_txn_ops:
        raise InvalidRequest(f"update has {ops} puts and deletes; "
                             f"the limit is {limits.max_txn_ops}")
    _check_writes(update.puts, update.deletes, limits)


def check_snapshot(chunks: list[chain_pb2.SyncChunk], limits: Limits) -> None:
    """Raise InvalidRequest when a full state sent by another replica holds an entry a
    txn could not have written, twice the same key, or a version after its seq."""
    seen: set[str] = set()
    for chunk in chunks:
        for entry in chunk.entries:
            check_key(entry.key, "snapshot key")
            if len(entry.value) > limits.max_value_bytes:
                raise InvalidRequest(f"value of {entry.key!r} is {len(entry.value)} bytes; "
                                     f"the limit is {limits.max_value_bytes}")
            if not 1 <= entry.version <= chunk.seq:
                raise InvalidRequest(f"version {entry.version} of {entry.key!r} is not in "
                                     f"1..{chunk.seq} (the snapshot's seq)")
            if entry.key in seen:
                raise InvalidRequest(f"key {entry.key!r} is in the snapshot twice")
            seen.add(entry.key)


def check_read(request: chain_pb2.ReadRequest, limits: Limits) -> int:
    """Raise InvalidRequest when `request` is malformed; return the prefix result limit."""
    if len(request.keys) > limits.max_read_limit:
        raise InvalidRequest(f"read asks for {len(request.keys)} keys; "
                             f"the limit is {limits.max_read_limit}")
    for key in request.keys:
        check_key(key)
    if len(request.prefix) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"prefix is {len(request.prefix)} characters; "
                             f"the limit is {MAX_KEY_LENGTH}")
    if request.limit > limits.max_read_limit:
        raise InvalidRequest(f"limit {request.limit} is above the cap of {limits.max_read_limit}")
    return request.limit or limits.max_read_limit


def entry_size(entry: chain_pb2.KeyValue) -> int:
    return len(entry.key.encode()) + len(entry.value) + ENTRY_OVERHEAD_BYTES


def chunk_entries(entries: Iterable[chain_pb2.KeyValue], seq: int,
                  budget_bytes: int) -> Iterator[chain_pb2.SyncChunk]:
    """Split a snapshot into SyncChunks of at most `budget_bytes` each (at least one chunk,
    at least one entry per chunk), the last one marked `last`."""
    batch: list[chain_pb2.KeyValue] = []
    size = 0
    for entry in entries:
        cost = entry_size(entry)
        if batch and size + cost > budget_bytes:
            yield chain_pb2.SyncChunk(entries=batch, seq=seq)
            batch, size = [], 0
        batch.append(entry)
        size += cost
    yield chain_pb2.SyncChunk(entries=batch, seq=seq, last=True)


class ChainStore:
    """Keys, values and versions, changed only by `apply`, `install` and (a migration's
    destination) `replace_keys`. `observer`, when set, hears of every key changed, after
    the change: a migration's dirty tracking (nodes/data/image.py)."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.observer: Callable[[str], None] | None = None
        self._data: dict[str, tuple[bytes, int]] = {}
        self._sorted_keys: list[str] = []  # for prefix reads without sorting every time

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> tuple[bytes, int] | None:
        return self._data.get(key)

    def version_of(self, key: str) -> int:
        found = self._data.get(key)
        return found[1] if found else 0

    def compare_holds(self, compare: chain_pb2.Compare) -> bool:
        """VERSION: the key's version equals (0 = absent). VALUE: the key exists and its
        value is exactly these bytes (an absent key equals no value, not even b"")."""
        if compare.target == chain_pb2.Compare.VERSION:
            return self.version_of(compare.key) == compare.version
        found = self._data.get(compare.key)
        return found is not None and found[0] == compare.value

    def evaluate(self, request: chain_pb2.TxnRequest) -> TxnOutcome:
        """The update a checked `request` makes as the next seq, if its compares hold."""
        if not all(self.compare_holds(compare) for compare in request.compares):
            return TxnOutcome(holds=False, update=None)
        deletes = [key for key in request.deletes if key in self._data]
        if not request.puts and not deletes:
            return TxnOutcome(holds=True, update=None)
        puts = [chain_pb2.KeyValue(key=put.key, value=put.value) for put in request.puts]
        return TxnOutcome(holds=True, update=chain_pb2.Update(
            seq=self.last_seq + 1, puts=puts, deletes=deletes))

    def apply(self, update: chain_pb2.Update) -> None:
        if update.seq != self.last_seq + 1:
            raise ValueError(f"update {update.seq} applied after {self.last_seq}")
        for put in update.puts:
            if put.key not in self._data:
                bisect.insort(self._sorted_keys, put.key)
            self._data[put.key] = (put.value, update.seq)
        for key in update.deletes:
            if self._data.pop(key, None) is not None:
                del self._sorted_keys[bisect.bisect_left(self._sorted_keys, key)]
        self.last_seq = update.seq
        if self.observer is not None:
            for key in [put.key for put in update.puts] + list(update.deletes):
                self.observer(key)

    def read(self, request: chain_pb2.ReadRequest, limit: int,
             budget_bytes: int) -> chain_pb2.ReadReply:
        """The named keys that exist, then up to `limit` keys under the prefix, all from
        this one state. Prefix results stop early (truncated) to fit `budget_bytes`."""
        reply = chain_pb2.ReadReply(seq=self.last_seq)
        size = 0
        named = set()
        for key in request.keys:
            found = self._data.get(key)
            if found is None or key in named:
                continue
            named.add(key)
            entry = chain_pb2.KeyValue(key=key, value=found[0], version=found[1])
            size += entry_size(entry)
            if size > budget_bytes:
                raise TooLarge(f"the named keys hold more than {budget_bytes} bytes: "
                               "read them in smaller groups")
            reply.found.append(entry)
        if not request.prefix:
            return reply
        start = bisect.bisect_left(self._sorted_keys, request.prefix)
        taken = 0
        for key in self._sorted_keys[start:]:
            if not key.startswith(request.prefix):
                break
            if key in named:
                continue
            value, version = self._data[key]
            entry = chain_pb2.KeyValue(key=key, value=value, version=version)
            if taken == limit or size + entry_size(entry) > budget_bytes:
                reply.truncated = True
                break
            size += entry_size(entry)
            taken += 1
            reply.found.append(entry)
        return reply

    def snapshot(self) -> tuple[list[chain_pb2.KeyValue], int]:
        """Every entry (key order) and the seq they are the state of."""
        entries = [chain_pb2.KeyValue(key=key, value=self._data[key][0],
                                      version=self._data[key][1])
                   for key in self._sorted_keys]
        return entries, self.last_seq

    def install(self, entries: Iterable[chain_pb2.KeyValue], seq: int) -> None:
        """Replace the whole state with a snapshot taken at `seq`."""
        before = set(self._data)
        self._data = {entry.key: (entry.value, entry.version) for entry in entries}
        self._sorted_keys = sorted(self._data)
        self.last_seq = seq
        if self.observer is not None:
            for key in sorted(before | set(self._data)):
                self.observer(key)

    def replace_keys(self, gone: Iterable[str], entries: Iterable[chain_pb2.KeyValue]) -> None:
        """Delete `gone`, then set every entry with its own version; the seq stays."""
        for key in gone:
            if self._data.pop(key, None) is not None:
                del self._sorted_keys[bisect.bisect_left(self._sorted_keys, key)]
                if self.observer is not None:
                    self.observer(key)
        for entry in entries:
            if entry.key not in self._data:
                bisect.insort(self._sorted_keys, entry.key)
            self._data[entry.key] = (entry.value, entry.version)
            if self.observer is not None:
                self.observer(entry.key)
