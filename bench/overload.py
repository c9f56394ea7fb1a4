"""Overload through the switch, measured on loopback with real node processes, written to
reports/bench/overload.json.

A bank tier of processes (bench.tiers_local.node): a data-master and DATA_REPLICAS data
replicas, APPS threaded app servers of APP_WORKERS workers each, and a switch in front.
First the capacity: `Work(io=WORK_MILLIS)` calls sent closed-loop by exactly as many
callers as the apps have workers, for CAPACITY_SECONDS. Then, for each LEVELS multiple of
that capacity, the same calls offered open-loop (started on a fixed schedule whatever
comes back, as real users do) for LEVEL_SECONDS, while a cheap call (`Balance` of one
account) is made CHEAP_PER_SECOND times a second beside them. Per level: goodput (Work
calls answered OK per second) over capacity, how the rest were answered (a fast
RESOURCE_EXHAUSTED is the intended refusal), and the share of cheap calls that succeeded.
Overload that degrades keeps goodput near capacity and cheap calls succeeding; one that
collapses (health checks queued behind work, every backend marked down) loses both.

Bounded: about CAPACITY_SECONDS + len(LEVELS) x (LEVEL_SECONDS + CALL_TIMEOUT) plus the
start of the processes, under 2 minutes. Every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.load import ratio
from bench.tiers_local import data_tier, lab_credential, switched_apps, wait_chain
from nodes.common.auth import Credential
from nodes.rpc import bank_pb2, bank_pb2_grpc

OUT = Path("reports/bench/overload.json")
DATA_REPLICAS = 2
APPS = 2
APP_WORKERS = 4
WORK_MILLIS = 200
LEVELS = (0.5, 1.0, 2.0, 4.0)
CAPACITY_SECONDS = 6.0
LEVEL_SECONDS = 12.0
CHEAP_PER_SECOND = 10.0
CALL_TIMEOUT = 3.0
# As compose.yaml runs it: the switch holds a thread per call in flight, refusals included.
SWITCH_WORKERS = 64
ACCOUNT = "overload-probe"


@dataclass
class BankTier:
    """Addresses and process ids of a bank tier started by `bank_tier`."""

    switch: str
    switch_pid: int
    apps: dict[str, int]          # address -> pid
    replicas: dict[str, int]      # address -> pid
    master: str
    credential: Credential


@contextmanager
def bank_tier(*, replicas: int = DATA_REPLICAS, apps: int = APPS, app_workers: int = APP_WORKERS,
              **app_env: object) -> Iterator[BankTier]:
    """A data tier, `apps` threaded app servers on it and a switch in front, each a process
    on loopback; yields once the switch sees every app healthy."""
    with ExitStack() as stack:
        credential_file, credential = stack.enter_context(lab_credential())
        replica_pids, _, master = stack.enter_context(
            data_tier(credential_file, replicas=replicas, CHAIN_CHECK_DETECTOR="phi"))
        wait_chain(master, replicas, credential)
        tier = stack.enter_context(switched_apps(
            master, credential_file, apps, app_env={"APP_WORKERS": app_workers, **app_env},
            switch_env={"SWITCH_HEALTH_INTERVAL_SECONDS": 0.5, "WORKERS": SWITCH_WORKERS}))
        yield BankTier(tier.switch, tier.switch_pid, tier.apps, replica_pids, master, credential)


class OpenLoop:
    """Starts `call()` (returning a grpc future) `per_second` times a second on a fixed
    schedule for `seconds`, whatever comes back, and counts how each call ended."""

    def __init__(self, call: Callable[[], grpc.Future], per_second: float,
                 seconds: float) -> None:
        self.call = call
        self.per_second = per_second
        self.seconds = seconds
        self.codes: Counter[str] = Counter()
        self.details: dict[str, str] = {}  # the first details seen for each failing code
        self.refusal_millis: list[float] = []
        self._lock = threading.Lock()
        self._pending: list[futures.Future] = []
        self._thread = threading.Thread(target=self._run, name="open-loop", daemon=True)

    def start(self) -> OpenLoop:
        self._thread.start()
        return self

    def join(self) -> Counter[str]:
        self._thread.join()
        for future in self._pending:
            try:
                future.result()
            except grpc.RpcError:
                pass  # counted by its callback
        return self.codes

    def _run(self) -> None:
        started = time.monotonic()
        for n in range(int(self.per_second * self.seconds)):
            wait = started + n / self.per_second - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sent = time.monotonic()
            future = self.call()
            future.add_done_callback(lambda done, sent=sent: self._done(done, sent))
            self._pending.append(future)

    def _done(self, future: grpc.Future, sent: float) -> None:
        code = future.code()
        with self._lock:
            self.codes[code.name] += 1
            if code != grpc.StatusCode.OK:
                self.details.setdefault(code.name, future.details())
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.refusal_millis.append((time.monotonic() - sent) * 1000)


def capacity(bank: bank_pb2_grpc.BankStub, callers: int, seconds: float) -> float:
    """Work calls per second answered OK with exactly `callers` back to back."""
    answered = []  # list.append is atomic: no lock needed among the callers
    ends = time.monotonic() + seconds

    def caller() -> None:
        while time.monotonic() < ends:
            try:
                bank.Work(bank_pb2.WorkRequest(io_millis=WORK_MILLIS), timeout=CALL_TIMEOUT)
                answered.append(1)
            except grpc.RpcError:
                pass

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(answered) / seconds


def level(bank: bank_pb2_grpc.BankStub, offered: float, seconds: float) -> dict[str, Any]:
    work = OpenLoop(lambda: bank.Work.future(bank_pb2.WorkRequest(io_millis=WORK_MILLIS),
                                             timeout=CALL_TIMEOUT), offered, seconds).start()
    cheap = OpenLoop(lambda: bank.Balance.future(bank_pb2.BalanceRequest(account=ACCOUNT),
                                                 timeout=CALL_TIMEOUT),
                     CHEAP_PER_SECOND, seconds).start()
    work_codes, cheap_codes = work.join(), cheap.join()
    refusals = sorted(work.refusal_millis)
    return {"offered_per_s": round(offered, 1),
            "goodput_per_s": round(work_codes["OK"] / seconds, 1),
            "work_answers": dict(work_codes), "cheap_answers": dict(cheap_codes),
            "cheap_success": ratio(cheap_codes["OK"], sum(cheap_codes.values())),
            "cheap_refusals": cheap.details,
            "refusal_p50_ms": round(refusals[len(refusals) // 2], 1) if refusals else None}


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average says what else was running."""
    return {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 1)}


