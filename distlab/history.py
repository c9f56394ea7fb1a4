"""History: what clients saw, one record per operation, for checkers and reports.

A workload appends an `Op` when an operation completes: which client process
ran it, what it was, when it was invoked and when it completed (seconds since
the history began), the result, and its type — `ok` (it happened), `fail`
(it certainly did not happen) or `info` (indefinite: a timed-out write may or
may not have happened). Thread-safe; written as JSON lines (`history.jsonl`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, FAIL, INFO = "ok", "fail", "info"


@dataclass(frozen=True)
class Op:
    process: int
    op: str
    args: dict[str, Any]
    invoke: float
    complete: float
    type: str
    result: Any = None
    error: str = ""   # grpc status code name, or a short reason, when not ok

    @property
    def latency(self) -> float:
        return self.complete - self.invoke


@dataclass
class History:
    started_wall: float = field(default_factory=time.time)
    _started: float = field(default_factory=time.monotonic)
    _ops: list[Op] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def now(self) -> float:
        """Seconds since the history began: the clock of `invoke` and `complete`."""
        return time.monotonic() - self._started

    def restart_clock(self) -> None:
        """Make now time zero (a run's setup is not part of its timeline); only while empty."""
        with self._lock:
            if self._ops:
                raise ValueError("the history already holds operations timed on its clock")
            self._started = time.monotonic()
            self.started_wall = time.time()

    def add(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def __iter__(self) -> Iterator[Op]:
        with self._lock:
            return iter(list(self._ops))

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def of(self, name: str, kind: str | None = None) -> list[Op]:
        return [op for op in self if op.op == name and (kind is None or op.type == kind)]

    def counts(self) -> dict[str, dict[str, int]]:
        """{op name: {ok: n, fail: n, info: n}}."""
        table: dict[str, dict[str, int]] = {}
        for op in self:
            row = table.setdefault(op.op, {OK: 0, FAIL: 0, INFO: 0})
            row[op.type] += 1
        return table

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for op in sorted(self, key=lambda o: o.invoke):
                out.write(json.dumps(asdict(op), sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path) -> History:
        return cls.of_ops(Op(**json.loads(line)) for line in path.read_text().splitlines()
                          if line.strip())

    @classmethod
    def of_ops(cls, ops: Iterable[Op]) -> History:
        history = cls()
        for op in ops:
            history.add(op)
        return history
