"""The process architecture: APP_PROCESSES worker processes serving one port, and their supervisor.

`main` is `python -m nodes.app`: in the process architecture it runs
`supervise`, otherwise the common node entry. The supervisor makes no gRPC
object: it holds the port with an SO_REUSEPORT socket and spawns the workers
(spawned, not forked, so no gRPC state could cross into them); each worker
(`run_worker`) runs a full threaded app node (the app's SPEC) bound to that
port with SO_REUSEPORT. The kernel spreads incoming connections among the workers, so
every call on one connection reaches the same worker, and a Statement cursor
is known only to the worker that opened it (served_by says which:
"<machine>/<index>").

- Metrics: each worker serves /metrics on a private port, reported through a
  pipe; the supervisor's METRICS_PORT scrapes them all on every scrape and
  re-exposes each sample with a `process` label (the worker index), plus
  distlab_app_process_up.
- Control: a Control call reaches the one worker its connection landed on.
  Status describes that worker, and an RPC fault rule added that way acts on
  that worker's calls only; network faults act on the whole machine.
- Stopping: SIGTERM (or SIGINT) is passed to every worker, which drains like
  any node within GRACE_SECONDS; the supervisor then exits 0. A worker that
  exits unasked stops the machine (exit 1) so its restart policy brings a
  whole one back; a worker whose supervisor died stops by itself (its pipe
  closes).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from nodes.app.service import SPEC, BankNode, limits_from
from nodes.common.config import COMMON_SETTINGS, ConfigError, default_node_name, load_settings
from nodes.common.logs import EventLog
from nodes.common.role import RoleSpec
from nodes.common.server import NodeServer
from nodes.common.server import main as node_main

START_TIMEOUT_SECONDS = 60.0  # spawning imports gRPC afresh in every worker: seconds on 2 cores
SCRAPE_TIMEOUT_SECONDS = 2.0
STOP_MARGIN_SECONDS = 5.0  # beyond GRACE_SECONDS, before a worker that will not stop is killed


def main(spec: RoleSpec, argv: Sequence[str] | None = None,
         environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    if not argv:
        try:
            config = load_settings(COMMON_SETTINGS + spec.settings, environ)
            limits_from(config)
        except ConfigError:
            config = None  # the common entry reports it, like any role's
        if config is not None and config["APP_ARCHITECTURE"] == "process":
            return supervise(spec, config, environ)
    return node_main(spec, argv, environ)


@dataclasses.dataclass
class Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    pipe: Connection
    pid: int = 0
    metrics_port: int = 0


def supervise(spec: RoleSpec, config: dict[str, Any], environ: Mapping[str, str]) -> int:
    name = config["NODE_NAME"] or default_node_name()
    log = EventLog(name, spec.name, level=config["LOG_LEVEL"])
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        with reserved_port(config["GRPC_PORT"]) as port:
            workers = _spawn(name, port, config["APP_PROCESSES"], environ)
            try:
                failed = _serve(workers, port, config, stopping, log)
            finally:
                _stop_all(workers, config["GRACE_SECONDS"], log)
    except OSError as exc:
        print(f"nodes.{spec.name}: cannot start: {exc}", file=sys.stderr)
        return 1
    log.info("supervisor_stopped", failed=failed)
    return 1 if failed else 0


def _spawn(name: str, port: int, count: int, environ: Mapping[str, str]) -> list[Worker]:
    worker_environ = {**environ, "NODE_NAME": name, "GRPC_PORT": str(port), "METRICS_PORT": "0"}
    spawner = multiprocessing.get_context("spawn")
    workers = []
    for index in range(count):
        ours, theirs = spawner.Pipe()
        process = spawner.Process(target=run_worker, args=(index, worker_environ, theirs),
                                  name=f"{name}-worker-{index}")
        process.start()
        theirs.close()  # now only the worker holds its end: EOF there means we are gone
        workers.append(Worker(index, process, ours))
    return workers


def _serve(workers: list[Worker], port: int, config: dict[str, Any],
           stopping: threading.Event, log: EventLog) -> bool:
    """Serve the workers' metrics until a stop signal (False) or a worker's failure (True)."""
    if not _await_started(workers, stopping, log):
        return not stopping.is_set()
    registry = CollectorRegistry()
    registry.register(WorkerMetrics({w.index: w.metrics_port for w in workers}))
    metrics_server, _ = start_http_server(config["METRICS_PORT"], registry=registry)
    try:
        log.info("supervisor_started", grpc_port=port, metrics_port=metrics_server.server_port,
                 processes={w.index: w.pid for w in workers})
        return _watch(workers, stopping, log)
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()


def _await_started(workers: list[Worker], stopping: threading.Event, log: EventLog) -> bool:
    """True once every worker serves; False when one failed, took too long, or we must stop."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    waiting = {w.pipe: w for w in workers}
    while waiting and not stopping.is_set():
        ready = wait([*waiting, *(w.process.sentinel for w in waiting.values())],
                     timeout=min(0.5, max(0.0, deadline - time.monotonic())))
        for worker in list(waiting.values()):
            if worker.pipe in ready:
                try:
                    report = worker.pipe.recv()
                except EOFError:
                    report = None
                if report is None:
                    log.error("worker_failed_to_start", process=worker.index,
                              exitcode=worker.process.exitcode)
                    return False
                worker.pid, worker.metrics_port = report["pid"], report["metrics_port"]
                del waiting[worker.pipe]
            elif worker.process.sentinel in ready:
                log.error("worker_failed_to_start", process=worker.index,
                          exitcode=worker.process.exitcode)
                return False
        if waiting and time.monotonic() > deadline:
            log.error("workers_start_timeout", waiting=[w.index for w in waiting.values()],
                      seconds=START_TIMEOUT_SECONDS)
            return False
    return not stopping.is_set()


