"""What the node contract costs per RPC, against a bare grpcio server, measured side by side.

Three variants serve the same `KVNode` servicer and answer the same request, a
`KV.Get` on a key that exists (a read: no fsync in the path, so the disk is not
what is measured):

- A `bare`:   `grpc.server(ThreadPoolExecutor(16))` with the KV servicer and no
              interceptors; the client is a plain `grpc.insecure_channel`.
- B `node`:   the full node, `NodeServer(nodes.kv.__main__.SPEC, environ)`: every
              call passes the server interceptor (metrics, fault-rule lookup); the
              server also runs health, reflection, Control and /metrics. Plain client.
- C `node+dial`: the same node as B, called through `nodes.common.channel.dial`
              (client interceptor: metrics, outbound fault rules, caller metadata).

Each server runs in its own process (spawned), as a node does in a lab, so the
benchmark client never shares a GIL with the server it measures. Every call
carries the same 2 s deadline in all three variants, so a deadline is not
counted as overhead.

After a warm-up, rounds A, B, C are repeated (interleaved, to spread drift over
all variants); in each: a latency phase (one thread, sequential calls, at most
`LATENCY_CALLS` calls or `seconds`) and a throughput phase (`CLIENT_THREADS`
threads for `seconds`, completed calls counted). Each figure is the median over
the rounds.

Reading the ratios (both are "vs A"):
- `p50_ratio` = p50 latency of B (or C) / p50 of A. 1.00 means no measurable
  cost; 1.10 means the contract adds 10 % to a loopback call
  (`p50_overhead_us` gives the same in microseconds).
- `throughput_ratio` = calls/s of B (or C) / calls/s of A. Below 1.00 is the
  share of capacity the contract costs; 0.90 means 10 % fewer calls per second.
B against A is the server-side cost; C against B is what the client side adds.

Usage: python -m bench.rpc_overhead [--seconds S] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

DEFAULT_OUT = Path("reports/bench/rpc_overhead.json")
DEFAULT_SECONDS = 3.0
WARMUP_SECONDS = 1.0
ROUNDS = 3
LATENCY_CALLS = 2000
CLIENT_THREADS = 4
SERVER_WORKERS = 16
CALL_TIMEOUT = 2.0
KEY = "bench-key"
VALUE = b"v" * 100
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
VARIANTS = ("A", "B", "C")
LABELS = {"A": "bare grpcio", "B": "node contract", "C": "node + dial client"}


# --- servers (child processes) -------------------------------------------------------------


def _node_environ(data_dir: str) -> dict[str, str]:
    return {"GRPC_PORT": "0", "METRICS_PORT": "0", "DATA_DIR": data_dir,
            "NODE_NAME": "bench", "LOG_LEVEL": "warning",
            "CREDENTIAL_FILE": os.path.join(data_dir, "credential")}


def _bare_server(data_dir: str) -> tuple[grpc.Server, int, Callable[[], None]]:
    """A: the KV servicer on a plain grpcio server, context built by hand, no interceptors."""
    from nodes.common.channel import Channels
    from nodes.common.config import COMMON_SETTINGS, load_settings
    from nodes.common.faults import FaultRules
    from nodes.common.logs import EventLog
    from nodes.common.metrics import NodeMetrics
    from nodes.common.role import NodeContext
    from nodes.kv.__main__ import SPEC
    from nodes.kv.service import KVNode
    from nodes.rpc import kv_pb2_grpc

    config = load_settings(COMMON_SETTINGS + SPEC.settings, _node_environ(data_dir))
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry, node="bench", role="kv", version="bench")
    rules = FaultRules()
    context = NodeContext(
        name="bench", role="kv", config=config, registry=registry, metrics=metrics,
        log=EventLog("bench", "kv", level="warning", stream=io.StringIO()), rules=rules,
        channels=Channels(node="bench", metrics=metrics, rules=rules,
                          default_timeout=config["RPC_TIMEOUT_SECONDS"],
                          max_message_bytes=config["MAX_MESSAGE_BYTES"]))
    servicer = KVNode(context)
    server = grpc.server(futures.ThreadPoolExecutor(SERVER_WORKERS))
    kv_pb2_grpc.add_KVServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def stop() -> None:
        server.stop(1).wait()
        servicer.close()
        context.channels.close()

    return server, port, stop


def _node_server(data_dir: str) -> tuple[Any, int, Callable[[], None]]:
    """B/C: the full node contract around the same servicer, with a lab credential."""
    from nodes.common.auth import Credential
    from nodes.common.server import NodeServer
    from nodes.kv.__main__ import SPEC

    os.makedirs(data_dir, exist_ok=True)
    Credential.generate().write(os.path.join(data_dir, "credential"))
    node = NodeServer(SPEC, _node_environ(data_dir))
    node.start()
    return node, node.grpc_port, lambda: node.stop(1)


SERVER_KINDS: dict[str, Callable[[str], tuple[Any, int, Callable[[], None]]]] = {
    "bare": _bare_server,
    "node": _node_server,
}


def serve(kind: str, data_dir: str, conn: Connection, stop: Any, lifetime: float) -> None:
    """Child process body: start a server, report its port, serve until told (or `lifetime`)."""
    try:
        _, port, shutdown = SERVER_KINDS[kind](data_dir)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails loudly
        conn.send(("error", repr(exc)))
        return
    conn.send(("port", port))
    try:
        stop.wait(lifetime)
    finally:
        shutdown()


@contextmanager
def server_process(kind: str, data_dir: str, lifetime: float) -> Iterator[int]:
    """Run one server in a spawned process; yield its port; always stop it."""
    mp = multiprocessing.get_context("spawn")
    parent_end, child_end = mp.Pipe(duplex=False)
    stop = mp.Event()
    process = mp.Process(target=serve, args=(kind, data_dir, child_end, stop, lifetime),
                         name=f"bench-{kind}", daemon=True)
    process.start()
    try:
        if not parent_end.poll(START_TIMEOUT):
            raise RuntimeError(f"{kind} server did not start within {START_TIMEOUT:.0f} s")
        what, value = parent_end.recv()
        if what != "port":
            raise RuntimeError(f"{kind} server failed to start: {value}")
        yield value
    finally:
        stop.set()
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            process.terminate()
            process.join(STOP_TIMEOUT)


# --- clients -------------------------------------------------------------------------------


def bare_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target)


def contract_channel(target: str) -> grpc.Channel:
    """The channel a node would use: `dial` with its own (client-side) metrics and rules."""
    from nodes.common.channel import dial
    from nodes.common.faults import FaultRules
    from nodes.common.metrics import NodeMetrics

    metrics = NodeMetrics(CollectorRegistry(), node="bench-client", role="bench",
                          version="bench")
    return dial(target, peer="bench", node="bench-client", metrics=metrics, rules=FaultRules(),
                default_timeout=CALL_TIMEOUT)


@dataclass(frozen=True)
class Target:
    """One variant as the client sees it: how to make one Get call."""

    name: str
    call: Callable[[], Any]


def make_target(name: str, channel: grpc.Channel) -> Target:
    from nodes.rpc import kv_pb2, kv_pb2_grpc

    stub = kv_pb2_grpc.KVStub(channel)
    request = kv_pb2.GetRequest(key=KEY)
    grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
    stub.Put(kv_pb2.PutRequest(key=KEY, value=VALUE), timeout=CALL_TIMEOUT)
    return Target(name, lambda: stub.Get(request, timeout=CALL_TIMEOUT))


# --- measurement ---------------------------------------------------------------------------


def warm_up(target: Target, seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    calls = 0
    while time.perf_counter() < deadline:
        target.call()
        calls += 1
    return calls


def measure_latency(target: Target, seconds: float, max_calls: int) -> list[float]:
    """Sequential calls from one thread; each call's latency in seconds."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < max_calls and time.perf_counter() < deadline:
        started = time.perf_counter()
        target.call()
        latencies.append(time.perf_counter() - started)
    return latencies


