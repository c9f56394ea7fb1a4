"""Failure detection in the tiers lab, measured on loopback with real node processes,
written to reports/bench/failover.json:

- head kill: kill -9 of the chain head -> the first acknowledged write invoked after the
  kill (a `DataClient` writing back to back, as the app tier does), median of RUNS, with
  the old detector (CHAIN_CHECK_DETECTOR=fixed and its old settings: a check every 0.5 s,
  3 failed in a row) and the new one (phi accrual, its defaults) in the same run, as a
  ratio; the same again, HOG_RUNS, while a CPU hog runs;
- app kill: APPS app servers behind a switch set up as compose.yaml runs it (its health
  checking and ejection settings are reported beside the figures); a reader (`Balance`,
  idempotent, so the switch retries it on another app) and a writer (`Deposit`, not
  retried) call through the switch back to back; kill -9 of one app -> the last failed
  call and how many failed, for each, median of RUNS, and of HOG_RUNS under the hog;
- calm: two data tiers side by side, one per detector, each with a writer, and the app
  tier (APPS apps and the switch, over the phi tier, with a reader) for HOG_SECONDS
  (10 minutes; `--hog-seconds` for a quick check) while a CPU hog (HOG_PROCESSES busy
  processes, the machine's 2 cores) runs beside them. Nobody is killed, so every member
  a master takes out ("failure" reconfigurations), every app the switch ejects and every
  time its health checks take a healthy app out is a false suspicion; reported per hour.

Each node is a `python -m nodes.<role>` process (bench.tiers_local.node) with a
credential of the run's own; the hog processes end by themselves at their deadline
and are killed at the end anyway. Bounded: a round of kills (a head kill per detector and
an app kill) takes about 50 s here, so about (RUNS + HOG_RUNS) x 50 s plus HOG_SECONDS and
half a minute to start the calm labs: some 17 minutes by default.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from bench import rpc_overhead
from bench.load import ratio
from bench.tiers import Prober
from bench.tiers_local import (
    Background,
    data_tier,
    healthy_backends,
    lab_credential,
    metric_total,
    scrape,
    switched_apps,
    wait_chain,
)
from nodes.common.auth import Credential
from nodes.common.channel import Channels
from nodes.common.faults import FaultRules
from nodes.common.metrics import NodeMetrics
from nodes.data.client import DataClient, DataUnavailable
from nodes.rpc import bank_pb2, bank_pb2_grpc, chain_pb2
from nodes.switch.config import SETTINGS as SWITCH_SETTINGS

OUT = Path("reports/bench/failover.json")
RUNS = 5
HOG_RUNS = 3
HOG_SECONDS = 600.0  # the 10 minutes
HOG_PROCESSES = 2
#: The old detector as it shipped: CHAIN_CHECK_FALL=3 failed checks, one every 0.5 s.
DETECTORS = {
    "fixed": {"CHAIN_CHECK_DETECTOR": "fixed", "CHAIN_CHECK_INTERVAL_SECONDS": 0.5,
              "CHAIN_CHECK_FALL": 3},
    "phi": {"CHAIN_CHECK_DETECTOR": "phi"},
}
WRITE_TIMEOUT = 1.0
AFTER_KILL_SECONDS = 6.0
#: The app tier as compose.yaml runs it: 3 apps, least outstanding, 64 switch workers, and
#: the switch's own defaults for everything else.
APPS = 3
SWITCH = {"SWITCH_POLICY": "least_outstanding", "WORKERS": 64}
#: The switch settings that decide how fast it stops sending calls to a dead app.
SWITCH_DETECTION = ("SWITCH_HEALTH_INTERVAL_SECONDS", "SWITCH_HEALTH_TIMEOUT_SECONDS",
                    "SWITCH_HEALTH_FALL", "SWITCH_HEALTH_RISE",
                    "SWITCH_EJECT_CONSECUTIVE_FAILURES", "SWITCH_EJECT_SECONDS",
                    "SWITCH_MAX_EJECTED_PERCENT", "SWITCH_MAX_ATTEMPTS")
#: The app kill touches no replica: one chain of two is enough and spares the cores.
APP_DATA_REPLICAS = 2
#: Past the end of a first ejection (SWITCH_EJECT_SECONDS, 5 s): a dead app that the health
#: checks had not taken out by then would take calls (and fail them) again.
APP_AFTER_KILL_SECONDS = 8.0
READ_TIMEOUT = 2.0
DEPOSIT_TIMEOUT = 5.0
ACCOUNT = "failover"
HEALTH_POLL_SECONDS = 0.25  # well under the shortest unhealthy spell (RISE x the interval)
HOG = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\n" \
      "while time.monotonic() < end:\n    pass\n"


@contextmanager
def cpu_hog(seconds: float, processes: int = HOG_PROCESSES) -> Iterator[None]:
    """`processes` busy loops that stop by themselves after `seconds` (killed on exit)."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG, str(seconds)]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def client_channels(credential: Credential) -> Channels:
    return Channels(node="bench-client",
                    metrics=NodeMetrics(CollectorRegistry(), node="bench-client", role="bench",
                                        version="0"),
                    rules=FaultRules(), default_timeout=WRITE_TIMEOUT,
                    max_message_bytes=4 * 1024 * 1024, credential=credential)


