"""History: what clients saw, one record per operation, for checkers and reports.

A workload appends an `Op` when an operation completes: which client process
ran it, what it was, when it was invoked and when it completed (seconds since
the history began), the result, and its type — `ok` (it happened), `fail`
(it certainly did not happen) or `info` (indefinite: a timed-out write may or
may not have happened). Thread-safe; written as JSON lines (`history.jsonl`).

Bounded: a history holds at most `max_ops` operations (a workload is bounded
in count already; this is the backstop) and `add` past it raises
HistoryFull, so a runaway workload fails loudly instead of growing without
end. A file is written whole under its lock, fsync'd and renamed into place
(distlab.files, as the fault journal is), so two writers never interleave
and a crash leaves the old file or the new one; `read` refuses a file with
more than `max_ops` lines and says which line of it does not parse.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distlab.errors import DistlabError
from distlab.files import locked, replace_durably

OK, FAIL, INFO = "ok", "fail", "info"
#: A bank or register run of the lab's sizes holds tens of thousands; a million ops is
#: some hundreds of MB of Python objects: past it something is unbounded.
DEFAULT_MAX_OPS = 1_000_000


class HistoryFull(DistlabError):
    """A history reached its bound (`max_ops`)."""


class HistoryUnreadable(DistlabError):
    """A history file that does not parse, or is past the bound."""


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
    max_ops: int = DEFAULT_MAX_OPS

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
            if len(self._ops) >= self.max_ops:
                raise HistoryFull(f"the history already holds {self.max_ops} operations, its "
                                  f"bound; bound the workload's count (ops) and duration")
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
        """Write every operation to `path` (JSON lines, by invoke time): locked, fsync'd,
        replaced atomically."""
        ops = sorted(self, key=lambda o: o.invoke)
        with locked(path):
            replace_durably(path, (json.dumps(asdict(op), sort_keys=True) + "\n"
                                   for op in ops))

    @classmethod
    def read(cls, path: Path, *, max_ops: int = DEFAULT_MAX_OPS) -> History:
        history = cls(max_ops=max_ops)
        # No lock: a write replaces the file whole, so a reader sees the old or the new one.
        with path.open() as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                if len(history) >= max_ops:
                    raise HistoryUnreadable(f"{path} holds more than {max_ops} operations, "
                                            f"the bound of a history")
                try:
                    history.add(Op(**json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise HistoryUnreadable(f"{path} line {number} is not an operation: "
                                            f"{exc}") from None
        return history

    @classmethod
    def of_ops(cls, ops: Iterable[Op]) -> History:
        history = cls()
        for op in ops:
            history.add(op)
        return history
