"""Token buckets: the byte rates a peer machine may upload and download at, sans-I/O.

One `TokenBucket` per direction per peer machine models its link (u_s or u_i up,
d_i down, in the textbook's notation): `rate` bytes/s flow in, at most `burst`
wait unused. The adapter (nodes.peer.engine) asks `delay(n)` before moving n bytes
and `take(n)` once it moved them; a rate of 0 means no limit. The clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, *, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._updated = clock()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def available(self) -> float:
        if self.unlimited:
            return float("inf")
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        return self._tokens

    def delay(self, count: int) -> float:
        """Seconds until `count` bytes may go (0: now)."""
        missing = count - self.available()
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, count: int) -> None:
        """`count` bytes went; the balance may go negative (a read larger than the burst)."""
        if not self.unlimited:
            self.available()
            self._tokens -= count
