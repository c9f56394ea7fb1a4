"""The tiers figures that need no containers, measured on loopback with real node processes:

- the four app server architectures (iterative, threaded, async, process) on an
  I/O-bound mix (`Work(io=20 ms)`) and a CPU-bound mix (`Work(cpu=5 ms)`):
  throughput, p99, CPU used (cores) and memory (RSS of the node's process tree);
- the data tier's write throughput and latency against chain length 1, 2, 3
  (`Data.Txn` puts sent to the head by the same closed-loop client).

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
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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


@contextmanager
def node(role: str, **env: object):
    """A node process on loopback; yields (pid, "127.0.0.1:port") once it answers health."""
    port = free_port()
    environ = {**os.environ, "GRPC_PORT": str(port), "METRICS_PORT": str(free_port()),
               "NODE_NAME": f"{role}-bench-{port}", "LOG_LEVEL": "warning",
               **{key: str(value) for key, value in env.items()}}
    process = subprocess.Popen([sys.executable, "-m", f"nodes.{role}"], env=environ,
                               stdout=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target)
        yield process.pid, target
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_serving(target: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node at {target} did not become healthy")
            time.sleep(0.1)


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
