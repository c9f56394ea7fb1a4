"""One JSON object per line on stdout for every event a node reports.

Each line carries `ts`, `level`, `node`, `role` and `event`, plus the event's
own fields. Writers are thread-safe; the stream is injectable for tests.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class EventLog:
    def __init__(self, node: str, role: str, *, level: str = "info",
                 stream: TextIO | None = None) -> None:
        self.node = node
        self.role = role
        self._threshold = LEVELS[level]
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        if LEVELS[level] < self._threshold:
            return
        record = {"ts": round(time.time(), 6), "level": level, "node": self.node,
                  "role": self.role, "event": event, **fields}
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def debug(self, event: str, **fields: Any) -> None:
        self.emit(event, "debug", **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.emit(event, "info", **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit(event, "warning", **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit(event, "error", **fields)
