"""python -m nodes.mapreduce.worker — a MapReduce worker machine (see --help).

The worker asks the master (MR_MASTER) for a task, runs it, reports it, and
asks again; while a task runs it heartbeats every MR_HEARTBEAT_SECONDS, and
when idle its polls are its heartbeats. The master holds an idle worker's ask
until a task is ready (a long poll, up to MAX_POLL_SECONDS), so the ask's
deadline covers that hold. It runs one task at a time: scale
workers, not threads (CPython runs one thread of Python at a time).

A map task reads its split from the shared MR_JOBS_DIR/input and writes R
partition files on this worker's own disk, DATA_DIR/<node>/intermediate/
<job>/m<task>-a<attempt>/part-<r>; the worker's `Worker.FetchPartition`
serves them to reducers, in chunks of at most 1 MiB. A reduce task fetches
its partition of every map task from the worker that ran it, reduces, and
writes MR_JOBS_DIR/output/<job>/.attempts/mr-out-<r>.a<attempt>; the master
renames it into place when it accepts the attempt. A reducer that cannot
fetch a map task's output says which, and the master runs that map again.

Every process start is a new incarnation with an empty intermediate
directory: a restarted worker has lost its map outputs, says so by its new
incarnation, and the master runs those map tasks again (the paper's rule).

The job's code runs here: a job module, loaded in isolation per job
(nodes.mapreduce.jobs). Its faults (it does not import, map raises on a
record) are reported as the job's, naming the record; the worker goes on to
the next task. FetchPartition needs the lab credential.

On SIGTERM the worker asks for no more tasks and finishes the one it runs
within GRACE_SECONDS; one still running then is left to the master's timeout.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import grpc
from prometheus_client import Counter, Histogram

from nodes.common.auth import service_methods
from nodes.common.config import Setting, own_ip, positive
from nodes.common.role import NodeContext, RoleNode, RoleSpec
from nodes.common.server import main
from nodes.mapreduce.jobs import (
    PARTITION_FILE,
    InputError,
    JobError,
    check_name,
    load_job,
    run_map,
    run_reduce,
)
from nodes.mapreduce.scheduler import MAP, MAX_POLL_SECONDS, REDUCE, Split
from nodes.rpc import mapreduce_pb2, mapreduce_pb2_grpc

SERVICE = mapreduce_pb2.DESCRIPTOR.services_by_name["Worker"]
CHUNK_BYTES = 1024 * 1024
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class FetchFailed(Exception):
    def __init__(self, lost: list[int], message: str) -> None:
        super().__init__(message)
        self.lost = lost


class WorkerNode(RoleNode, mapreduce_pb2_grpc.WorkerServicer):
    service_names = (SERVICE.full_name,)

    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        self._ctx = ctx
        self.name = ctx.name
        self.master = config["MR_MASTER"]
        self.jobs_dir = Path(config["MR_JOBS_DIR"])
        self.heartbeat_seconds = config["MR_HEARTBEAT_SECONDS"]
        self.fetch_timeout = config["MR_FETCH_TIMEOUT_SECONDS"]
        self.incarnation = uuid.uuid4().hex
        self.intermediate = ctx.data_dir / "intermediate"
        # A new incarnation starts with no map output: the master re-runs what we held.
        shutil.rmtree(self.intermediate, ignore_errors=True)
        self.intermediate.mkdir(parents=True, exist_ok=True)
        self.address = ""
        self._stopping = threading.Event()
        self._loop: threading.Thread | None = None
        self._modules: dict[str, types.ModuleType | JobError] = {}
        self._current = ""
        self.tasks = Counter("distlab_mapreduce_worker_tasks_total",
                             "Tasks this worker ran, by phase and outcome "
                             "(ok, job_error, failed, fetch_failed).", ["phase", "outcome"],
                             registry=ctx.registry)
        self.task_seconds = Histogram("distlab_mapreduce_worker_task_seconds",
                                      "Time to run one task, by phase.", ["phase"],
                                      buckets=TASK_BUCKETS, registry=ctx.registry)
        self.fetched = Counter("distlab_mapreduce_worker_fetched_bytes_total",
                               "Partition bytes fetched from map workers.",
                               registry=ctx.registry)
        self.served = Counter("distlab_mapreduce_worker_served_bytes_total",
                              "Partition bytes served to reducers.", registry=ctx.registry)

    def register(self, server: grpc.Server) -> None:
        mapreduce_pb2_grpc.add_WorkerServicer_to_server(self, server)

    def serving(self, grpc_port: int) -> None:
        host = self._ctx.config["MR_ADVERTISE_HOST"] or own_ip() or "127.0.0.1"
        self.address = f"{host}:{grpc_port}"
        self._loop = threading.Thread(target=self._run, name="mr-worker", daemon=True)
        self._loop.start()
        self._ctx.log.info("mr_worker_started", master=self.master, address=self.address,
                           incarnation=self.incarnation)

    def close(self) -> None:
        self._stopping.set()
        if self._loop is not None:
            self._loop.join(timeout=self._ctx.config["GRACE_SECONDS"])

    def status(self) -> dict[str, str]:
        return {"master": self.master, "address": self.address, "running": self._current,
                "incarnation": self.incarnation}

    def _master(self) -> mapreduce_pb2_grpc.MasterStub:
        return mapreduce_pb2_grpc.MasterStub(self._ctx.channels.get(self.master, "master"))

    # -- the task loop ---------------------------------------------------------------------

    def _run(self) -> None:
        ask_timeout = self._ctx.config["RPC_TIMEOUT_SECONDS"] + MAX_POLL_SECONDS
        while not self._stopping.is_set():
            try:
                task = self._master().RequestTask(mapreduce_pb2.RequestTaskRequest(
                    worker=self.name, address=self.address, incarnation=self.incarnation),
                    timeout=ask_timeout)
            except (grpc.RpcError, ValueError) as exc:
                if isinstance(exc, ValueError):  # our channels closed: the node is stopping
                    return
                # The master is down or restarting: keep asking, it resumes its jobs.
                self._ctx.log.debug("mr_master_unreachable", code=exc.code().name)
                self._stopping.wait(1.0)
                continue
            if task.kind not in (MAP, REDUCE):
                # 0 after a long poll: the master already waited for us.
                self._stopping.wait(task.poll_seconds)
                continue
            self._run_task(task)

    def _run_task(self, task) -> None:
        self._current = f"{task.job_id}/{task.kind[:1]}{task.task}.a{task.attempt}"
        beating = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(task, beating), daemon=True,
                                name="mr-heartbeat")
        beat.start()
        try:
            self._run_and_report(task)
        finally:
            # Only now: heartbeats go on until the report is in, so a report held up (a
            # slow link, a busy master) does not make the master count this worker silent
            # and run its map tasks again.
            beating.set()
        self._current = ""

    def _run_and_report(self, task) -> None:
        started = time.perf_counter()
        report = mapreduce_pb2.ReportTaskRequest(
            worker=self.name, incarnation=self.incarnation, job_id=task.job_id, kind=task.kind,
            task=task.task, attempt=task.attempt)
        try:
            module = self._module(task)
            counters = self._map(task, module) if task.kind == MAP else self._reduce(task, module)
            report.ok = True
            report.counters.update(counters)
            outcome = "ok"
        except JobError as exc:
            report.error, report.job_error, outcome = str(exc), True, "job_error"
        except FetchFailed as exc:
            report.error, outcome = str(exc), "fetch_failed"
            report.lost_map_tasks.extend(exc.lost)
        except Exception as exc:  # noqa: BLE001 - a disk or fetch fault fails this attempt only
            report.error, outcome = f"{type(exc).__name__}: {exc}", "failed"
        self.task_seconds.labels(phase=task.kind).observe(time.perf_counter() - started)
        self.tasks.labels(phase=task.kind, outcome=outcome).inc()
        self._report(report)

    def _report(self, report) -> None:
        # Reports are idempotent at the master (a duplicate is ignored): retry a few times.
        for _ in range(5):
            try:
                accepted = self._master().ReportTask(report).accepted
                self._ctx.log.info("mr_task_reported", job=report.job_id,
                                   task=f"{report.kind[:1]}{report.task}",
                                   attempt=report.attempt, ok=report.ok, accepted=accepted,
                                   error=report.error)
                return
            except (grpc.RpcError, ValueError):  # ValueError: our channels closed at stop
                if self._stopping.wait(1.0):
                    return

    def _heartbeat(self, task, done: threading.Event) -> None:
        request = mapreduce_pb2.HeartbeatRequest(
            worker=self.name, incarnation=self.incarnation, job_id=task.job_id, kind=task.kind,
            task=task.task, attempt=task.attempt)
        while not done.wait(self.heartbeat_seconds):
            with contextlib.suppress(grpc.RpcError):
                self._master().Heartbeat(request)

    def _module(self, task) -> types.ModuleType:
        check_name(task.job_id, "job id")
        if task.job_id not in self._modules:
            # A new job: the jobs before it are over, and so is our map output for them.
            for old in list(self._modules):
                shutil.rmtree(self.intermediate / old, ignore_errors=True)
            self._modules.clear()
            try:
                self._modules[task.job_id] = load_job(task.module_source, task.job_id,
                                                      dict(task.params))
            except JobError as exc:
                self._modules[task.job_id] = exc
        module = self._modules[task.job_id]
        if isinstance(module, JobError):
            raise module
        return module

    def _map(self, task, module: types.ModuleType) -> dict[str, int]:
        split = Split(task.split.path, task.split.start, task.split.end)
        out = self.intermediate / task.job_id / f"m{task.task}-a{task.attempt}"
        return run_map(module, self.jobs_dir / "input", split, task.reducers, out)

    def _reduce(self, task, module: types.ModuleType) -> dict[str, int]:
        partitions, lost, problems = [], [], []
        for location in task.locations:
            try:
                partitions.append(self._fetch(task, location))
            except grpc.RpcError as exc:
                lost.append(location.map_task)
                problems.append(f"m{location.map_task} from {location.worker}: "
                                f"{exc.code().name}")
        if lost:
            raise FetchFailed(lost, "could not fetch " + "; ".join(problems[:5]))
        output = self.jobs_dir / "output" / task.output_path
        return run_reduce(module, partitions, output, task.task)

    def _fetch(self, task, location) -> bytes:
        stub = mapreduce_pb2_grpc.WorkerStub(
            self._ctx.channels.get(location.address, location.worker))
        chunks = stub.FetchPartition(mapreduce_pb2.FetchPartitionRequest(
            job_id=task.job_id, map_task=location.map_task, attempt=location.attempt,
            partition=task.task), timeout=self.fetch_timeout)
        data = b"".join(chunk.data for chunk in chunks)
        self.fetched.inc(len(data))
        return data

    # -- Worker service --------------------------------------------------------------------

    def FetchPartition(self, request, context):
        try:
            check_name(request.job_id, "job id")
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        path = (self.intermediate / request.job_id / f"m{request.map_task}-a{request.attempt}"
                / PARTITION_FILE.format(partition=request.partition))
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no output of map task {request.map_task} attempt "
                          f"{request.attempt} partition {request.partition} of "
                          f"{request.job_id} here")
        with handle:
            while chunk := handle.read(CHUNK_BYTES):
                self.served.inc(len(chunk))
                yield mapreduce_pb2.PartitionChunk(data=chunk)


SPEC = RoleSpec(
    name="mapreduce.worker",
    summary="a MapReduce worker: asks MR_MASTER for map and reduce tasks and runs them; "
            "keeps its map output on its own disk (DATA_DIR) and serves it to reducers "
            "(Worker.FetchPartition); reads input from and writes output to MR_JOBS_DIR.",
    settings=(
        Setting("MR_MASTER", str, "mapreduce-master:50051", "host:port of the master"),
        Setting("MR_JOBS_DIR", str, "/data/jobs", "the directory shared with the master "
                "(input/, output/): the same volume, mounted at the same place"),
        Setting("MR_ADVERTISE_HOST", str, "", "the host reducers reach this worker at "
                "(default: this machine's address)"),
        Setting("MR_HEARTBEAT_SECONDS", float, 1.0, "heartbeat interval while a task runs",
                positive),
        Setting("MR_FETCH_TIMEOUT_SECONDS", float, 30.0, "deadline of one partition fetch",
                positive),
    ),
    build=WorkerNode,
    protected=service_methods(SERVICE),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
