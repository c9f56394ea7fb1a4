"""Choking: which peers we upload to, by tit-for-tat (BEP 3, as the reference client does it).

A `Choker` is told who is connected, who is interested in us, and the bytes moved
each way. Every `rechoke_seconds` (10) it unchokes the `regular_slots` (4) interested
peers that upload to us fastest — or, when we are seeding and nobody can upload to
us, in turns: the ones that have waited longest since they were last unchoked (round
robin, libtorrent's default and mainline's since 4.0; unchoking the fastest
downloaders, as the first clients did, hands a seed to whoever uploads nothing
elsewhere, a free rider) — and every `optimistic_seconds` (30) it moves one
optimistic unchoke to another choked interested peer, chosen at random with peers
connected less than `optimistic_seconds` ago three times as likely (they have
nothing to trade yet). A peer that has never uploaded to us (a free rider, or one
that has nothing yet) competes only for the optimistic slot while we are leeching.
Joins, leaves and interest changes rechoke at the next `tick` without moving the
optimistic slot. Rates are bytes over the last `rate_window_seconds` (20).

Callers: the session (nodes.bittorrent.session) calls `tick` often (every second)
and sends choke/unchoke where `unchoked` changed. Clock and randomness are injected;
no I/O.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Hashable

PeerKey = Hashable
NEW_PEER_WEIGHT = 3


class RateMeter:
    """Bytes per second over a sliding window, in one-second buckets."""

    def __init__(self, clock: Callable[[], float], window_seconds: float = 20) -> None:
        self.clock = clock
        self.window_seconds = window_seconds
        self.total = 0
        self._buckets: deque[list] = deque()  # [whole second, bytes]

    def add(self, count: int) -> None:
        second = int(self.clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        self.total += count
        self._expire(second)

    def rate(self) -> float:
        self._expire(int(self.clock()))
        return sum(count for _, count in self._buckets) / self.window_seconds

    def _expire(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window_seconds:
            self._buckets.popleft()


class _PeerState:
    def __init__(self, clock: Callable[[], float], window: float) -> None:
        self.connected_at = clock()
        self.interested = False
        self.downloaded = RateMeter(clock, window)  # from them to us
        self.uploaded = RateMeter(clock, window)  # from us to them
        self.last_unchoked = float("-inf")  # when a rechoke last chose it


class Choker:
    def __init__(self, *, clock: Callable[[], float], rng: random.Random,
                 regular_slots: int = 4, rechoke_seconds: float = 10,
                 optimistic_seconds: float = 30, rate_window_seconds: float = 20) -> None:
        self.clock = clock
        self.rng = rng
        self.regular_slots = regular_slots
        self.rechoke_seconds = rechoke_seconds
        self.optimistic_seconds = optimistic_seconds
        self.rate_window_seconds = rate_window_seconds
        self.seeding = False
        self.unchoked: frozenset[PeerKey] = frozenset()
        self.optimistic: PeerKey | None = None
        self._peers: dict[PeerKey, _PeerState] = {}
        self._next_rechoke = clock()
        self._next_optimistic = clock() + optimistic_seconds
        self._optimistic_due = True
        self._changed = False

    def add_peer(self, peer: PeerKey) -> None:
        self._peers[peer] = _PeerState(self.clock, self.rate_window_seconds)
        self._changed = True

    def remove_peer(self, peer: PeerKey) -> None:
        self._peers.pop(peer, None)
        if self.optimistic == peer:
            self.optimistic = None
        self._changed = True

    def set_interested(self, peer: PeerKey, interested: bool) -> None:
        if self._peers[peer].interested != interested:
            self._peers[peer].interested = interested
            self._changed = True

    def set_seeding(self, seeding: bool) -> None:
        if seeding != self.seeding:
            self.seeding = seeding
            self._changed = True

    def downloaded(self, peer: PeerKey, count: int) -> None:
        """`count` bytes of piece data came from `peer`."""
        self._peers[peer].downloaded.add(count)

    def uploaded(self, peer: PeerKey, count: int) -> None:
        """`count` bytes of piece data went to `peer`."""
        self._peers[peer].uploaded.add(count)

    def download_rate(self, peer: PeerKey) -> float:
        return self._peers[peer].downloaded.rate()

    def upload_rate(self, peer: PeerKey) -> float:
        return self._peers[peer].uploaded.rate()

    def tick(self) -> frozenset[PeerKey]:
        """Rechoke if it is time (or peers changed); the peers to have unchoked now."""
        now = self.clock()
        if now >= self._next_optimistic:
            self._next_optimistic = now + self.optimistic_seconds
            self._optimistic_due = True
        if self._optimistic_due or self._changed or now >= self._next_rechoke:
            self._next_rechoke = now + self.rechoke_seconds
            self._changed = False
            self._rechoke(now)
        return self.unchoked

    def _interested(self) -> list[PeerKey]:
        return [peer for peer, state in self._peers.items() if state.interested]

    def _rechoke(self, now: float) -> None:
        interested = self._interested()
        self.rng.shuffle(interested)  # equal rates are served in a random order
        if self.seeding:
            ranked = sorted(interested, key=lambda peer: self._peers[peer].last_unchoked)
        else:
            ranked = sorted((peer for peer in interested
                             if self._peers[peer].downloaded.total > 0),
                            key=self.download_rate, reverse=True)
        if self._optimistic_due or self.optimistic not in interested:
            self._optimistic_due = False
            self.optimistic = self._choose_optimistic(now, interested, ranked)
        regular = [peer for peer in ranked if peer != self.optimistic][:self.regular_slots]
        chosen = set(regular)
        if self.optimistic is not None:
            chosen.add(self.optimistic)
        self.unchoked = frozenset(chosen)
        for peer in chosen:
            self._peers[peer].last_unchoked = now

    def _choose_optimistic(self, now: float, interested: list[PeerKey],
                           ranked: list[PeerKey]) -> PeerKey | None:
        regular = set(ranked[:self.regular_slots])
        candidates = [peer for peer in interested if peer not in regular]
        if not candidates:
            return None
        weights = [NEW_PEER_WEIGHT if now - self._peers[peer].connected_at
                   < self.optimistic_seconds else 1 for peer in candidates]
        return self.rng.choices(candidates, weights)[0]
