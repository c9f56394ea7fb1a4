"""Load-balancing policies: which of the candidate backends takes one call. Sans-I/O.

The forwarder calls `choose(candidates, affinity)` per attempt with the
backends the pool allows right now (never empty) and the value of the
affinity metadata key (or None). Policies hold no locks: round robin uses an
atomic counter, the others only read. Chance comes from an injected RNG.

- round_robin: each candidate in turn.
- least_outstanding: the power of two random choices — two distinct
  candidates at random, the one with fewer calls in flight wins (Mitzenmacher;
  what Envoy and Finagle call P2C least-request).
- consistent_hash: the affinity key's owner on a hash ring of every known
  backend, walking past the ones that may not take traffic, so a session stays
  on one backend and only the sessions of a backend that leaves move; calls
  without the key go round robin.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from nodes.switch.hashring import HashRing

POLICIES = ("round_robin", "least_outstanding", "consistent_hash")


class Candidate(Protocol):
    name: str
    outstanding: int


C = TypeVar("C", bound=Candidate)


class Policy:
    name = ""

    def choose(self, candidates: Sequence[C], affinity: str | None) -> C:
        raise NotImplementedError

    def members_changed(self, names: Iterable[str]) -> None:
        """The set of known backends changed (only a hash ring cares)."""


class RoundRobin(Policy):
    name = "round_robin"

    def __init__(self) -> None:
        self._turns = itertools.count()  # next() on a count is atomic under the GIL

    def choose(self, candidates: Sequence[C], affinity: str | None) -> C:
        return candidates[next(self._turns) % len(candidates)]


class LeastOutstanding(Policy):
    name = "least_outstanding"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[C], affinity: str | None) -> C:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:
            second += 1  # two distinct picks without building a sample list
        a, b = candidates[first], candidates[second]
        return b if b.outstanding < a.outstanding else a


class ConsistentHash(Policy):
    name = "consistent_hash"

    def __init__(self) -> None:
        self._ring = HashRing()
        self._fallback = RoundRobin()

    def members_changed(self, names: Iterable[str]) -> None:
        members = frozenset(names)
        if members != self._ring.members:
            self._ring = HashRing(members)

    def choose(self, candidates: Sequence[C], affinity: str | None) -> C:
        if affinity is None:
            return self._fallback.choose(candidates, None)
        by_name = {candidate.name: candidate for candidate in candidates}
        owner = self._ring.owner(affinity, by_name.__contains__)
        if owner is None:  # candidates not on the ring yet: a set change is on its way
            return self._fallback.choose(candidates, None)
        return by_name[owner]


def make_policy(name: str, *, rng: random.Random | None = None) -> Policy:
    if name == "round_robin":
        return RoundRobin()
    if name == "least_outstanding":
        return LeastOutstanding(rng or random.Random())
    if name == "consistent_hash":
        return ConsistentHash()
    raise ValueError(f"policy {name!r} is not one of {', '.join(POLICIES)}")
