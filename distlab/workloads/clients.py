"""What every workload shares: client processes (threads) bounded by count, time and a stop.

A workload subclasses `ClientWorkload` and says what one client process does
(`_process`). This module starts the processes, numbers them (from
`first_process`, so several workloads can share one History), hands out
operation slots up to `max_ops`, and joins them within a bound, so a run
never outlives `seconds` by more than one operation's timeout and one pacing
period.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import grpc

from distlab.history import History

JOIN_MARGIN_SECONDS = 5.0
# A write that failed with one of these certainly did not happen. ABORTED too: the lab's
# services answer it only when nothing was applied (the bank, when its optimistic retries
# ran out and none of its Txns can have been applied).
DEFINITE_CODES = frozenset({
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
})
SESSION_KEY = "x-session-id"  # metadata naming a client process (the switch hashes it)


@dataclass
class ClientConfig:
    processes: int = 4
    max_ops: int = 2000
    seconds: float = 20.0
    timeout: float = 2.0       # deadline of each operation
    seed: int = 0
    rate: float = 0.0          # operations per second over all processes; 0: closed loop


class ClientWorkload:
    name = "workload"

    def __init__(self, config: ClientConfig, *, history: History | None = None,
                 run_id: str | None = None, first_process: int = 0) -> None:
        self.config = config
        self.first_process = first_process
        self.history = history if history is not None else History()  # an empty one is falsy
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self._issued = 0
        self._issued_lock = threading.Lock()

    def run(self, stop: threading.Event | None = None) -> History:
        """Run every client process until max_ops, `seconds`, or `stop`; return the history."""
        stop = stop or threading.Event()
        ends = time.monotonic() + self.config.seconds
        numbers = range(self.first_process, self.first_process + self.config.processes)
        threads = [threading.Thread(target=self._process, args=(process, stop, ends),
                                    name=f"{self.name}-{process}", daemon=True)
                   for process in numbers]
        for thread in threads:
            thread.start()
        # An operation started just before `ends` may take one timeout, and a pacer's wait
        # is cut short by `stop` but not by `ends`: allow one more period too.
        period = self.config.processes / self.config.rate if self.config.rate else 0.0
        joined_by = ends + self.config.timeout + period + JOIN_MARGIN_SECONDS
        for thread in threads:
            thread.join(max(0.0, joined_by - time.monotonic()))
        return self.history

    def _process(self, process: int, stop: threading.Event, ends: float) -> None:
        raise NotImplementedError

    def _take_slot(self) -> bool:
        with self._issued_lock:
            if self._issued >= self.config.max_ops:
                return False
            self._issued += 1
            return True


def describe(exc: grpc.RpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"
