"""The tiers figures that need no containers, measured on loopback with real node processes:

- the four app server architectures (iterative, threaded, async, process) on an
  I/O-bound mix (`Work(io=20 ms)`) and a CPU-bound mix (`Work(cpu=5 ms)`):
  throughput, p99, CPU used (cores) and memory (RSS of the node's process tree);
- the data tier's write throughput and latency against chain length 1, 2, 3
  (`Data.Txn` puts sent to the head by the same closed-loop client).

It also holds what the other loopback benchmarks (bench.failover, bench.overload,
bench.soak) start their labs with: `node`, `data_tier`, `switched_apps`, `wait_chain`,
and `scrape` for a node's metrics.

Each node is a `python -m nodes.<role>` process of its own, as in a machine, with
a lab credential file of the run's own; the load generator runs in other
processes and presents the credential where the data tier needs it. Everything
is stopped (and the credential removed) at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bench.load import ratio, run_load
from nodes.common.auth import Credential
from nodes.rpc import bank_pb2, chain_pb2, chain_pb2_grpc

ARCHITECTURES = ("iterative", "threaded", "async", "process")
MIXES = {
    "io_bound": bank_pb2.WorkRequest(io_millis=20),
    "cpu_bound": bank_pb2.WorkRequest(cpu_millis=5),
}
SECONDS = 4.0
CLIENTS = {"processes": 2, "threads": 16}
TICKS = os.sysconf("SC_CLK_TCK")


class Background:
    """A thread that runs `step()` every `every` seconds (0: back to back) from the start of a
    `with` block to its end; the bench's writers, pollers and samplers."""

    every = 0.0
    name = "bench-background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.step()

    def step(self) -> None:
        raise NotImplementedError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def lab_credential() -> Iterator[tuple[str, Credential]]:
    """A credential file for one benchmark lab's nodes (its path and the credential)."""
    with tempfile.TemporaryDirectory(prefix="distlab-bench-credential-") as directory:
        credential = Credential.generate()
        path = os.path.join(directory, "credential")
        credential.write(path)
        yield path, credential


#: A node that exits at start is started again on fresh ports this many times in all: a
#: port free_port found can be taken (by any process's outgoing connection) before the node
#: binds it, and one such race must not end a benchmark run of many minutes.
NODE_STARTS = 3


@contextmanager
def node(role: str, **env: object):
    """A node process on loopback; yields (pid, "127.0.0.1:port") once it answers health.

    Its ports are picked here unless `env` names them; a node that exits before it serves
    (a port taken meanwhile) is started again on fresh ones, up to NODE_STARTS times."""
    for start in range(1, NODE_STARTS + 1):
        port = free_port()
        environ = {**os.environ, "GRPC_PORT": str(port), "METRICS_PORT": str(free_port()),
                   "NODE_NAME": f"{role}-bench-{port}", "LOG_LEVEL": "warning",
                   **{key: str(value) for key, value in env.items()}}
        process = subprocess.Popen([sys.executable, "-m", f"nodes.{role}"], env=environ,
                                   stdout=subprocess.DEVNULL)
        target = f"127.0.0.1:{environ['GRPC_PORT']}"
        try:
            wait_serving(target, process=process)
        except NodeExited:  # gone already: nothing to stop
            if start == NODE_STARTS:
                raise
            continue
        except BaseException:
            stop_process(process)
            raise
        break
    try:
        yield process.pid, target
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


class NodeExited(RuntimeError):
    """The node's process ended before it answered health."""


