"""The entries a Chord peer holds: values with versions, deletions kept as tombstones. Sans-I/O.

A key lives at its owner and, as replicas, on the owner's next successors.
Copies travel between peers in any order (a put's replication, the handoff
when a node joins or leaves, re-replication after a failure), so `merge`
keeps whichever copy has the higher version and every order ends in the same
state. A delete is a tombstone with its own version, so an older copy arriving
later cannot bring the key back. The owner picks versions (`make_entry`):
its clock in nanoseconds, and always above the version it holds.

Tombstones expire (`expire_tombstones`), or every key ever deleted would be
held for ever. A tombstone is only needed while some peer may still hold an
older live copy of its key, and that window ends once every replica holds the
tombstone: the delete pushes it to the replicas at once, and the owner's
periodic repair pushes everything it owns to its whole replica set again. So
a peer drops a tombstone once its age (its version is the owner's clock at
the delete) passes a grace time longer than that repair period, and the
owner, in addition, only once a repair that reached every replica started
after the delete. A peer cut off for longer than the grace can still bring a
deleted key back when it returns (Cassandra's gc_grace_seconds has the same
rule and the same caveat).

Copies from other peers are checked as if the sender could be wrong (`check`):
the value limit a client's Put has, an empty tombstone, and a version a
clock could have given: at least 1, not far ahead of this peer's clock, and
never so high that the next write's version would not fit in a uint64.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from nodes.chord.ring import RingError, between_right, key_id

#: Versions are nanosecond clocks: 2**63 ns is the year 2262, and a write above the
#: highest version held still fits in the protocol's uint64.
MAX_VERSION = 2**63 - 1
#: How far ahead of this peer's clock another peer's version may be: clocks of one lab
#: agree far better than this; a version beyond it was not made by a clock.
MAX_VERSION_AHEAD_NS = 24 * 3600 * 10**9


@dataclass(frozen=True)
class Entry:
    key: str
    ident: int
    value: bytes
    version: int
    deleted: bool = False


class KeyStore:
    """Entries by key; thread-safe, since RPC threads and maintenance share one store."""

    def __init__(self, *, bits: int, max_value_bytes: int) -> None:
        self.bits = bits
        self.max_value_bytes = max_value_bytes
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if not e.deleted)

    def make_entry(self, key: str, value: bytes, *, deleted: bool, now_ns: int) -> Entry:
        """A new write of `key` by its owner, with a version above every earlier one."""
        ident = key_id(key, self.bits)
        if len(value) > self.max_value_bytes:
            raise RingError(f"value is {len(value)} bytes; the limit is {self.max_value_bytes}")
        with self._lock:
            held = self._entries.get(key)
        version = max(now_ns, held.version + 1 if held else 0)
        return Entry(key, ident, b"" if deleted else value, version, deleted)

    def check(self, entry: Entry, *, now_ns: int | None = None) -> None:
        """Raise RingError when `entry` is not one an owner could have written; with
        `now_ns`, also when its version is too far ahead of that clock."""
        if len(entry.value) > self.max_value_bytes:
            raise RingError(f"value of {entry.key!r} is {len(entry.value)} bytes; the limit "
                            f"is {self.max_value_bytes}")
        if entry.deleted and entry.value:
            raise RingError(f"tombstone of {entry.key!r} carries a value")
        if not 1 <= entry.version <= MAX_VERSION:
            raise RingError(f"version {entry.version} of {entry.key!r} is not in "
                            f"1..{MAX_VERSION}")
        if now_ns is not None and entry.version > now_ns + MAX_VERSION_AHEAD_NS:
            raise RingError(f"version {entry.version} of {entry.key!r} is "
                            f"{(entry.version - now_ns) // 10**9} s ahead of this peer's clock")

    def merge(self, entry: Entry) -> bool:
        """Keep `entry` if it is newer than the copy held. True if it was kept;
        RingError (nothing kept) if it fails `check`."""
        self.check(entry)
        with self._lock:
            held = self._entries.get(entry.key)
            if held is not None and held.version >= entry.version:
                return False
            self._entries[entry.key] = entry
            return True

    def get(self, key: str) -> Entry | None:
        """The copy held of `key`, a tombstone included; None if there is none."""
        with self._lock:
            return self._entries.get(key)

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def entries_in(self, start: int, end: int) -> list[Entry]:
        """Entries whose id lies in (start, end]: what a node owning that range must hold."""
        with self._lock:
            return [e for e in self._entries.values() if between_right(start, e.ident, end)]

    def tombstones(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.deleted)

    def expire_tombstones(self, *, now_ns: int, grace_ns: int, owned: tuple[int, int] | None,
                          replicated_ns: int) -> int:
        """Drop tombstones older than `grace_ns`; one in the `owned` range (start, end]
        (every key when None: no predecessor known) also needs a version below
        `replicated_ns`, when the last repair that reached every replica started.
        Return how many went."""
        with self._lock:
            expired = [e.key for e in self._entries.values()
                       if e.deleted and e.version < now_ns - grace_ns
                       and (e.version < replicated_ns
                            or (owned is not None
                                and not between_right(owned[0], e.ident, owned[1])))]
            for key in expired:
                del self._entries[key]
        return len(expired)

    def count(self, start: int | None, end: int) -> tuple[int, int]:
        """Live keys in (start, end] and outside it: (owned, replicas). Without a known
        start (no predecessor yet) every key counts as owned."""
        owned = replicas = 0
        with self._lock:
            for entry in self._entries.values():
                if entry.deleted:
                    continue
                if start is None or between_right(start, entry.ident, end):
                    owned += 1
                else:
                    replicas += 1
        return owned, replicas
