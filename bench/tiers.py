"""The tiers lab's figures, measured in one run, written to reports/bench/tiers.json:

- the switch's cost: the same closed-loop client straight to one app server vs
  through the switch (throughput and p50/p99 as ratios), on `Work(0, 0)` (the
  forwarding cost alone) and on `Balance` (a read that goes on to the chain tail);
- a peer side by side: HAProxy (Debian's package, h2c to the backends) in front
  of the same app tier, same client, same run: switch/HAProxy ratios;
- the bank workload through the switch (8 clients, 10 s): operations/s and its verdict;
- failover: kill -9 of an app server → the last client error; kill -9 of the
  chain head → the first acknowledged write invoked after it;
- local, without containers (bench.tiers_local): the four app server
  architectures on an I/O-bound and a CPU-bound mix, and chain write
  throughput/latency against chain length 1, 2, 3.

Bounded: a few seconds per measurement; it cleans up after itself.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bench import rpc_overhead
from bench.load import LoadResult, ratio, run_load
from distlab.testbed import Testbed
from distlab.tiers.bank import BankConfig, BankWorkload
from nodes.rpc import bank_pb2, bank_pb2_grpc

OUT = Path("reports/bench/tiers.json")
SECONDS = 5.0
ROUNDS = 2
WORK = ("/distlab.bank.Bank/Work", bank_pb2.WorkRequest().SerializeToString())
BALANCE = ("/distlab.bank.Bank/Balance",
           bank_pb2.BalanceRequest(account="bench-a").SerializeToString())


def endpoint(testbed: Testbed, name: str) -> str:
    machine = testbed.machine(name).refresh()
    if machine.info.grpc_endpoint is None:
        raise RuntimeError(f"{name} publishes no gRPC port")
    return machine.info.grpc_endpoint


def compare_entry_points(testbed: Testbed) -> dict[str, Any]:
    """Direct to app-1 vs switch vs HAProxy, interleaved rounds, same client."""
    targets = {"direct_app": endpoint(testbed, "app-1"), "switch": endpoint(testbed, "switch-1"),
               "haproxy": endpoint(testbed, "haproxy-1")}
    figures: dict[str, Any] = {}
    for call_name, (method, request) in {"work": WORK, "balance": BALANCE}.items():
        runs: dict[str, list[LoadResult]] = {name: [] for name in targets}
        for _ in range(ROUNDS):
            for name, target in targets.items():
                runs[name].append(run_load(target, method, request, seconds=SECONDS,
                                           processes=2, threads=8))
        best = {name: max(results, key=lambda r: r.throughput) for name, results in runs.items()}
        summary = {name: result.summary() for name, result in best.items()}
        summary["ratios"] = {
            "switch_vs_direct_throughput": ratio(best["switch"].throughput,
                                                 best["direct_app"].throughput),
            "switch_vs_direct_p50": ratio(best["switch"].percentile(0.5),
                                          best["direct_app"].percentile(0.5)),
            "switch_vs_direct_p99": ratio(best["switch"].percentile(0.99),
                                          best["direct_app"].percentile(0.99)),
            "switch_vs_haproxy_throughput": ratio(best["switch"].throughput,
                                                  best["haproxy"].throughput),
            "switch_vs_haproxy_p99": ratio(best["switch"].percentile(0.99),
                                           best["haproxy"].percentile(0.99)),
        }
        figures[call_name] = summary
    return figures


class Prober:
    """Sends one call every `interval` from a thread and records (invoked, completed, ok)."""

    def __init__(self, call, interval: float = 0.01) -> None:
        self.call = call
        self.interval = interval
        self.samples: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        serial = 0
        while not self._stop.is_set():
            serial += 1
            invoked = time.monotonic()
            try:
                self.call(serial)
                ok = True
            except grpc.RpcError:
                ok = False
            self.samples.append((invoked, time.monotonic(), ok))
            self._stop.wait(self.interval)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def failover(testbed: Testbed) -> dict[str, Any]:
    stub = bank_pb2_grpc.BankStub(testbed.client("switch"))
    run_id = int(time.time())

    phase = iter(range(1_000_000))

    def depositor():
        """A fresh key space per phase: a reused key would be answered as a replay (a read),
        not written through the chain."""
        prefix = f"fo-{run_id}-{next(phase)}"

        def deposit(serial: int) -> None:
            stub.Deposit(bank_pb2.DepositRequest(account="bench-a", amount_cents=1,
                                                 idempotency_key=f"{prefix}-{serial}",
                                                 issued_at_unix_ms=int(time.time() * 1000)),
                         timeout=5)

        return deposit

    def balance(_serial: int) -> None:
        stub.Balance(bank_pb2.BalanceRequest(account="bench-a"), timeout=2)

    figures: dict[str, Any] = {}
    with Prober(depositor()) as writes, Prober(balance) as reads:
        time.sleep(2)
        killed = time.monotonic()
        testbed.nemesis.kill("app-2")
        time.sleep(6)
    for name, prober in (("writes", writes), ("reads", reads)):
        errors = [done for invoked, done, ok in prober.samples if not ok and done >= killed]
        figures[f"app_kill_to_last_{name[:-1]}_error_s"] = (
            round(max(errors) - killed, 3) if errors else 0.0)
        figures[f"app_kill_failed_{name}"] = len(errors)
    testbed.nemesis.heal()
    testbed.wait_healthy(testbed.catalogue.lab("tiers"), timeout=120)

    head = next(name for name, state in chain_positions(testbed).items() if state == "head")
    with Prober(depositor()) as writes:
        time.sleep(2)
        killing = time.monotonic()
        testbed.nemesis.kill(head)
        killed = time.monotonic()  # the kill returned: writes invoked from now on meet no head
        time.sleep(8)
    acked = [done for invoked, done, ok in writes.samples if ok and invoked >= killed]
    figures["head_kill_to_first_acknowledged_write_s"] = (
        round(min(acked) - killing, 3) if acked else None)
    figures["head_killed"] = head
    testbed.nemesis.heal()
    return figures


def chain_positions(testbed: Testbed) -> dict[str, str]:
    positions = {}
    for machine in testbed.machines():
        if machine.info.role != "data" or machine.info.state != "running":
            continue
        with machine.control() as control:
            state = control.status().state
        positions[machine.name] = state.get("position", "")
    return positions


def open_bench_account(testbed: Testbed) -> None:
    stub = bank_pb2_grpc.BankStub(testbed.client("switch"))
    deadline = time.monotonic() + 60
    while True:
        try:
            stub.OpenAccount(bank_pb2.OpenAccountRequest(account="bench-a",
                                                         initial_cents=10**6), timeout=3)
            return
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def bank(testbed: Testbed) -> dict[str, Any]:
    """The bank workload through the switch for a bounded run: rate and its verdict."""
    workload = BankWorkload(testbed.client("switch"), BankConfig(seconds=10, max_ops=50_000,
                                                                 processes=8, seed=7))
    workload.setup()
    workload.run()
    verdict = workload.check()
    ops = sum(sum(row.values()) for row in workload.history.counts().values())
    return {"verdict": verdict.outcome, "operations_per_s": round(ops / 10, 1),
            "clients": 8, **verdict.figures}


def run() -> dict[str, Any]:
    from bench import tiers_local

    testbed = Testbed()
    report: dict[str, Any] = {"benchmark": "tiers", "machine": rpc_overhead.machine_facts()}
    try:
        testbed.clean()
        testbed.up("tiers", timeout=240)
        testbed.runtime.up(["tiers", "haproxy"], {})
        time.sleep(3)  # HAProxy resolves the app replicas through Docker's DNS
        open_bench_account(testbed)
        report["entry_points"] = compare_entry_points(testbed)
        report["bank_workload"] = bank(testbed)
        report["failover"] = failover(testbed)
    finally:
        testbed.clean()
    report.update(tiers_local.run())
    return report


def main() -> None:
    report = run()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    for call in ("work", "balance"):
        r = report["entry_points"][call]["ratios"]
        print(f"{call}: switch/direct throughput x{r['switch_vs_direct_throughput']}, "
              f"p99 x{r['switch_vs_direct_p99']}; switch/HAProxy throughput "
              f"x{r['switch_vs_haproxy_throughput']}, p99 x{r['switch_vs_haproxy_p99']}")
    print(f"bank workload: {report['bank_workload']['operations_per_s']} ops/s, "
          f"{report['bank_workload']['verdict']}")
    print(f"failover: {report['failover']}")
    print(f"architectures: {report['architectures']}")
    print(f"chain length: {report['chain_length']}")
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
