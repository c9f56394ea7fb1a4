"""The `invoke` workload and the `invocations` check.

The workload deploys a function whose answers can be checked — `square` returns n*n
after `work_ms` of work, or, with `storage: true`, `stash` puts a value in the lab's
storage and returns what it reads back — and has its client processes invoke it with
n = a counter of their own, at the workload's rate (open loop) or one after another, in
bursts of `burst` calls at once at each start (1: one call).
A share of the calls (`async_share`) are asynchronous: the history records the
acceptance (`submit`, ok with the invocation id once the runner kept it on disk), and the
settle step follows every accepted id until it has its one outcome.

One history operation per call:
- `invoke` (synchronous): ok with the result; fail when the platform refused or the
  function failed (a definite answer: nothing wrong was returned); info when no answer
  came (the call may have run);
- `submit` (asynchronous): ok with the id; fail when refused; info when not heard.

The `invocations` check: every synchronous result equals the function's answer for its
n; every accepted asynchronous invocation has completed (within the settle time), once
(the runner keeps one outcome per id), with the right result, and not by running out of
attempts. A call the function failed (its storage paused: a definite answer with the
reason), a refusal, or a submission not heard makes nothing invalid: it is reported, with
the errors the callers were told.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from distlab.checkers import Verdict
from distlab.errors import DistlabError
from distlab.history import FAIL, INFO, OK, History, Op
from distlab.serverless.client import FunctionError, FunctionsClient
from distlab.workloads.clients import ClientConfig, ClientWorkload
from distlab.workloads.pacing import Pacer

INVOKE, SUBMIT = "invoke", "submit"
SQUARE = """
import time
def handle(event, context):
    time.sleep(event["work_ms"] / 1000)
    return event["n"] * event["n"]
"""
STASH = """
import time
def handle(event, context):
    time.sleep(event["work_ms"] / 1000)
    key = "stash/" + event["key"]
    context.storage.put(key, str(event["n"]))
    return int(context.storage.get(key))
