"""Asynchronous invocations, kept on disk: accepted once durable, retried when the instance
running one dies, and finished exactly once as the caller sees it.

`AsyncQueue(path)` replays its log (`nodes.common.durable.LogFile`: appends return after
fsync, a torn tail is dropped at start). The runner:

- `accept(id, function, event)` when `POST /async-function/NAME` arrives, and answers 202
  only after it returns: an accepted invocation survives a crash of the runner;
- `pending()` lists what waits for an instance, oldest first; `started(id)` records an
  attempt before the request is dispatched;
- `finished(id, ok, result, error)` records the outcome; a second outcome for one id (a
  retry that overlapped a late answer) is ignored, so the caller sees one result;
- `attempt_failed(id, why)` when the instance died or overran: the invocation waits again,
  or, after `max_attempts`, finishes with the error "failed after N attempts: why".

After a restart, invocations that were started but not finished wait again (their
instance died with the runner), their attempts counted. So a function may run more than
once for one invocation (at least once, as in every platform that retries), while its
result is recorded once. `result(id)` answers `GET` of an id: unknown, waiting (with the
attempts so far), or the outcome. The log is rewritten without the oldest outcomes once
more than `keep_results` have finished.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodes.common.durable import LogFile

_FRAME = struct.Struct(">II")  # crc32 of the payload, payload length
MAX_RECORD_BYTES = 2 << 20  # an event is at most 1 MiB, refused before it gets here
ACCEPTED, STARTED, FINISHED = "accepted", "started", "finished"


class QueueError(ValueError):
    """A call the queue refuses: an id accepted twice, an unknown id."""


@dataclass(frozen=True)
class Invocation:
    id: str
    function: str
    event: str  # JSON text
    attempts: int = 0
    running: bool = False
    done: bool = False
    ok: bool = False
    result: str = ""
    error: str = ""


def encode(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":")).encode()
    return _FRAME.pack(zlib.crc32(payload), len(payload)) + payload


def decode(data: bytes, offset: int) -> tuple[dict[str, Any], int] | None:
    """The intact record at `offset` and the offset after it, else None."""
    if offset + _FRAME.size > len(data):
        return None
    crc, length = _FRAME.unpack_from(data, offset)
    end = offset + _FRAME.size + length
    if length > MAX_RECORD_BYTES or end > len(data):
        return None
    payload = data[offset + _FRAME.size:end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        record = json.loads(payload)
    except ValueError:
        return None
    return (record, end) if isinstance(record, dict) and "op" in record else None


class AsyncQueue:
    def __init__(self, path: Path, *, max_attempts: int = 3, keep_results: int = 1000) -> None:
        if max_attempts < 1 or keep_results < 1:
            raise QueueError("max_attempts and keep_results are at least 1")
        self.max_attempts = max_attempts
        self.keep_results = keep_results
        self._log = LogFile(path)
        self._all: OrderedDict[str, Invocation] = OrderedDict()
        for record in self._log.recover(decode):
            self._apply(record)
        # Started before the restart and never finished: its instance is gone.
        for key, invocation in self._all.items():
            if invocation.running:
                self._all[key] = replace(invocation, running=False)

    # -- what the runner calls --------------------------------------------------------------

    def accept(self, invocation_id: str, function: str, event: str) -> None:
        if invocation_id in self._all:
            raise QueueError(f"invocation {invocation_id} was accepted already")
        self._write({"op": ACCEPTED, "id": invocation_id, "function": function,
                     "event": event})

    def pending(self) -> list[Invocation]:
        return [i for i in self._all.values() if not i.done and not i.running]

    def started(self, invocation_id: str) -> Invocation:
        invocation = self._get(invocation_id)
        if invocation.done or invocation.running:
            raise QueueError(f"invocation {invocation_id} is "
                             f"{'finished' if invocation.done else 'running'} already")
        self._write({"op": STARTED, "id": invocation_id})
        return self._all[invocation_id]

    def finished(self, invocation_id: str, *, ok: bool, result: str = "",
                 error: str = "") -> bool:
        """Record the outcome; False (and nothing written) if it had one already."""
        if self._get(invocation_id).done:
            return False
        self._write({"op": FINISHED, "id": invocation_id, "ok": ok, "result": result,
                     "error": error})
        self._forget_oldest()
        return True

    def attempt_failed(self, invocation_id: str, why: str) -> bool:
        """The attempt died; True if the invocation waits for another, False if it is
        finished now (out of attempts, or finished meanwhile)."""
        invocation = self._get(invocation_id)
        if invocation.done:
            return False
        if invocation.attempts >= self.max_attempts:
            self.finished(invocation_id, ok=False,
                          error=f"failed after {invocation.attempts} attempts: {why}")
            return False
        self._write({"op": "retry", "id": invocation_id})
        return True

    def result(self, invocation_id: str) -> Invocation | None:
        return self._all.get(invocation_id)

    def close(self) -> None:
        self._log.close()

    # -- inside -----------------------------------------------------------------------------

    def _get(self, invocation_id: str) -> Invocation:
        try:
            return self._all[invocation_id]
        except KeyError:
            raise QueueError(f"no invocation {invocation_id!r}") from None

    def _write(self, record: dict[str, Any]) -> None:
        self._log.append(encode(record))  # AppendFailed: the caller answers with an error
        self._apply(record)

    def _apply(self, record: dict[str, Any]) -> None:
        op, key = record["op"], record.get("id", "")
        if op == ACCEPTED:
            self._all[key] = Invocation(key, record["function"], record["event"])
            return
        invocation = self._all.get(key)
        if invocation is None:
            return  # its outcome was forgotten by a compaction
        if op == STARTED:
            self._all[key] = replace(invocation, attempts=invocation.attempts + 1, running=True)
        elif op == "retry":
            self._all[key] = replace(invocation, running=False)
        elif op == FINISHED:
            self._all[key] = replace(invocation, running=False, done=True, ok=record["ok"],
                                     result=record["result"], error=record["error"])

    def _forget_oldest(self) -> None:
        """Past keep_results outcomes, drop the oldest and rewrite the log without them."""
        done = [key for key, invocation in self._all.items() if invocation.done]
        if len(done) <= self.keep_results:
            return
        for key in done[:len(done) - self.keep_results]:
            del self._all[key]
        self._log.replace(encode(record) for record in self._records())

    def _records(self) -> list[dict[str, Any]]:
        """The log that rebuilds what is kept now."""
        out: list[dict[str, Any]] = []
        for i in self._all.values():
            out.append({"op": ACCEPTED, "id": i.id, "function": i.function, "event": i.event})
            out += [{"op": STARTED, "id": i.id}, {"op": "retry", "id": i.id}] * i.attempts
            if i.done:
                out.append({"op": FINISHED, "id": i.id, "ok": i.ok, "result": i.result,
                            "error": i.error})
        return out