def _count_calls(target: Target, deadline: float, counts: list[int], errors: list[int],
                 slot: int) -> None:
    while time.perf_counter() < deadline:
        try:
            target.call()
        except grpc.RpcError:
            errors[slot] += 1
        else:
            counts[slot] += 1


def measure_throughput(target: Target, seconds: float, threads: int) -> dict[str, float]:
    """`threads` closed-loop clients for `seconds`; completed calls per second."""
    counts, errors = [0] * threads, [0] * threads
    started = time.perf_counter()
    deadline = started + seconds
    workers = [threading.Thread(target=_count_calls, args=(target, deadline, counts, errors, i),
                                name=f"bench-client-{i}", daemon=True)
               for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + CALL_TIMEOUT + 1)
    elapsed = time.perf_counter() - started
    return {"calls_per_second": sum(counts) / elapsed, "calls": sum(counts),
            "errors": sum(errors)}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_round(target: Target, seconds: float) -> dict[str, float]:
    latencies = measure_latency(target, seconds, LATENCY_CALLS)
    throughput = measure_throughput(target, seconds, CLIENT_THREADS)
    return {"p50_ms": percentile(latencies, 0.50) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3,
            "latency_calls": len(latencies),
            "throughput": throughput["calls_per_second"],
            "throughput_calls": throughput["calls"],
            "errors": throughput["errors"]}


