"""Open-loop pacing for a workload's client process: a fixed schedule of operation starts.

A process with a rate starts its operations at t0, t0 + 1/rate, t0 + 2/rate, ...
whatever the answers take; when it falls behind (a slow answer) it starts the
next one at once but never bursts to catch up, so a stalled cluster is not hit
by a backlog when it comes back. A rate of 0 means closed loop: no waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pacer:
    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 operations per second, not {rate}")
        self._period = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._next: float | None = None

    def wait(self, stop: threading.Event) -> None:
        """Block until the next operation's start (or `stop`)."""
        if not self._period:
            return
        now = self._clock()
        if self._next is None or self._next < now - self._period:
            self._next = now  # first operation, or behind by more than one: no burst
        delay = self._next - now
        if delay > 0:
            stop.wait(delay)
        self._next += self._period
