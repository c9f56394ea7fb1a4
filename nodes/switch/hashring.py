"""Consistent hashing with virtual nodes: which backend a session key belongs to. Sans-I/O.

The consistent_hash policy asks `HashRing.owner` once per request. Each member
gets VIRTUAL_NODES points on a 64-bit circle; a key belongs to the first point
clockwise from its hash whose member the caller accepts. So removing a member,
or skipping one while it is down, moves only the keys it owned: every other
key keeps its member. Rings are immutable; a new member set is a new ring.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable

# Enough points per member that each one's share of the keys is within a few
# percent of 1/N for the handful of backends a lab runs.
VIRTUAL_NODES = 160


def stable_hash(text: str) -> int:
    """A hash that is the same in every process and on every run (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _accept_all(name: str) -> bool:
    return True


class HashRing:
    def __init__(self, members: Iterable[str] = (), *,
                 virtual_nodes: int = VIRTUAL_NODES) -> None:
        self.members = frozenset(members)
        points = sorted((stable_hash(f"{name}#{index}"), name)
                        for name in self.members for index in range(virtual_nodes))
        self._points = [point for point, _ in points]
        self._owners = [name for _, name in points]

    def owner(self, key: str, accept: Callable[[str], bool] = _accept_all) -> str | None:
        """The member `key` belongs to among those `accept` lets through; None if it refuses all."""
        count = len(self._points)
        if not count:
            return None
        start = bisect.bisect(self._points, stable_hash(key))
        refused: set[str] = set()
        for offset in range(count):
            name = self._owners[(start + offset) % count]
            if name in refused:
                continue
            if accept(name):
                return name
            refused.add(name)
            if len(refused) == len(self.members):
                break
        return None