def run_rounds(targets: list[Target], seconds: float, rounds: int) -> dict[str, list[dict]]:
    """Interleave: A, B, C, A, B, C, ... so drift hits every variant alike."""
    results: dict[str, list[dict]] = {target.name: [] for target in targets}
    for _ in range(rounds):
        for target in targets:
            results[target.name].append(run_round(target, seconds))
    return results


# --- report --------------------------------------------------------------------------------


def summarize(rounds: list[dict[str, float]]) -> dict[str, Any]:
    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    return {"p50_ms": round(median("p50_ms"), 4), "p99_ms": round(median("p99_ms"), 4),
            "throughput": round(median("throughput"), 1),
            "errors": sum(r["errors"] for r in rounds), "rounds": rounds}


def compare(variants: dict[str, dict[str, Any]], baseline: str = "A") -> dict[str, Any]:
    base = variants[baseline]
    ratios: dict[str, Any] = {"p50_ratio": {}, "p99_ratio": {}, "throughput_ratio": {},
                              "p50_overhead_us": {}}
    for name, figures in variants.items():
        if name == baseline:
            continue
        ratios["p50_ratio"][name] = round(figures["p50_ms"] / base["p50_ms"], 3)
        ratios["p99_ratio"][name] = round(figures["p99_ms"] / base["p99_ms"], 3)
        ratios["throughput_ratio"][name] = round(figures["throughput"] / base["throughput"], 3)
        ratios["p50_overhead_us"][name] = round((figures["p50_ms"] - base["p50_ms"]) * 1e3, 1)
    return ratios


def machine_facts() -> dict[str, Any]:
    import google.protobuf

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(affinity) if affinity is not None else os.cpu_count(),
            "python": sys.version.split()[0], "python_implementation":
            platform.python_implementation(), "grpcio": grpc.__version__,
            "protobuf": google.protobuf.__version__}


def parameters(seconds: float) -> dict[str, Any]:
    return {"seconds": seconds, "warmup_seconds_per_variant": WARMUP_SECONDS,
            "rounds": ROUNDS, "order": "A,B,C interleaved per round; median over rounds",
            "latency_max_calls": LATENCY_CALLS, "client_threads": CLIENT_THREADS,
            "server_workers": SERVER_WORKERS, "call_timeout_seconds": CALL_TIMEOUT,
            "workload": f"KV.Get of an existing key ({len(VALUE)}-byte value)",
            "layout": "each server in its own spawned process; client in this process"}


def run(seconds: float = DEFAULT_SECONDS) -> dict[str, Any]:
    """Measure A, B and C in this run on this machine; return the report (JSON-ready)."""
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    lifetime = (WARMUP_SECONDS + 2 * seconds) * len(VARIANTS) * ROUNDS + 2 * START_TIMEOUT
    started = time.perf_counter()
    with ExitStack() as stack:
        data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rpc-"))
        bare_port = stack.enter_context(
            server_process("bare", os.path.join(data_dir, "bare"), lifetime))
        node_port = stack.enter_context(
            server_process("node", os.path.join(data_dir, "node"), lifetime))
        channels = {"A": bare_channel(f"127.0.0.1:{bare_port}"),
                    "B": bare_channel(f"127.0.0.1:{node_port}"),
                    "C": contract_channel(f"127.0.0.1:{node_port}")}
        for channel in channels.values():
            stack.callback(channel.close)
        targets = [make_target(name, channels[name]) for name in VARIANTS]
        for target in targets:
            warm_up(target, WARMUP_SECONDS)
        raw = run_rounds(targets, seconds, ROUNDS)
    variants = {name: {"label": LABELS[name], **summarize(raw[name])} for name in VARIANTS}
    return {"benchmark": "rpc_overhead", "machine": machine_facts(),
            "parameters": parameters(seconds), "variants": variants,
            "vs_A": compare(variants), "wall_seconds": round(time.perf_counter() - started, 1)}


def format_table(report: dict[str, Any]) -> str:
    ratios = report["vs_A"]
    lines = [f"{'variant':<24}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}"
             f"{'p50 x A':>9}{'tput x A':>10}"]
    for name, figures in report["variants"].items():
        p50_ratio = ratios["p50_ratio"].get(name, 1.0)
        tput_ratio = ratios["throughput_ratio"].get(name, 1.0)
        lines.append(f"{name + ' ' + figures['label']:<24}{figures['p50_ms']:>9.3f}"
                     f"{figures['p99_ms']:>9.3f}{figures['throughput']:>10.0f}"
                     f"{p50_ratio:>9.2f}{tput_ratio:>10.2f}")
    machine = report["machine"]
    lines.append(f"({machine['cpus_usable']} CPUs, Python {machine['python']}, "
                 f"grpcio {machine['grpcio']}, {report['wall_seconds']} s)")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rpc_overhead",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="length of each phase (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where to write the JSON report (default %(default)s)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    report = run(args.seconds)
    write_report(report, args.out)
    print(format_table(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
