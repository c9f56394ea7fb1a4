"""A function as an instance runs it: Python source with `handle(event, context)`, loaded
once (a cold start's "load the function" step) and run one request at a time.

`load(name, source)` compiles the source into a fresh module and checks that it has a
callable `handle`; a syntax error or a missing handler is a `LoadError` saying where.
`LoadedFunction.run(event, ...)` calls it with the decoded JSON event and a `Context`
(the invocation id, the time left before the timeout, a logger, and the client of the
lab's storage the runner passes in: functions keep no state of their own) and returns an
`Outcome`: the JSON result, or the function's error (its exception type and message), and
the log lines written either way (`context.log` and print). The function keeps running
past its timeout if it ignores `remaining_seconds()`: stopping it is the runner's part
(it replaces the instance). No network I/O here.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodes.common.usercode import UserCodeError, describe, import_source

MAX_LOG_LINES = 200  # per invocation: a function that logs in a loop cannot fill memory
MAX_LOG_LINE_CHARS = 2000


class LoadError(ValueError):
    """The function's source cannot be loaded: a syntax error, or no callable handle."""


@dataclass
class Context:
    invocation_id: str
    deadline: float  # time.monotonic() at which the runner stops the instance
    storage: Any = None  # the lab's kv client, when the runner gives one
    logs: list[str] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic

    def remaining_seconds(self) -> float:
        return max(self.deadline - self.clock(), 0.0)

    def log(self, message: object) -> None:
        if len(self.logs) < MAX_LOG_LINES:
            self.logs.append(str(message)[:MAX_LOG_LINE_CHARS])
        elif len(self.logs) == MAX_LOG_LINES:
            self.logs.append(f"... (log lines past {MAX_LOG_LINES} dropped)")


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: str  # JSON text of the result when ok
    error: str  # "ValueError: bad input" when not ok
    logs: tuple[str, ...]


class LoadedFunction:
    def __init__(self, name: str, handle: Callable[[Any, Context], Any]) -> None:
        self.name = name
        self._handle = handle

    def run(self, event_json: str, *, invocation_id: str, timeout: float,
            storage: Any = None) -> Outcome:
        context = Context(invocation_id, time.monotonic() + timeout, storage)
        try:
            event = json.loads(event_json) if event_json else None
        except ValueError as exc:
            return Outcome(False, "", f"the event is not JSON: {exc}", ())
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                value = self._handle(event, context)
        except BaseException as exc:  # whatever it raises (sys.exit too) is its own error
            _log_printed(context, printed)
            return Outcome(False, "", describe(exc) + _where(exc, self.name),
                           tuple(context.logs))
        _log_printed(context, printed)
        try:
            result = json.dumps(value)
        except (TypeError, ValueError) as exc:
            return Outcome(False, "", f"the function returned a value that is not JSON: {exc}",
                           tuple(context.logs))
        return Outcome(True, result, "", tuple(context.logs))

def load(name: str, source: str) -> LoadedFunction:
    """Compile `source` as the module of function `name` and find its handler."""
    try:
        module = import_source(source, f"distlab_function_{name}", _filename(name))
    except UserCodeError as exc:
        raise LoadError(f"function {name} does not load: {exc}") from None
    handle = getattr(module, "handle", None)
    if not callable(handle):
        raise LoadError(f"function {name} has no handle(event, context)")
    return LoadedFunction(name, handle)


def _filename(name: str) -> str:
    return f"<function {name}>"


def _log_printed(context: Context, printed: io.StringIO) -> None:
    for line in printed.getvalue().splitlines():
        context.log(line)


def _where(exc: Exception, name: str) -> str:
    """' (line N)': the innermost line of the function's own code in the traceback."""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__)
             if frame.filename == _filename(name)]
    return f" (line {lines[-1]})" if lines else ""