"""
POLL_SECONDS = 0.5
#: Not heard: the call may have reached the runner (or may yet run).
UNHEARD = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
           grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)


@dataclass
class InvokeConfig(ClientConfig):
    async_share: float = 0.5
    work_ms: int = 100
    storage: bool = False
    max_instances: int = 3
    burst: int = 1  # calls started at once at each paced start


@dataclass
class AsyncOutcomes:
    """What the settle step learnt of each accepted invocation, by id."""

    done: dict[str, Any] = field(default_factory=dict)  # id -> ResultReply
    waiting: set[str] = field(default_factory=set)


class InvokeWorkload(ClientWorkload):
    name = "invoke"

    def __init__(self, channel: grpc.Channel, config: InvokeConfig | None = None, *,
                 history: History | None = None, run_id: str | None = None,
                 first_process: int = 0,
                 reconnect: Callable[[], grpc.Channel] | None = None) -> None:
        super().__init__(config or InvokeConfig(), history=history, run_id=run_id,
                         first_process=first_process)
        self.client = FunctionsClient(channel)
        # A restarted runner comes back on another published port: a fresh channel then.
        self._reconnect = reconnect
        self._reconnecting = threading.Lock()
        self.function = f"{'stash' if self.config.storage else 'square'}-{self.run_id}"
        self.outcomes = AsyncOutcomes()

    def setup(self) -> None:
        self.client.deploy(self.function, STASH if self.config.storage else SQUARE,
                           max_instances=self.config.max_instances,
                           # past the storage's own 2 s deadline: its error is the answer
                           timeout=max(5.0, self.config.work_ms / 1000 * 4))

    def event(self, process: int, n: int) -> dict[str, Any]:
        return {"n": n, "work_ms": self.config.work_ms, "key": f"{process}-{n}"}

    def _process(self, process: int, stop: threading.Event, ends: float) -> None:
        rng = random.Random(f"{self.config.seed}-{process}")
        pacer = Pacer(self.config.rate / self.config.processes if self.config.rate else 0.0)
        burst = self.config.burst
        n = 0
        with ThreadPoolExecutor(burst, thread_name_prefix=f"invoke-{process}") as pool:
            while not stop.is_set() and time.monotonic() < ends:
                pacer.wait(stop)
                # A burst: `burst` calls at once at each paced start (1: one call).
                calls = [n + i + 1 for i in range(burst) if self._take_slot()]
                if not calls:
                    return
                n += len(calls)
                kinds = [SUBMIT if rng.random() < self.config.async_share else INVOKE
                         for _ in calls]
                list(pool.map(lambda call: self._call(process, *call, stop),
                              zip(calls, kinds, strict=True)))

    def _call(self, process: int, n: int, kind: str, stop: threading.Event) -> None:
        """One call, recorded in the history."""
        args = {"n": n, "process": process}
        data = json.dumps(self.event(process, n))
        invoke = self.history.now()
        try:
            if kind == SUBMIT:
                result: Any = {"id": self.client.invoke_async(self.function, data)}
            else:
                reply = self.client.invoke(self.function, data, timeout=self.config.timeout)
                if not reply.ok:
                    self.history.add(Op(process, kind, args, invoke, self.history.now(), FAIL,
                                        error=reply.error[:200]))
                    return
                result = {"value": json.loads(reply.result), "path": reply.path}
        except FunctionError as exc:
            self.history.add(Op(process, kind, args, invoke, self.history.now(),
                                INFO if exc.code in UNHEARD else FAIL, error=str(exc)[:200]))
            if exc.code in UNHEARD:
                self.reconnect()
                stop.wait(POLL_SECONDS)
            return
        self.history.add(Op(process, kind, args, invoke, self.history.now(), OK, result=result))

    def reconnect(self) -> None:
        if self._reconnect is None:
            return
        with self._reconnecting:
            try:
                self.client = FunctionsClient(self._reconnect())
            except DistlabError:
                pass  # the runner is not back yet: the next call tries again

    def settle(self, *, deadline_seconds: float) -> None:
        """Follow every accepted asynchronous invocation until it has its outcome."""
        ids = {op.result["id"] for op in self.history.of(SUBMIT) if op.type == OK}
        deadline = time.monotonic() + deadline_seconds
        waiting = ids - set(self.outcomes.done)
        while waiting and time.monotonic() < deadline:
            for invocation in sorted(waiting):
                try:
                    reply = self.client.result(invocation)
                except FunctionError as exc:
                    if exc.code in UNHEARD:
                        self.reconnect()  # the runner is restarting: ask again
                    continue
                if reply.done:
                    self.outcomes.done[invocation] = reply
            waiting = ids - set(self.outcomes.done)
            if waiting:
                time.sleep(POLL_SECONDS)
        self.outcomes.waiting = waiting

    def answer(self, n: int) -> int:
        """What the function must answer for n: its square, or n read back from storage."""
        return n if self.config.storage else n * n

    def check(self, **_: Any) -> Verdict:
        problems: list[str] = []
        calls = self.history.of(INVOKE)
        for op in calls:
            if op.type == OK and op.result["value"] != self.answer(op.args["n"]):
                problems.append(f"process {op.args['process']} n={op.args['n']}: got "
                                f"{op.result['value']}, want {self.answer(op.args['n'])}")
        submitted = {op.result["id"]: op for op in self.history.of(SUBMIT) if op.type == OK}
        for invocation, op in submitted.items():
            reply = self.outcomes.done.get(invocation)
            want = self.answer(op.args["n"])
            if reply is None:
                problems.append(f"async {invocation[:8]} (n={op.args['n']}) never completed")
            elif not reply.ok and reply.error.startswith("failed after"):
                problems.append(f"async {invocation[:8]} (n={op.args['n']}) {reply.error}")
            elif reply.ok and json.loads(reply.result) != want:
                problems.append(f"async {invocation[:8]}: got {reply.result}, want {want}")
        stats = {
            "sync_ok": sum(op.type == OK for op in calls),
            "sync_failed": sum(op.type == FAIL for op in calls),
            "sync_unheard": sum(op.type == INFO for op in calls),
            "async_accepted": len(submitted),
            "async_completed": len(self.outcomes.done),
            "async_failed": sum(not r.ok for r in self.outcomes.done.values()),
            "async_retried": sum(r.attempts > 1 for r in self.outcomes.done.values()),
            "cold_starts": sum(op.type == OK and op.result["path"] in ("cold", "prewarm")
                               for op in calls),
        }
        errors = sorted({op.error for op in calls if op.type == FAIL}
                        | {r.error for r in self.outcomes.done.values() if not r.ok})
        stats["errors"] = errors[:5]  # what a failed call was told (a clear reason each)
        if problems:
            return Verdict("invocations", False, problems[:20], stats)
        if not stats["sync_ok"] and not submitted:
            return Verdict("invocations", None, ["no call was answered: nothing to check"],
                           stats)
        return Verdict("invocations", True, [], stats)