def run(*, levels: tuple[float, ...] = LEVELS, level_seconds: float = LEVEL_SECONDS) -> dict:
    started = time.monotonic()
    with bank_tier() as tier, grpc.insecure_channel(tier.switch) as channel:
        bank = bank_pb2_grpc.BankStub(channel)
        bank.OpenAccount(bank_pb2.OpenAccountRequest(account=ACCOUNT, initial_cents=100),
                         timeout=10)
        measured = capacity(bank, APPS * APP_WORKERS, CAPACITY_SECONDS)
        rows = {}
        for multiple in levels:
            row = level(bank, multiple * measured, level_seconds)
            row["goodput_vs_capacity"] = ratio(row["goodput_per_s"], measured)
            rows[f"x{multiple:g}"] = row
    return {"machine": machine(),
            "setup": {"apps": APPS, "app_workers": APP_WORKERS, "work_io_ms": WORK_MILLIS,
                      "data_replicas": DATA_REPLICAS, "level_seconds": level_seconds,
                      "cheap_per_s": CHEAP_PER_SECOND, "call_timeout_s": CALL_TIMEOUT},
            "capacity_per_s": round(measured, 1), "levels": rows,
            "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--level-seconds", type=float, default=LEVEL_SECONDS)
    options = parser.parse_args(argv)
    report = run(level_seconds=options.level_seconds)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
