"""The register workload: random reads and writes of a few keys through the KV service.

Each key is a read/write register; the history this records is what a
linearizability checker (distlab.checkers.linearizable) judges. Client
processes (threads) share one channel to the cluster's entry point (the
tiers lab's switch, or a kv node) and each follows its own seeded plan
(`plan`), so a seed gives the same operation sequence; every write's value
is unique ("<process>-<serial>"), so a read names the write it saw.

Bounded by an operation count AND a duration AND a stop event. A write that
failed in a way that may still have happened (a deadline, an UNAVAILABLE
that does not say "not applied", ...) is `info`, never `fail`; a read that
failed is `fail` (it changed nothing); a read of a missing key is `ok` with
result None. With a `rate` each process starts its operations on a fixed
schedule (distlab.workloads.pacing), otherwise as fast as answers come.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from distlab.checkers import Verdict
from distlab.errors import UsageError
from distlab.history import FAIL, INFO, OK, History, Op
from distlab.workloads.clients import (
    DEFINITE_CODES,
    SESSION_KEY,
    ClientConfig,
    ClientWorkload,
    describe,
)
from distlab.workloads.pacing import Pacer
from nodes.rpc import kv_pb2, kv_pb2_grpc

READ, WRITE = "read", "write"
# How the app tier's KV service begins the message of a write it certainly did not apply
# (nodes.app.registers); any other UNAVAILABLE may hide an applied write.
NOT_APPLIED = "not applied"
SETUP_PAUSE_SECONDS = 0.2


@dataclass
class RegisterConfig(ClientConfig):
    keys: int = 3
    read_share: float = 0.5

    def __post_init__(self) -> None:
        rules = (("keys must be >= 1", self.keys, self.keys >= 1),
                 ("processes must be >= 1", self.processes, self.processes >= 1),
                 ("max_ops must be >= 0", self.max_ops, self.max_ops >= 0),
                 ("seconds must be > 0", self.seconds, self.seconds > 0),
                 ("timeout must be > 0", self.timeout, self.timeout > 0),
                 ("read_share must be within 0-1", self.read_share, 0 <= self.read_share <= 1),
                 ("rate must be >= 0 ops/s", self.rate, self.rate >= 0))
        problems = [f"{rule} (got {value})" for rule, value, holds in rules if not holds]
        if problems:
            raise UsageError("register workload: " + "; ".join(problems))


def plan(seed: int, process: int, keys: Sequence[str],
         read_share: float) -> Iterator[tuple[str, dict[str, str]]]:
    """The endless operation sequence of one client process: (READ, {"key"}) or
    (WRITE, {"key", "value"}). Depends on nothing but its arguments."""
    rng = random.Random(f"{seed}-register-{process}")
    serial = 0
    while True:
        # Two draws per operation whatever it turns out to be, so the sequence is stable.
        is_read = rng.random() < read_share
        key = rng.choice(keys)
        if is_read:
            yield READ, {"key": key}
        else:
            serial += 1
            yield WRITE, {"key": key, "value": f"{process}-{serial}"}


def write_outcome(code: grpc.StatusCode, details: str | None) -> str:
    """FAIL when a write that ended with this status certainly did not happen, else INFO."""
    if code in DEFINITE_CODES:
        return FAIL
    if code == grpc.StatusCode.UNAVAILABLE and (details or "").startswith(NOT_APPLIED):
        return FAIL
    return INFO


class RegisterWorkload(ClientWorkload):
    name = "register"

    def __init__(self, channel: grpc.Channel, config: RegisterConfig | None = None, *,
                 history: History | None = None, run_id: str | None = None,
                 first_process: int = 0) -> None:
        super().__init__(config or RegisterConfig(), history=history, run_id=run_id,
                         first_process=first_process)
        self.stub = kv_pb2_grpc.KVStub(channel)
        self.keys = [f"reg-{self.run_id}-{i}" for i in range(self.config.keys)]

    # -- phases ---------------------------------------------------------------------------

    def setup(self, *, deadline_seconds: float = 60.0) -> None:
        """Wait until the KV service answers (the cluster may still be starting); writes
        nothing, so every register starts missing. A definite refusal (no KV service there:
        UNIMPLEMENTED) is raised at once; no answer by the deadline raises the last error."""
        ends = time.monotonic() + deadline_seconds
        request = kv_pb2.ListRequest(prefix=f"reg-{self.run_id}-", limit=1)
        while True:
            try:
                self.stub.List(request, timeout=self.config.timeout)
                return
            except grpc.RpcError as exc:
                if exc.code() in DEFINITE_CODES or time.monotonic() > ends:
                    raise
                time.sleep(SETUP_PAUSE_SECONDS)

    def check(self, **options: Any) -> Verdict:
        """The linearizability verdict of every key's history; `options` go to the checker
        (time_limit, max_ops_per_key, name)."""
        from distlab.checkers.linearizable import check_linearizable

        return check_linearizable(self.history, **options)

    # -- one client process ---------------------------------------------------------------

    def _process(self, process: int, stop: threading.Event, ends: float) -> None:
        operations = plan(self.config.seed, process, self.keys, self.config.read_share)
        pacer = Pacer(self.config.rate / self.config.processes)
        metadata = ((SESSION_KEY, f"{self.run_id}-p{process}"),)
        while not stop.is_set() and time.monotonic() < ends:
            pacer.wait(stop)
            if stop.is_set() or time.monotonic() >= ends or not self._take_slot():
                return
            name, args = next(operations)
            if name == READ:
                self._read(process, args, metadata)
            else:
                self._write(process, args, metadata)

    def _write(self, process: int, args: dict[str, str], metadata) -> None:
        invoke = self.history.now()
        try:
            self.stub.Put(kv_pb2.PutRequest(key=args["key"], value=args["value"].encode()),
                          timeout=self.config.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            self.history.add(Op(process, WRITE, args, invoke, self.history.now(),
                                write_outcome(exc.code(), exc.details()), error=describe(exc)))
            return
        self.history.add(Op(process, WRITE, args, invoke, self.history.now(), OK))

    def _read(self, process: int, args: dict[str, str], metadata) -> None:
        invoke = self.history.now()
        try:
            reply = self.stub.Get(kv_pb2.GetRequest(key=args["key"]),
                                  timeout=self.config.timeout, metadata=metadata)
            result: str | None = reply.value.decode(errors="replace")
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                result = None  # never written (or deleted): the register's initial state
            else:
                # A read changes nothing: whatever went wrong, it certainly did not happen.
                self.history.add(Op(process, READ, args, invoke, self.history.now(), FAIL,
                                    error=describe(exc)))
                return
        self.history.add(Op(process, READ, args, invoke, self.history.now(), OK, result=result))
