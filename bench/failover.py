"""The data tier's failure detection, measured on loopback with real node processes, written
to reports/bench/failover.json:

- failover: kill -9 of the chain head -> the first acknowledged write invoked after the
  kill (a `DataClient` writing back to back, as the app tier does), median of RUNS, with
  the old detector (CHAIN_CHECK_DETECTOR=fixed and its old settings: a check every 0.5 s,
  3 failed in a row) and the new one (phi accrual, its defaults) in the same run, as a
  ratio; the same again, fewer runs, while a CPU hog runs;
- calm: two tiers side by side, one per detector, each with a writer, for HOG_SECONDS
  while a CPU hog (HOG_PROCESSES busy processes, the machine's 2 cores) runs beside
  them; nobody is killed, so every member the master takes out ("failure"
  reconfigurations) is a false suspicion.

Each node is a `python -m nodes.<role>` process (bench.tiers_local.node) with a
credential of the run's own; the hog processes end by themselves at their deadline
and are killed at the end anyway. Bounded: about (RUNS + HOG_RUNS) x 2 x 10 s plus
HOG_SECONDS.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bench import rpc_overhead
from bench.load import ratio
from bench.tiers_local import free_port, lab_credential, node, wait_chain
from nodes.common.auth import Credential
from nodes.common.channel import Channels
from nodes.common.faults import FaultRules
from nodes.common.metrics import NodeMetrics
from nodes.data.client import DataClient, DataUnavailable
from nodes.rpc import chain_pb2

OUT = Path("reports/bench/failover.json")
RUNS = 5
HOG_RUNS = 3
HOG_SECONDS = 180.0
HOG_PROCESSES = 2
#: The old detector as it shipped: CHAIN_CHECK_FALL=3 failed checks, one every 0.5 s.
DETECTORS = {
    "fixed": {"CHAIN_CHECK_DETECTOR": "fixed", "CHAIN_CHECK_INTERVAL_SECONDS": 0.5,
              "CHAIN_CHECK_FALL": 3},
    "phi": {"CHAIN_CHECK_DETECTOR": "phi"},
}
WRITE_TIMEOUT = 1.0
AFTER_KILL_SECONDS = 6.0
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


@contextmanager
def data_tier(credential_file: str, detector: str, replicas: int = 3
              ) -> Iterator[tuple[dict[str, int], int, str]]:
    """A master and `replicas` data nodes; yields (replica pid by address, master metrics
    port, master address) once the chain has them all."""
    with ExitStack() as stack:
        disk = stack.enter_context(tempfile.TemporaryDirectory(prefix="distlab-bench-"))
        metrics_port = free_port()
        _, master = stack.enter_context(node(
            "datamaster", DATA_DIR=disk, CREDENTIAL_FILE=credential_file,
            METRICS_PORT=metrics_port, **DETECTORS[detector]))
        pids = {}
        for _ in range(replicas):
            pid, address = stack.enter_context(node(
                "data", DATA_DIR=disk, DATA_MASTER=master, DATA_ADVERTISE_ADDRESS="127.0.0.1",
                DATA_MEMBERSHIP_CHECK_SECONDS=0.5, CREDENTIAL_FILE=credential_file))
            pids[address] = pid
        yield pids, metrics_port, master


def client_channels(credential: Credential) -> Channels:
    return Channels(node="bench-client",
                    metrics=NodeMetrics(CollectorRegistry(), node="bench-client", role="bench",
                                        version="0"),
                    rules=FaultRules(), default_timeout=WRITE_TIMEOUT,
                    max_message_bytes=4 * 1024 * 1024, credential=credential)


class Writer:
    """Writes back to back in a thread; records (invoked, completed, acknowledged)."""

    def __init__(self, client: DataClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.samples: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-writer", daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            request = chain_pb2.TxnRequest(puts=[chain_pb2.KeyValue(key=f"{self.prefix}{n}",
                                                                    value=b"v" * 100)])
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
    with data_tier(credential_file, detector) as (pids, _, master), ExitStack() as stack:
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
        measured = [s for s in figures[detector]["seconds"] if s is not None]
        figures[detector]["median_s"] = (round(statistics.median(measured), 3) if measured
                                         else None)
        figures[detector]["no_write_within_s"] = (
            AFTER_KILL_SECONDS if len(measured) < runs else None)
    if figures["phi"]["median_s"] and figures["fixed"]["median_s"]:
        figures["phi_vs_fixed"] = ratio(figures["phi"]["median_s"], figures["fixed"]["median_s"])
    return figures


def failure_reconfigurations(metrics_port: int) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "distlab_chain_reconfigurations_total"
                    and sample.labels.get("reason") == "failure"):
                return sample.value
    return 0.0


def calm(seconds: float, credential_file: str, credential: Credential) -> dict[str, Any]:
    """False suspicions of live members while the hog runs, both detectors side by side."""
    with ExitStack() as stack:
        masters = {}
        for detector in DETECTORS:
            _, metrics_port, master = stack.enter_context(data_tier(credential_file, detector))
            wait_chain(master, 3, credential)
            masters[detector] = (metrics_port, master)
        tiers = {}
        for detector, (metrics_port, master) in masters.items():
            channels = client_channels(credential)
            stack.callback(channels.close)
            writer = stack.enter_context(Writer(
                DataClient(master, channels, timeout=WRITE_TIMEOUT, attempts=8), "calm/"))
            tiers[detector] = (metrics_port, writer)
        load_before = os.getloadavg()[0]
        with cpu_hog(seconds):
            time.sleep(seconds)
        load_after = os.getloadavg()[0]
        counts = {detector: failure_reconfigurations(port) for detector, (port, _) in
                  tiers.items()}
        writes = {detector: sum(ok for _, _, ok in writer.samples)
                  for detector, (_, writer) in tiers.items()}
    return {"seconds": seconds, "hog_processes": HOG_PROCESSES,
            "load_average_1m_before_and_at_end": [round(load_before, 2), round(load_after, 2)],
            **{detector: {"false_suspicions": counts[detector],
                          "per_hour": round(counts[detector] * 3600 / seconds, 1),
                          "acknowledged_writes": writes[detector]} for detector in DETECTORS}}


def run(runs: int = RUNS, hog_runs: int = HOG_RUNS,
        hog_seconds: float = HOG_SECONDS) -> dict[str, Any]:
    report: dict[str, Any] = {"benchmark": "failover", "machine": rpc_overhead.machine_facts(),
                              "load_average_1m_at_start": round(os.getloadavg()[0], 2),
                              "detectors": DETECTORS}
    with lab_credential() as (credential_file, credential):
        report["head_kill_to_first_acknowledged_write"] = failover(runs, credential_file,
                                                                   credential)
        report["head_kill_under_cpu_hog"] = failover(hog_runs, credential_file, credential,
                                                     hog=True)
        report["false_suspicions_under_cpu_hog"] = calm(hog_seconds, credential_file,
                                                        credential)
    return report


def main() -> None:
    report = run()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    for key in ("head_kill_to_first_acknowledged_write", "head_kill_under_cpu_hog"):
        figures = report[key]
        print(f"{key}: fixed median {figures['fixed']['median_s']} s "
              f"{figures['fixed']['seconds']}, phi median {figures['phi']['median_s']} s "
              f"{figures['phi']['seconds']}, phi/fixed x{figures.get('phi_vs_fixed')}")
    quiet = report["false_suspicions_under_cpu_hog"]
    print(f"false suspicions in {quiet['seconds']} s under the hog: fixed "
          f"{quiet['fixed']['false_suspicions']}, phi {quiet['phi']['false_suspicions']}")
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