class Writer(Background):
    """Writes back to back in a thread; records (invoked, completed, acknowledged)."""

    name = "bench-writer"

    def __init__(self, client: DataClient, prefix: str) -> None:
        super().__init__()
        self.client = client
        self.prefix = prefix
        self.samples: list[tuple[float, float, bool]] = []
        self._written = 0

    def step(self) -> None:
        self._written += 1
        request = chain_pb2.TxnRequest(puts=[chain_pb2.KeyValue(
            key=f"{self.prefix}{self._written}", value=b"v" * 100)])
        invoked = time.monotonic()
        try:
            self.client.txn(request, timeout=WRITE_TIMEOUT)
            ok = True
        except DataUnavailable:
            ok = False
        self.samples.append((invoked, time.monotonic(), ok))


def head_kill_once(detector: str, credential_file: str, credential: Credential, *,
                   hog: bool) -> float | None:
    """Seconds from kill -9 of the head to the first acknowledged write invoked after it."""
    with data_tier(credential_file, **DETECTORS[detector]) as (pids, _, master), \
            ExitStack() as stack:
        head = wait_chain(master, 3, credential)
        if hog:
            stack.enter_context(cpu_hog(AFTER_KILL_SECONDS + 2))
        channels = client_channels(credential)
        try:
            with Writer(DataClient(master, channels, timeout=WRITE_TIMEOUT, attempts=8),
                        "w/") as writer:
                time.sleep(1.0)
                killing = time.monotonic()
                os.kill(pids[head], signal.SIGKILL)
                killed = time.monotonic()
                time.sleep(AFTER_KILL_SECONDS)
        finally:
            channels.close()
    acked = [done for invoked, done, ok in writer.samples if ok and invoked >= killed]
    return round(min(acked) - killing, 3) if acked else None


