"""The retry budget: retries may add only a bounded share on top of requests. Sans-I/O.

Finagle's RetryBudget (and Envoy's retry budgets): every request deposits
`percent`/100 of a token, every retry withdraws a whole one, and deposits and
withdrawals count only for the last WINDOW_SECONDS; a reserve of
`min_per_second` x WINDOW_SECONDS tokens lets a quiet switch still retry a
little. So when a backend fails, retries add at most `percent` % load plus the
small floor, instead of multiplying it by the attempt count (a retry storm).
The forwarder calls `deposit` per request and `try_withdraw` per retry; the
clock is injected.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 10
# Whole numbers of hundredths of a percent of a token, so sums never drift.
_UNITS_PER_TOKEN = 10_000


class RetryBudget:
    def __init__(self, *, percent: float, min_per_second: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if percent < 0 or min_per_second < 0:
            raise ValueError("percent and min_per_second must be >= 0")
        self._deposit_units = round(percent * _UNITS_PER_TOKEN / 100)
        self._reserve_units = round(min_per_second * WINDOW_SECONDS * _UNITS_PER_TOKEN)
        self._clock = clock
        self._slots: deque[list[int]] = deque()  # [second, units] oldest first
        self._sum = 0
        self._lock = threading.Lock()

    def deposit(self) -> None:
        """One request was sent: it earns `percent` % of a retry."""
        if self._deposit_units:
            with self._lock:
                self._add(self._deposit_units)

    def try_withdraw(self) -> bool:
        """Spend one retry if the budget has one; False means do not retry."""
        with self._lock:
            self._add(0)
            if self._reserve_units + self._sum < _UNITS_PER_TOKEN:
                return False
            self._add(-_UNITS_PER_TOKEN)
            return True

    def available(self) -> float:
        """Retries the budget would allow right now."""
        with self._lock:
            self._add(0)
            return (self._reserve_units + self._sum) / _UNITS_PER_TOKEN

    def _add(self, units: int) -> None:
        second = int(self._clock())
        while self._slots and self._slots[0][0] <= second - WINDOW_SECONDS:
            self._sum -= self._slots.popleft()[1]
        if not units:
            return
        if self._slots and self._slots[-1][0] == second:
            self._slots[-1][1] += units
        else:
            self._slots.append([second, units])
        self._sum += units
