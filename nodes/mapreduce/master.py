"""python -m nodes.mapreduce.master — the MapReduce master machine (see --help).

It accepts jobs (SubmitJob: a built-in job or a module's source, inputs, R),
cuts the inputs into splits, hands tasks to the workers that ask (RequestTask,
which is also an idle worker's heartbeat), hears their heartbeats and
reports, and commits each reduce task's output. RequestTask is a long poll:
with nothing to hand out, the master holds the call up to MR_POLL_SECONDS and
answers as soon as a task is ready (a job submitted, a phase ended, a task
back to idle), so a task never waits for a worker's next poll. The scheduling rules live in
nodes.mapreduce.scheduler; this module is the I/O around them.

Where files live. One directory, MR_JOBS_DIR (default /data/jobs), is shared
by the master, every worker and the host: in containers a named volume mounted
at /data/jobs on all of them (the host reaches it through the volume, or a
bind mount of the same directory). In it:

- `input/`: what jobs read. Input names in a job are relative to it; a name
  that leads outside (absolute, `..`, a symbolic link out) is refused.
- `output/<job id>/mr-out-<r>`: the final output, one `key value` line per
  key. A reduce attempt writes `output/<job id>/.attempts/mr-out-<r>.a<n>`
  (fsync'd); when the master accepts that attempt it renames the file into
  place (atomic on one file system) before it says the task is done, so
  every output file comes from exactly one accepted attempt and is whole.

Map output is not here: it stays on the disk of the worker that ran the map
task (its own DATA_DIR), and reducers fetch it from that worker over gRPC
(Worker.FetchPartition), as in the paper; so a lost worker's map tasks run
again. The master's own state (jobs, tasks, attempts, workers) is one JSON
file, `DATA_DIR/<node>/mapreduce-master.json`, rewritten atomically and
fsync'd on every change before the change is answered, so a restarted master
resumes its jobs where they were.

The host needs no access to the volume: PutInput stores an input file under
input/ (atomically, at most MR_MAX_INPUT_MB) and ReadOutput streams a done job's
mr-out-<r>.

Who may call what: JobStatus and ListJobs are open; SubmitJob (a job is code
the workers run), PutInput and ReadOutput (the lab's data), RequestTask,
Heartbeat and ReportTask need the lab credential.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import grpc
from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily

from nodes.common.auth import service_methods
from nodes.common.config import Setting, non_negative, positive
from nodes.common.durable import fsync_directory, read_file, write_atomically
from nodes.common.role import NodeContext, RoleNode, RoleSpec
from nodes.common.server import main
from nodes.mapreduce.jobs import (
    MAX_MODULE_BYTES,
    InputError,
    builtin_source,
    check_name,
    inside,
    split_inputs,
)
from nodes.mapreduce.scheduler import (
    COMPLETED,
    IDLE,
    IN_PROGRESS,
    MAP,
    MAX_POLL_SECONDS,
    REDUCE,
    Assignment,
    Job,
    Scheduler,
    SchedulerError,
)
from nodes.rpc import mapreduce_pb2, mapreduce_pb2_grpc

SERVICE = mapreduce_pb2.DESCRIPTOR.services_by_name["Master"]
STATE_FILE = "mapreduce-master.json"
MAX_INPUTS = 1000
MAX_PARAMS_BYTES = 64 * 1024
CHUNK_BYTES = 1024 * 1024
#: The scheduler's event names, exported as counters (a fixed set: bounded labels).
EVENTS = ("reexecuted", "backups", "backup_attempts", "timed_out", "lost_workers",
          "maps_lost", "duplicates", "task_failures")


def output_dir(jobs_dir: Path, job_id: str) -> Path:
    return jobs_dir / "output" / job_id


def attempt_output(job_id: str, task: int, attempt: int) -> str:
    """Where a reduce attempt writes, relative to the output directory."""
    return f"{job_id}/.attempts/mr-out-{task}.a{attempt}"


class MasterMetrics:
    def __init__(self, registry, scheduler: Scheduler) -> None:
        tasks = Gauge("distlab_mapreduce_tasks", "Tasks of the running job, by phase and state.",
                      ["phase", "state"], registry=registry)
        for phase in (MAP, REDUCE):
            for state in (IDLE, IN_PROGRESS, COMPLETED):
                tasks.labels(phase=phase, state=state).set_function(
                    lambda p=phase, s=state: self._count(p, s))
        Gauge("distlab_mapreduce_workers", "Workers heard from within the worker timeout.",
              registry=registry).set_function(lambda: len(scheduler.workers))
        self.attempts = Counter("distlab_mapreduce_task_attempts_total",
                                "Task attempts handed out, by phase and why (first, retry, "
                                "backup).", ["phase", "reason"], registry=registry)
        self.completed = Counter("distlab_mapreduce_tasks_completed_total",
                                 "Task attempts accepted as the task's result, by phase.",
                                 ["phase"], registry=registry)
        self.jobs = Counter("distlab_mapreduce_jobs_total", "Jobs ended, by outcome.",
                            ["outcome"], registry=registry)
        self.records = Counter("distlab_mapreduce_records_total",
                               "Records read by accepted attempts, by phase.", ["phase"],
                               registry=registry)
        self._scheduler = scheduler
        registry.register(self)

    def _count(self, phase: str, state: str) -> int:
        job = self._scheduler.active()
        return job.counts(phase)[state] if job is not None else 0

    def collect(self):
        family = CounterMetricFamily("distlab_mapreduce_scheduler_events",
                                     "What the scheduler did: re-executions, backups, "
                                     "timeouts, lost workers and map outputs ...", labels=["event"])
        events = dict(self._scheduler.events)
        for event in EVENTS:
            family.add_metric([event], events.get(event, 0))
        yield family

    def describe(self):
        return []


class MasterNode(RoleNode, mapreduce_pb2_grpc.MasterServicer):
    service_names = (SERVICE.full_name,)

    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        self._ctx = ctx
        self.jobs_dir = Path(config["MR_JOBS_DIR"])
        self.input_dir = self.jobs_dir / "input"
        self.output_root = self.jobs_dir / "output"
        self.split_bytes = int(config["MR_SPLIT_MB"] * 1024 * 1024)
        self.poll_seconds = config["MR_POLL_SECONDS"]
        self.max_reducers = config["MR_MAX_REDUCERS"]
        self.max_input_bytes = config["MR_MAX_INPUT_MB"] * 1024 * 1024
        self.scheduler = Scheduler(
            task_timeout=config["MR_TASK_TIMEOUT_SECONDS"],
            worker_timeout=config["MR_WORKER_TIMEOUT_SECONDS"],
            backup_fraction=config["MR_BACKUP_FRACTION"],
            backup_after=config["MR_BACKUP_AFTER_SECONDS"],
            max_failures=config["MR_MAX_TASK_FAILURES"])
        self._lock = threading.Lock()
        #: Notified whenever a task may have become ready; held RequestTask calls wait on it.
        self._changed = threading.Condition(self._lock)
        # Every held call holds a server thread: keep half of them for reports and heartbeats.
        self._max_held = max(1, config["WORKERS"] // 2)
        self._held = 0
        self.state_file = ctx.data_dir / STATE_FILE
        saved = read_file(self.state_file)
        if saved is not None:
            self.scheduler.restore(json.loads(saved), now=time.monotonic())
            active = self.scheduler.active()
            ctx.log.info("mr_state_restored", jobs=len(self.scheduler.jobs),
                         active=active.job_id if active else "")
        for path in (self.input_dir, self.output_root):
            path.mkdir(parents=True, exist_ok=True)
        self.metrics = MasterMetrics(ctx.registry, self.scheduler)
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None

    def register(self, server: grpc.Server) -> None:
        mapreduce_pb2_grpc.add_MasterServicer_to_server(self, server)

    def serving(self, grpc_port: int) -> None:
        self._ticker = threading.Thread(target=self._tick, name="mr-ticker", daemon=True)
        self._ticker.start()
        self._ctx.log.info("mr_master_started", jobs_dir=str(self.jobs_dir))

    def _tick(self) -> None:
        # Without requests nothing would notice a silent worker; status and metrics should.
        while not self._stopping.wait(min(1.0, self.scheduler.worker_timeout / 2)):
            with self._lock:
                before = len(self.scheduler.workers)
                self.scheduler.tick(time.monotonic())
                if len(self.scheduler.workers) != before:
                    self._persist()
                # Time alone readies tasks too (an attempt timed out, a task now slow
                # enough for a backup): held workers look again.
                self._changed.notify_all()

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            self._changed.notify_all()  # held RequestTask calls answer now
        if self._ticker is not None:
            self._ticker.join()

    def status(self) -> dict[str, str]:
        with self._lock:
            active = self.scheduler.active()
            return {"jobs": str(len(self.scheduler.jobs)),
                    "active_job": active.job_id if active else "",
                    "workers": str(len(self.scheduler.workers)),
                    "jobs_dir": str(self.jobs_dir)}

    def _persist(self) -> None:
        write_atomically(self.state_file, json.dumps(self.scheduler.to_dict()).encode())

    # -- the host's calls ------------------------------------------------------------------

    def SubmitJob(self, request, context):
        try:
            source, name = self._job_source(request)
            if not 1 <= request.reducers <= self.max_reducers:
                raise InputError(f"reducers must be 1 to {self.max_reducers}, "
                                 f"not {request.reducers}")
            if len(request.inputs) > MAX_INPUTS:
                raise InputError(f"at most {MAX_INPUTS} inputs")
            if sum(len(k) + len(v) for k, v in request.params.items()) > MAX_PARAMS_BYTES:
                raise InputError(f"params are larger than {MAX_PARAMS_BYTES} bytes")
            split_bytes = request.split_mb * 1024 * 1024 or self.split_bytes
            splits = split_inputs(self.input_dir, request.inputs, split_bytes)
        except InputError as exc:
            code = (grpc.StatusCode.NOT_FOUND if "does not exist" in str(exc)
                    else grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(code, str(exc))
        except OSError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot read the input: {exc}")
        with self._lock:
            try:
                job = self.scheduler.submit(name=name, module_source=source,
                                            params=dict(request.params),
                                            reducers=request.reducers, splits=splits,
                                            now=time.monotonic())
            except SchedulerError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            job.submitted_unix = time.time()
            self._persist()
            self._changed.notify_all()
        self._ctx.log.info("mr_job_submitted", job=job.job_id, name=name,
                           map_tasks=len(job.maps), reduce_tasks=job.reducers)
        return mapreduce_pb2.SubmitJobReply(job_id=job.job_id, map_tasks=len(job.maps),
                                            reduce_tasks=job.reducers)

    def _job_source(self, request) -> tuple[str, str]:
        if request.builtin and request.module_source:
            raise InputError("give a built-in job or a module's source, not both")
        if request.builtin:
            source = builtin_source(request.builtin)
            name = request.name or request.builtin
        elif request.module_source:
            if len(request.module_source.encode()) > MAX_MODULE_BYTES:
                raise InputError(f"the job module is larger than {MAX_MODULE_BYTES} bytes")
            source, name = request.module_source, request.name or "job"
        else:
            raise InputError("no job: give a built-in job's name or a module's source")
        return source, check_name(name, "job name")

    def JobStatus(self, request, context):
        with self._lock:
            job = self.scheduler.jobs.get(request.job_id)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id[:80]!r}")
            return self._describe(job)

    def ListJobs(self, request, context):
        with self._lock:
            return mapreduce_pb2.ListJobsReply(
                jobs=[self._describe(job) for job in list(self.scheduler.jobs.values())[-100:]])

    def _describe(self, job: Job) -> mapreduce_pb2.JobStatusReply:
        return mapreduce_pb2.JobStatusReply(
            job_id=job.job_id, name=job.name, state=job.state, error=job.error,
            map=mapreduce_pb2.PhaseCounts(**job.counts(MAP)),
            reduce=mapreduce_pb2.PhaseCounts(**job.counts(REDUCE)),
            output_dir=job.job_id,
            outputs=[f"{job.job_id}/mr-out-{r}" for r in range(job.reducers)]
            if job.state == "done" else [],
            counters=job.counters,
            attempts={task.name: task.attempts_started for task in job.maps + job.reduces},
            submitted_at=job.submitted_unix, finished_at=job.finished_unix)

    # -- the workers' calls ----------------------------------------------------------------

    def RequestTask(self, request, context):
        with self._lock:
            assignment, ask_again = self._next_task(request, context)
            if assignment is None:
                return mapreduce_pb2.RequestTaskReply(kind="wait", poll_seconds=ask_again)
            self._persist()
            job, task = assignment.job, assignment.task
            reason = "backup" if assignment.backup else (
                "retry" if task.attempts_started > 1 else "first")
            self.metrics.attempts.labels(phase=task.kind, reason=reason).inc()
            reply = mapreduce_pb2.RequestTaskReply(
                kind=task.kind, poll_seconds=self.poll_seconds, job_id=job.job_id,
                task=task.index, attempt=assignment.attempt, module_source=job.module_source,
                params=job.params, reducers=job.reducers, map_tasks=len(job.maps))
            if task.kind == MAP:
                split = job.splits[task.index]
                reply.split.CopyFrom(mapreduce_pb2.Split(path=split.path, start=split.start,
                                                         end=split.end))
            else:
                reply.locations.extend(
                    mapreduce_pb2.MapLocation(map_task=m, attempt=a, address=address,
                                              worker=worker)
                    for m, a, address, worker in assignment.locations)
                reply.output_path = attempt_output(job.job_id, task.index, assignment.attempt)
        self._ctx.log.info("mr_task_assigned", job=job.job_id, task=task.name,
                           attempt=assignment.attempt, worker=request.worker, reason=reason)
        return reply

    def _next_task(self, request, context) -> tuple[Assignment | None, float]:
        """A task for the asking worker, waiting for one up to MR_POLL_SECONDS (the lock
        is held on entry and on return), and when to ask again without one: at once
        after a held call, after MR_POLL_SECONDS when there was no thread to hold it on.
        The hold stays under half the worker timeout, so a held worker never looks
        silent."""
        hold = min(self.poll_seconds, self.scheduler.worker_timeout / 2)
        deadline = time.monotonic() + hold
        held = False
        try:
            while True:
                now = time.monotonic()
                assignment = self.scheduler.request_task(request.worker, request.address,
                                                         request.incarnation, now)
                if assignment is not None or now >= deadline or self._stopping.is_set() \
                        or not context.is_active():
                    return assignment, 0.0 if held else self.poll_seconds
                if not held:
                    if self._held >= self._max_held:  # no thread to spare: poll instead
                        return None, self.poll_seconds
                    self._held += 1
                    held = True
                self._changed.wait(deadline - now)
        finally:
            if held:
                self._held -= 1

    def Heartbeat(self, request, context):
        with self._lock:
            keep_going = self.scheduler.heartbeat(
                request.worker, request.incarnation, request.job_id, request.kind,
                request.task, request.attempt, time.monotonic())
        return mapreduce_pb2.HeartbeatReply(keep_going=keep_going)

    def ReportTask(self, request, context):
        ok, error = request.ok, request.error
        produced = self.output_root / attempt_output(request.job_id, request.task,
                                                     request.attempt)
        with self._lock:
            if ok and request.kind == REDUCE:
                if self.scheduler.would_accept(request.worker, request.incarnation,
                                               request.job_id, request.kind, request.task,
                                               request.attempt):
                    # In place before the task counts as done: "done" means final.
                    try:
                        self._commit(request.job_id, request.task, request.attempt)
                    except OSError as exc:
                        ok, error = False, f"committing {produced.name} failed: {exc}"
                else:
                    produced.unlink(missing_ok=True)  # a duplicate's output goes unused
            outcome = self.scheduler.report(
                request.worker, request.incarnation, request.job_id, request.kind, request.task,
                request.attempt, ok=ok, now=time.monotonic(), error=error[:2000],
                job_error=request.job_error, lost_map_tasks=tuple(request.lost_map_tasks),
                counters=dict(request.counters))
            self._changed.notify_all()  # a task done, failed or lost: the next may be ready
            if outcome.accepted:
                self.metrics.completed.labels(phase=request.kind).inc()
                self.metrics.records.labels(phase=request.kind).inc(
                    request.counters.get(f"{request.kind}_records_in", 0))
            job = self.scheduler.jobs.get(request.job_id)
            if outcome.job_finished and job is not None:
                job.finished_unix = time.time()
                self.metrics.jobs.labels(outcome=job.state).inc()
                shutil.rmtree(output_dir(self.jobs_dir, job.job_id) / ".attempts",
                              ignore_errors=True)
            # Persisted after the rename: a crash between them runs the task again, and its
            # output replaces the file with the same bytes.
            self._persist()
        if not ok and job is not None:  # a failure of no job is a stray report, not news
            self._ctx.log.warning("mr_task_failed", job=request.job_id,
                                  task=f"{request.kind[:1]}{request.task}",
                                  attempt=request.attempt, worker=request.worker[:200],
                                  error=error[:2000],
                                  lost_map_tasks=list(request.lost_map_tasks))
        if outcome.job_finished and job is not None:
            self._ctx.log.info("mr_job_finished", job=job.job_id, state=job.state,
                               error=job.error, counters=job.counters)
        return mapreduce_pb2.ReportTaskReply(accepted=outcome.accepted)

    def _commit(self, job_id: str, task: int, attempt: int) -> None:
        final = output_dir(self.jobs_dir, job_id) / f"mr-out-{task}"
        os.replace(self.output_root / attempt_output(job_id, task, attempt), final)
        fsync_directory(final.parent)

    # -- the host's files ------------------------------------------------------------------

    def PutInput(self, request_iterator, context):
        limit = self.max_input_bytes
        first = next(request_iterator, None)
        if first is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no chunks: the first names the file")
        try:
            path = inside(self.input_dir, first.name)
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if path == self.input_dir.resolve() or path.is_dir():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{first.name!r} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per upload: two uploads of one file never share a temporary.
        temporary = path.with_name(f".{path.name}.upload-{os.getpid()}-{threading.get_ident()}")
        size = 0
        try:
            with open(temporary, "wb") as out:
                for chunk in _chain(first, request_iterator):
                    size += len(chunk.data)
                    if size > limit:
                        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"{first.name!r} is larger than MR_MAX_INPUT_MB "
                                      f"({limit // (1024 * 1024)} MiB)")
                    out.write(chunk.data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
            fsync_directory(path.parent)
        finally:
            temporary.unlink(missing_ok=True)
        self._ctx.log.info("mr_input_stored", name=first.name, bytes=size)
        return mapreduce_pb2.PutInputReply(name=first.name, bytes=size)

    def ReadOutput(self, request, context):
        with self._lock:
            job = self.scheduler.jobs.get(request.job_id)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id[:80]!r}")
            if job.state != "done":
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"{job.job_id} is {job.state}, not done: no output yet")
            if request.partition >= job.reducers:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{job.job_id} has partitions 0 to {job.reducers - 1}")
        path = output_dir(self.jobs_dir, job.job_id) / f"mr-out-{request.partition}"
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{path.name} of {job.job_id} is gone")
        with handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield mapreduce_pb2.PartitionChunk(data=chunk)


def _poll_seconds(value: float) -> str | None:
    # Workers give RequestTask a deadline that covers MAX_POLL_SECONDS of holding.
    return None if 0 < value <= MAX_POLL_SECONDS else f"must be > 0 and <= {MAX_POLL_SECONDS:g}"


def _chain(first, rest):
    yield first
    yield from rest


SPEC = RoleSpec(
    name="mapreduce.master",
    summary="the MapReduce master: accepts jobs, splits their input in MR_JOBS_DIR/input, "
            "hands map and reduce tasks to workers that ask, re-runs what lost or slow "
            "workers held, commits MR_JOBS_DIR/output/<job>/mr-out-<r>; its state survives "
            "a restart (DATA_DIR).",
    settings=(
        Setting("MR_JOBS_DIR", str, "/data/jobs", "directory shared by the master, workers "
                "and host: input/ and output/ (a named volume in containers)"),
        Setting("MR_SPLIT_MB", float, 16.0, "size of an input split in MiB (a job may ask "
                "for its own)", positive),
        Setting("MR_TASK_TIMEOUT_SECONDS", float, 10.0, "a task attempt running longer "
                "is given to another worker too", positive),
        Setting("MR_WORKER_TIMEOUT_SECONDS", float, 5.0, "a worker silent this long is "
                "lost: its tasks, and its completed map tasks, run again", positive),
        Setting("MR_BACKUP_FRACTION", float, 0.2, "backup copies start when at most this "
                "fraction of a phase's tasks still run (0: never)", non_negative),
        Setting("MR_BACKUP_AFTER_SECONDS", float, 1.0, "a task gets a backup only after "
                "running this long (and twice the phase's median)", non_negative),
        Setting("MR_MAX_TASK_FAILURES", int, 4, "a task failing this often fails its job",
                positive),
        Setting("MR_MAX_REDUCERS", int, 1000, "most reduce tasks in one job", positive),
        Setting("MR_MAX_INPUT_MB", int, 1024, "largest input file PutInput stores", positive),
        Setting("MR_POLL_SECONDS", float, 1.0, "how long RequestTask is held waiting for a "
                "task before the worker is told to ask again (a long poll; at most "
                f"{MAX_POLL_SECONDS:g})", _poll_seconds),
    ),
    build=MasterNode,
    protected=service_methods(SERVICE, "SubmitJob", "RequestTask", "Heartbeat", "ReportTask",
                              "PutInput", "ReadOutput"),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
