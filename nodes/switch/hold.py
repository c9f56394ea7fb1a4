"""The switch's hold: calls wait here while the service behind it moves to another machine.

A live migration has a blackout: the source is paused, then fenced, and the
destination takes over. Two kinds of calls meet it at the switch:

- new calls, while the hypervisor has asked the switch to hold
  (Control.Reconfigure {"hold": SECONDS}): they wait until the switch is
  re-pointed (Reconfigure {"backends": ...}), the hold is released
  ({"hold": "0"}: the migration failed, the source serves on) or the hold's
  own time is up;
- calls the fenced source refused "not applied: moved" (trailer
  nodes.common.interceptors.MOVED_METADATA_KEY): they wait for the switch to be re-pointed, then go
  to the new backend. Nothing ran them, so any method may be sent again.

Both are bounded: at most `max_calls` wait at once (one more is refused
RESOURCE_EXHAUSTED at once) and none waits past the hold's end or its
caller's deadline. A client sees a delay, not an error. A hold ends by
itself, so a hypervisor that dies mid-migration cannot wedge the switch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class HoldFull(Exception):
    """Too many calls wait already."""


class Hold:
    def __init__(self, *, max_calls: int, max_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_calls = max_calls
        self.max_seconds = max_seconds
        self._clock = clock
        self._changed = threading.Condition()
        self._until: float | None = None  # holding new calls until then
        self._generation = 0  # bumped whenever the switch is re-pointed
        self.waiting = 0

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def holding(self) -> bool:
        return self.remaining > 0

    @property
    def remaining(self) -> float:
        """Seconds new calls are still held for (0: not holding)."""
        with self._changed:
            now = self._clock()
            return self._until - now if self._holding(now) else 0.0

    def _holding(self, now: float) -> bool:
        return self._until is not None and now < self._until

    def start(self, seconds: float) -> float:
        """Hold new calls for at most `seconds` (capped at max_seconds); the time it holds."""
        seconds = min(seconds, self.max_seconds)
        with self._changed:
            self._until = self._clock() + seconds if seconds > 0 else None
            self._changed.notify_all()
        return seconds

    def repointed(self) -> None:
        """The switch now forwards to other backends: every waiting call goes there."""
        with self._changed:
            self._generation += 1
            self._until = None
            self._changed.notify_all()

    def enter(self, deadline: float | None) -> None:
        """Return once new calls may be forwarded (at once unless holding)."""
        with self._changed:
            if not self._holding(self._clock()):
                return
            self._wait(lambda now: not self._holding(now), lambda: self._until, deadline)

    def await_move(self, seen: int, deadline: float | None) -> bool:
        """Wait until the switch is re-pointed after generation `seen`; whether it was."""
        with self._changed:
            until = self._clock() + self.max_seconds
            self._wait(lambda now: self._generation != seen, lambda: until, deadline)
            return self._generation != seen

    def _wait(self, done: Callable[[float], bool], until: Callable[[], float | None],
              deadline: float | None) -> None:
        if self.waiting >= self.max_calls:
            raise HoldFull(f"the switch already holds {self.waiting} calls while the service "
                           "moves; try again shortly")
        self.waiting += 1
        try:
            while True:
                now = self._clock()
                if done(now):
                    return
                ends = min((t for t in (until(), deadline) if t is not None),
                           default=now + self.max_seconds)
                if now >= ends:
                    return
                self._changed.wait(ends - now)
        finally:
            self.waiting -= 1