def _watch(workers: list[Worker], stopping: threading.Event, log: EventLog) -> bool:
    """Wait for a stop signal (False) or a worker's unasked exit (True)."""
    while not stopping.is_set():
        exited = wait([w.process.sentinel for w in workers], timeout=0.5)
        for worker in workers:
            if worker.process.sentinel in exited:
                worker.process.join()
                log.error("worker_exited", process=worker.index, pid=worker.pid,
                          exitcode=worker.process.exitcode)
                return True
    return False


def _stop_all(workers: list[Worker], grace: float, log: EventLog) -> None:
    for worker in workers:
        if worker.process.is_alive():
            worker.process.terminate()  # SIGTERM: the worker drains like any node
    deadline = time.monotonic() + grace + STOP_MARGIN_SECONDS
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            log.warning("worker_killed", process=worker.index, pid=worker.pid)
            worker.process.kill()
            worker.process.join()
        worker.pipe.close()


@contextmanager
def reserved_port(port: int) -> Iterator[int]:
    """Hold `port` (0: pick a free one) so only SO_REUSEPORT sockets of ours can share it."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("0.0.0.0", port))
        yield holder.getsockname()[1]
    finally:
        holder.close()


def run_worker(index: int, environ: dict[str, str], pipe: Connection) -> None:
    """A worker process: a full app node on the shared port until told to stop."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    spec = dataclasses.replace(SPEC, build=functools.partial(BankNode, process_index=index))
    try:
        node = NodeServer(spec, environ)
        node.start()
    except (ConfigError, OSError, RuntimeError) as exc:
        print(f"nodes.app worker {index}: cannot start: {exc}", file=sys.stderr)
        pipe.send(None)
        sys.exit(1)
    pipe.send({"pid": os.getpid(), "metrics_port": node.metrics_port})
    threading.Thread(target=_stop_when_orphaned, args=(pipe, stopping), daemon=True).start()
    stopping.wait()
    node.stop()


def _stop_when_orphaned(pipe: Connection, stopping: threading.Event) -> None:
    try:
        pipe.recv()  # the supervisor never sends: this returns when it is gone
    except (EOFError, OSError):
        pass
    stopping.set()


class WorkerMetrics:
    """A Prometheus collector: every worker's /metrics, each sample labelled with its process."""

    def __init__(self, ports: dict[int, int], timeout: float = SCRAPE_TIMEOUT_SECONDS) -> None:
        self._ports = ports
        self._timeout = timeout

    def describe(self) -> list[Metric]:
        return []  # names vary with what the workers export: nothing to check up front

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily("distlab_app_process_up",
                               "1 when this worker process answered the supervisor's scrape.",
                               labels=["process"])
        for index, port in sorted(self._ports.items()):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=self._timeout) as response:
                    text = response.read().decode()
            except OSError:
                up.add_metric([str(index)], 0)
                continue
            up.add_metric([str(index)], 1)
            for family in text_string_to_metric_families(text):
                target = merged.setdefault(family.name, Metric(
                    family.name, family.documentation, family.type, family.unit))
                target.samples.extend(
                    sample._replace(labels={**sample.labels, "process": str(index)})
                    for sample in family.samples)
        yield from merged.values()
        yield up
