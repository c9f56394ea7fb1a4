"""Stateful Statement cursors: where each open cursor's next page starts. Sans-I/O.

The bank core opens and advances cursors; they live in this app server's
memory only, which is the point: a cursor is lost when its server restarts or
when another server answers the next page. The table is bounded twice: a
cursor idle for `idle_seconds` expires, and opening one more than `capacity`
evicts the least recently used. Time and ids are injected so tests are exact.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Cursor:
    account: str
    offset: int  # the next page's first history line
    last_used: float


def new_cursor_id() -> str:
    # Unguessable, so one client cannot page through a cursor another opened.
    return secrets.token_urlsafe(12)


class CursorTable:
    """Open cursors, least recently used first; safe to share between threads."""

    def __init__(self, *, capacity: int, idle_seconds: float,
                 clock: Callable[[], float] = time.monotonic,
                 new_id: Callable[[], str] = new_cursor_id) -> None:
        if capacity < 1 or idle_seconds <= 0:
            raise ValueError("a cursor table needs capacity >= 1 and idle_seconds > 0")
        self.capacity = capacity
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._new_id = new_id
        self._cursors: OrderedDict[str, Cursor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._cursors)

    def open(self, account: str, offset: int) -> str:
        """A new cursor at `offset`; evicts the least recently used one when full."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            while len(self._cursors) >= self.capacity:
                self._cursors.popitem(last=False)
            cursor_id = self._new_id()
            self._cursors[cursor_id] = Cursor(account, offset, now)
            return cursor_id

    def get(self, cursor_id: str) -> Cursor | None:
        """The cursor, marked as just used; None when it never existed, expired or was evicted."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            cursor = self._cursors.get(cursor_id)
            if cursor is None:
                return None
            cursor.last_used = now
            self._cursors.move_to_end(cursor_id)
            return Cursor(cursor.account, cursor.offset, now)

    def advance(self, cursor_id: str, offset: int) -> None:
        """Move a cursor to `offset`; a cursor that went meanwhile stays gone."""
        with self._lock:
            cursor = self._cursors.get(cursor_id)
            if cursor is not None:
                cursor.offset = offset

    def _expire(self, now: float) -> None:
        # Least recently used first, so the expired cursors are all at the front.
        while self._cursors:
            oldest_id, oldest = next(iter(self._cursors.items()))
            if now - oldest.last_used < self.idle_seconds:
                return
            del self._cursors[oldest_id]