def failover(runs: int, credential_file: str, credential: Credential, *,
             hog: bool = False) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for detector in DETECTORS:
        figures[detector] = {"seconds": []}
    for _ in range(runs):  # interleaved, so both detectors meet the same machine
        for detector in DETECTORS:
            figures[detector]["seconds"].append(head_kill_once(detector, credential_file,
                                                               credential, hog=hog))
    for detector in DETECTORS:
        figures[detector]["median_s"] = median(figures[detector]["seconds"])
        figures[detector]["no_write_within_s"] = (
            AFTER_KILL_SECONDS if None in figures[detector]["seconds"] else None)
    if figures["phi"]["median_s"] and figures["fixed"]["median_s"]:
        figures["phi_vs_fixed"] = ratio(figures["phi"]["median_s"], figures["fixed"]["median_s"])
    return figures


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values measured (None: nothing within the run's window)."""
    measured = [value for value in values if value is not None]
    return round(statistics.median(measured), 3) if measured else None


# -- app kill -----------------------------------------------------------------------------------


def open_bank(stack: ExitStack, switch: str) -> bank_pb2_grpc.BankStub:
    """A bank client through the switch, with ACCOUNT open (its channel closes with `stack`)."""
    bank = bank_pb2_grpc.BankStub(stack.enter_context(grpc.insecure_channel(switch)))
    bank.OpenAccount(bank_pb2.OpenAccountRequest(account=ACCOUNT, initial_cents=10**6),
                     timeout=10)
    return bank


def reader(bank: bank_pb2_grpc.BankStub) -> Callable[[int], object]:
    return lambda _serial: bank.Balance(bank_pb2.BalanceRequest(account=ACCOUNT),
                                        timeout=READ_TIMEOUT)


def depositor(bank: bank_pb2_grpc.BankStub) -> Callable[[int], object]:
    """Deposits of 1 cent, each under a key of its own, so none is answered as a replay."""
    return lambda serial: bank.Deposit(
        bank_pb2.DepositRequest(account=ACCOUNT, amount_cents=1,
                                idempotency_key=f"failover-{serial}",
                                issued_at_unix_ms=int(time.time() * 1000)),
        timeout=DEPOSIT_TIMEOUT)


def after_kill(samples: Sequence[tuple[float, float, bool]], killed: float) -> dict[str, Any]:
    """A caller's (invoked, completed, ok) samples around a kill at `killed`: the last failed
    call completed after it (seconds from the kill, 0.0 when none failed), how many failed
    of how many, and how many failed before it (what the machine alone costs)."""
    failed = [done for _, done, ok in samples if not ok and done >= killed]
    return {"last_failure_s": round(max(failed) - killed, 3) if failed else 0.0,
            "failed_calls": len(failed),
            "calls": sum(1 for _, done, _ in samples if done >= killed),
            "failed_before_kill": sum(1 for _, done, ok in samples if not ok and done < killed)}


def app_kill_once(credential_file: str, credential: Credential, *,
                  hog: bool) -> dict[str, dict[str, Any]]:
    """kill -9 of one of APPS apps behind the switch while a reader and a writer call through
    it back to back: `after_kill` for each."""
    with ExitStack() as stack:
        _, _, master = stack.enter_context(data_tier(credential_file,
                                                     replicas=APP_DATA_REPLICAS))
        wait_chain(master, APP_DATA_REPLICAS, credential)
        tier = stack.enter_context(switched_apps(master, credential_file, APPS,
                                                 switch_env=SWITCH))
        bank = open_bank(stack, tier.switch)
        if hog:
            stack.enter_context(cpu_hog(APP_AFTER_KILL_SECONDS + 2))
        with Prober(reader(bank), interval=0) as reads, \
                Prober(depositor(bank), interval=0) as writes:
            time.sleep(1.0)
            killed = time.monotonic()
            os.kill(next(iter(tier.apps.values())), signal.SIGKILL)
            time.sleep(APP_AFTER_KILL_SECONDS)
        # Which of the switch's two ways took the dead app out: ejection for failed calls
        # (passive), the health checks (active), or both.
        ejections = metric_total(tier.switch_metrics_port, "distlab_switch_ejections_total")
        healthy = healthy_backends(tier.switch_metrics_port)
    return {"reads": after_kill(reads.samples, killed),
            "writes": after_kill(writes.samples, killed),
            "switch": {"ejections": ejections, "healthy_apps_at_end": healthy}}


def app_failover(runs: int, credential_file: str, credential: Credential, *,
                 hog: bool = False) -> dict[str, Any]:
    measured = [app_kill_once(credential_file, credential, hog=hog) for _ in range(runs)]
    figures: dict[str, Any] = {}
    for call in ("reads", "writes"):
        rows = [run[call] for run in measured]
        figures[call] = {
            "median_last_failure_s": median([row["last_failure_s"] for row in rows]),
            "median_failed_calls": median([row["failed_calls"] for row in rows]),
            "runs": rows}
    figures["switch_after_each_kill"] = [run["switch"] for run in measured]
    return figures


def switch_detection() -> dict[str, Any]:
    """The switch settings the app-kill figures depend on, as the benchmark ran them."""
    defaults = {setting.name: setting.default for setting in SWITCH_SETTINGS}
    return {"apps": APPS, **SWITCH, **{name: defaults[name] for name in SWITCH_DETECTION}}


# -- calm ---------------------------------------------------------------------------------------


class HealthPoller(Background):
    """Reads the switch's per-backend healthy gauges every HEALTH_POLL_SECONDS in a thread;
    a scrape that fails (a busy switch) is a missed poll, counted."""

    every = HEALTH_POLL_SECONDS
    name = "bench-health-poller"

    def __init__(self, metrics_port: int) -> None:
        super().__init__()
        self.metrics_port = metrics_port
        self.polls: list[dict[str, float]] = []
        self.missed = 0

    def step(self) -> None:
        try:
            samples = scrape(self.metrics_port)
        except OSError:
            self.missed += 1
            return
        self.polls.append({sample.labels["backend"]: sample.value for sample in samples
                           if sample.name == "distlab_switch_backend_healthy"})


def takeouts(polls: Sequence[dict[str, float]]) -> int:
    """How many times a backend went from healthy (1) to not (0) from one poll to the next;
    a backend missing from a poll says nothing."""
    return sum(1 for before, after in itertools.pairwise(polls)
               for backend, healthy in before.items()
               if healthy == 1 and after.get(backend) == 0)


def per_hour(count: float, seconds: float) -> float:
    return round(count * 3600 / seconds, 1)


def calm(seconds: float, credential_file: str, credential: Credential) -> dict[str, Any]:
    """False suspicions of live members and live apps while the hog runs: both detectors'
    data tiers side by side, and the app tier over the phi one (its reads load that tier
    more: harsher for phi, not kinder)."""
    with ExitStack() as stack:
        masters = {}
        for detector in DETECTORS:
            _, metrics_port, master = stack.enter_context(
                data_tier(credential_file, **DETECTORS[detector]))
            wait_chain(master, 3, credential)
            masters[detector] = (metrics_port, master)
        apps = stack.enter_context(switched_apps(masters["phi"][1], credential_file, APPS,
                                                 switch_env=SWITCH))
        bank = open_bank(stack, apps.switch)
        tiers = {}
        for detector, (metrics_port, master) in masters.items():
            channels = client_channels(credential)
            stack.callback(channels.close)
            writer = stack.enter_context(Writer(
                DataClient(master, channels, timeout=WRITE_TIMEOUT, attempts=8), "calm/"))
            tiers[detector] = (metrics_port, writer)
        reads = stack.enter_context(Prober(reader(bank), interval=0))
        poller = stack.enter_context(HealthPoller(apps.switch_metrics_port))
        load_before = os.getloadavg()[0]
        with cpu_hog(seconds):
            time.sleep(seconds)
        load_after = os.getloadavg()[0]
        counts = {detector: metric_total(port, "distlab_chain_reconfigurations_total",
                                         reason="failure")
                  for detector, (port, _) in tiers.items()}
        writes = {detector: sum(ok for _, _, ok in writer.samples)
                  for detector, (_, writer) in tiers.items()}
        ejections = metric_total(apps.switch_metrics_port, "distlab_switch_ejections_total")
        taken_out = takeouts(poller.polls)
        read_answers = [ok for _, _, ok in reads.samples]
    return {"seconds": seconds, "hog_processes": HOG_PROCESSES,
            "load_average_1m_before_and_at_end": [round(load_before, 2), round(load_after, 2)],
            **{detector: {"false_suspicions": counts[detector],
                          "per_hour": per_hour(counts[detector], seconds),
                          "acknowledged_writes": writes[detector]} for detector in DETECTORS},
            "app_tier": {"false_suspicions": ejections + taken_out,
                         "per_hour": per_hour(ejections + taken_out, seconds),
                         "ejections": ejections, "health_check_takeouts": taken_out,
                         "health_polls": len(poller.polls),
                         "missed_health_polls": poller.missed,
                         "reads": len(read_answers),
                         "failed_reads": read_answers.count(False)}}


def run(runs: int = RUNS, hog_runs: int = HOG_RUNS,
        hog_seconds: float = HOG_SECONDS) -> dict[str, Any]:
    report: dict[str, Any] = {"benchmark": "failover", "machine": rpc_overhead.machine_facts(),
                              "load_average_1m_at_start": round(os.getloadavg()[0], 2),
                              "detectors": DETECTORS, "switch": switch_detection()}
    with lab_credential() as (credential_file, credential):
        report["head_kill_to_first_acknowledged_write"] = failover(runs, credential_file,
                                                                   credential)
        report["head_kill_under_cpu_hog"] = failover(hog_runs, credential_file, credential,
                                                     hog=True)
        report["app_kill_to_last_failed_call"] = app_failover(runs, credential_file,
                                                              credential)
        report["app_kill_under_cpu_hog"] = app_failover(hog_runs, credential_file, credential,
                                                        hog=True)
        report["false_suspicions_under_cpu_hog"] = calm(hog_seconds, credential_file,
                                                        credential)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.failover",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS,
                        help="kills of each kind on a quiet machine (default %(default)s)")
    parser.add_argument("--hog-runs", type=int, default=HOG_RUNS,
                        help="kills of each kind under the CPU hog (default %(default)s)")
    parser.add_argument("--hog-seconds", type=float, default=HOG_SECONDS,
                        help="the false-suspicion window under the hog (default %(default)s: "
                             "the issue's 10 minutes; shorter for a quick check)")
    options = parser.parse_args(argv)
    report = run(options.runs, options.hog_runs, options.hog_seconds)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    for key in ("head_kill_to_first_acknowledged_write", "head_kill_under_cpu_hog"):
        figures = report[key]
        print(f"{key}: fixed median {figures['fixed']['median_s']} s "
              f"{figures['fixed']['seconds']}, phi median {figures['phi']['median_s']} s "
              f"{figures['phi']['seconds']}, phi/fixed x{figures.get('phi_vs_fixed')}")
    for key in ("app_kill_to_last_failed_call", "app_kill_under_cpu_hog"):
        for call in ("reads", "writes"):
            figures = report[key][call]
            print(f"{key} ({call}): median {figures['median_last_failure_s']} s, "
                  f"{figures['median_failed_calls']} failed calls; runs "
                  f"{[(r['last_failure_s'], r['failed_calls']) for r in figures['runs']]}")
        print(f"{key}: the switch after each kill {report[key]['switch_after_each_kill']}")
    quiet = report["false_suspicions_under_cpu_hog"]
    print(f"false suspicions in {quiet['seconds']} s under the hog: fixed "
          f"{quiet['fixed']['false_suspicions']}, phi {quiet['phi']['false_suspicions']}, "
          f"app tier {quiet['app_tier']['false_suspicions']} "
          f"({quiet['app_tier']['ejections']} ejections, "
          f"{quiet['app_tier']['health_check_takeouts']} health-check takeouts)")
    print(f"written to {OUT}")
    return report


if __name__ == "__main__":
    main()