def wait_serving(target: str, timeout: float = 30.0,
                 process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            if process is not None and process.poll() is not None:
                raise NodeExited(f"node at {target} exited with {process.returncode} before "
                                 f"it served")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node at {target} did not become healthy")
            time.sleep(0.1)


@contextmanager
def data_tier(credential_file: str, replicas: int = 3, **master_env: object
              ) -> Iterator[tuple[dict[str, int], int, str]]:
    """A data-master (`master_env` on top of its defaults) and `replicas` data nodes; yields
    (replica pid by address, master metrics port, master address) once each answers health
    (`wait_chain` waits for the chain to hold them)."""
    with ExitStack() as stack:
        disk = stack.enter_context(tempfile.TemporaryDirectory(prefix="distlab-bench-"))
        metrics_port = free_port()
        _, master = stack.enter_context(node(
            "datamaster", DATA_DIR=disk, CREDENTIAL_FILE=credential_file,
            METRICS_PORT=metrics_port, **master_env))
        pids = {}
        for _ in range(replicas):
            pid, address = stack.enter_context(node(
                "data", DATA_DIR=disk, DATA_MASTER=master, DATA_ADVERTISE_ADDRESS="127.0.0.1",
                DATA_MEMBERSHIP_CHECK_SECONDS=0.5, CREDENTIAL_FILE=credential_file))
            pids[address] = pid
        yield pids, metrics_port, master


@dataclass
class SwitchedApps:
    """What `switched_apps` started."""

    switch: str
    switch_pid: int
    switch_metrics_port: int
    apps: dict[str, int]  # address -> pid; the switch names each backend by its address


@contextmanager
def switched_apps(master: str, credential_file: str, apps: int, *,
                  app_env: dict[str, object] | None = None,
                  switch_env: dict[str, object] | None = None) -> Iterator[SwitchedApps]:
    """`apps` app servers over the data tier at `master` and a switch in front of them, each
    a process; yields once the switch has found every app healthy."""
    with ExitStack() as stack:
        app_pids = {}
        for _ in range(apps):
            pid, address = stack.enter_context(node(
                "app", DATA_MASTER=master, CREDENTIAL_FILE=credential_file, **(app_env or {})))
            app_pids[address] = pid
        metrics_port = free_port()
        switch_pid, switch = stack.enter_context(node(
            "switch", SWITCH_BACKENDS=",".join(app_pids), CREDENTIAL_FILE=credential_file,
            METRICS_PORT=metrics_port, **(switch_env or {})))
        deadline = time.monotonic() + 60
        while healthy_backends(metrics_port) < apps:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the switch at {switch} did not find {apps} apps healthy")
            time.sleep(0.2)
        yield SwitchedApps(switch, switch_pid, metrics_port, app_pids)


def scrape(metrics_port: int) -> list[Sample]:
    """Every sample a node on loopback shows at /metrics now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return [sample for family in text_string_to_metric_families(text)
            for sample in family.samples]


def metric_total(metrics_port: int, name: str, **labels: str) -> float:
    """The sum of the samples called `name` (and carrying `labels`) a node shows now."""
    return sum(sample.value for sample in scrape(metrics_port)
               if sample.name == name and labels.items() <= sample.labels.items())


def healthy_backends(metrics_port: int) -> int:
    """How many backends the switch whose metrics are at `metrics_port` finds healthy now."""
    return int(metric_total(metrics_port, "distlab_switch_backend_healthy"))


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def architectures() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for architecture in ARCHITECTURES:
        row: dict[str, Any] = {}
        with lab_credential() as (credential_file, _), \
                node("app", APP_ARCHITECTURE=architecture, APP_WORKERS=16, APP_PROCESSES=2,
                     DATA_MASTER="127.0.0.1:9", CREDENTIAL_FILE=credential_file) as (pid, target):
            for mix, request in MIXES.items():
                pids = process_tree(pid)
                before = cpu_seconds(pids)
                result = run_load(target, "/distlab.bank.Bank/Work", request.SerializeToString(),
                                  seconds=SECONDS, timeout=30, **CLIENTS)
                row[mix] = {**result.summary(),
                            "cpu_cores": round((cpu_seconds(pids) - before) / SECONDS, 2),
                            "rss_mib": rss_mib(pids)}
        figures[architecture] = row
    for mix in MIXES:
        baseline = figures["threaded"][mix]["throughput_per_s"]
        for architecture in ARCHITECTURES:
            figures[architecture][mix]["throughput_vs_threaded"] = ratio(
                figures[architecture][mix]["throughput_per_s"], baseline)
    return figures


def chain_lengths() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    request = chain_pb2.TxnRequest(puts=[chain_pb2.KeyValue(key="bench", value=b"v" * 100)])
    for length in (1, 2, 3):
        with ExitStack() as stack:
            disk = stack.enter_context(tempfile.TemporaryDirectory(prefix="distlab-bench-"))
            credential_file, credential = stack.enter_context(lab_credential())
            _, master = stack.enter_context(node("datamaster", DATA_DIR=disk,
                                                 CHAIN_CHECK_INTERVAL_SECONDS=0.5,
                                                 CREDENTIAL_FILE=credential_file))
            for _ in range(length):
                stack.enter_context(node("data", DATA_DIR=disk, DATA_MASTER=master,
                                         DATA_ADVERTISE_ADDRESS="127.0.0.1",
                                         DATA_MEMBERSHIP_CHECK_SECONDS=0.5,
                                         CREDENTIAL_FILE=credential_file))
            head = wait_chain(master, length, credential)
            result = run_load(head, "/distlab.chain.Data/Txn", request.SerializeToString(),
                              seconds=SECONDS, processes=2, threads=8, timeout=10,
                              metadata=credential.metadata())
            figures[f"length_{length}"] = result.summary()
    base = figures["length_1"]["throughput_per_s"]
    for length in (1, 2, 3):
        figures[f"length_{length}"]["throughput_vs_length_1"] = ratio(
            figures[f"length_{length}"]["throughput_per_s"], base)
    return figures


def wait_chain(master: str, length: int, credential: Credential,
               timeout: float = 60.0) -> str:
    """The head's address once the master's chain has `length` members."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(master) as channel:
        stub = chain_pb2_grpc.MasterStub(channel)
        while True:
            try:
                config = stub.GetConfig(chain_pb2.GetConfigRequest(), timeout=2,
                                        metadata=credential.metadata())
                if len(config.chain) == length:
                    return config.chain[0].address
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the chain did not reach length {length}")
            time.sleep(0.2)


def run() -> dict[str, Any]:
    return {"architectures": architectures(), "chain_length": chain_lengths()}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
