"""The Mobility gRPC service: programs of nodes.mobility.language shipped to this host and
run here, and running tasks moved to another host's Mobility service.

Served by every `host` machine beside its Hypervisor (nodes.host.service registers it).
One runner thread runs every task in slices, each task at most MOBILITY_STEPS_PER_SECOND
instructions a second, so a demo task lasts long enough to be moved mid-run. A move
pauses the task between two slices, hands it to the destination (`Arrive`) and only
once the destination answered that it holds it leaves a forwarding entry here ("moved
to host-3"); a refused or failed hand-over resumes it here, nothing lost. Tasks live in
memory: a host that restarts has none.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from nodes.common.auth import service_methods
from nodes.common.role import NodeContext
from nodes.mobility.language import (
    DONE,
    FAILED,
    RUNNING,
    LanguageError,
    Program,
    Task,
    parse,
    parse_args,
)
from nodes.rpc import mobility_pb2, mobility_pb2_grpc

MOBILITY = mobility_pb2.DESCRIPTOR.services_by_name["Mobility"]
SERVICE_NAME = MOBILITY.full_name
PROTECTED = service_methods(MOBILITY)
MOVING, MOVED = "moving", "moved"
TASK_STATES = (RUNNING, MOVING, DONE, FAILED, MOVED)
MODES = ("strong", "weak")
SLICE_STEPS = 1000  # instructions a task runs before the runner turns to the next one
TICK_SECONDS = 0.02
ARRIVE_SECONDS = 10.0
NAME_CHARS = 64


@dataclass
class Entry:
    """A task this host holds, or the forwarding entry of one it moved away."""

    id: str
    name: str
    program: Program
    args: dict[str, int]
    task: Task | None  # None once moved away: this host never runs it again
    mode: str = "shipped"  # how it came here
    arrived_from: str = ""
    moving: bool = False
    moved_to: str = ""
    moved_address: str = ""
    steps_here: int = 0  # kept after a move, for the forwarding entry
    credit: float = 0.0  # instructions it may run now (the pacing)

    @property
    def state(self) -> str:
        if self.task is None:
            return MOVED
        if self.moving:
            return MOVING
        return self.task.state


class MobilityMetrics:
    def __init__(self, registry: CollectorRegistry, count) -> None:
        tasks = Gauge("distlab_mobility_tasks", "Tasks this host holds, by state (moved: "
                      "forwarding entries).", ["state"], registry=registry)
        for state in TASK_STATES:
            tasks.labels(state=state).set_function(lambda state=state: count(state))
        self.steps = Counter("distlab_mobility_steps_total",
                             "Instructions this host's tasks executed.", registry=registry)
        self.moves = Counter("distlab_mobility_moves_total",
                             "Moves this host sent, by mode and outcome.", ["mode", "outcome"],
                             registry=registry)
        for mode in MODES:
            for outcome in ("done", "failed"):
                self.moves.labels(mode=mode, outcome=outcome)


class MobilityService(mobility_pb2_grpc.MobilityServicer):
    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._log = ctx.log
        config = ctx.config
        self._rate = config["MOBILITY_STEPS_PER_SECOND"]
        self._max_tasks = config["MOBILITY_MAX_TASKS"]
        self._keep_finished = config["MOBILITY_KEEP_FINISHED"]
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._metrics = MobilityMetrics(ctx.registry, self._count)
        self._stopping = threading.Event()
        self._runner: threading.Thread | None = None

    def register(self, server: grpc.Server) -> None:
        mobility_pb2_grpc.add_MobilityServicer_to_server(self, server)

    def start(self) -> None:
        self._runner = threading.Thread(target=self._run, daemon=True, name="mobility-runner")
        self._runner.start()

    def close(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            self._runner.join(timeout=5)

    def status(self) -> dict[str, str]:
        return {"tasks_running": str(self._count(RUNNING))}

    def _count(self, state: str) -> int:
        with self._lock:
            return sum(1 for entry in self._entries.values() if entry.state == state)

    # -- the runner ------------------------------------------------------------------
    def _run(self) -> None:
        last = time.monotonic()
        while not self._stopping.wait(TICK_SECONDS):
            now = time.monotonic()
            elapsed, last = now - last, now
            with self._lock:
                running = [e for e in self._entries.values() if e.state == RUNNING]
            for entry in running:
                self._run_slice(entry, elapsed)

    def _run_slice(self, entry: Entry, elapsed: float) -> None:
        # Under the lock: a move pauses the task between two slices, never inside one.
        with self._lock:
            task = entry.task
            if task is None or entry.moving or task.state != RUNNING:
                return
            # Credit beyond one slice is dropped, so a task paused by a move does not race.
            entry.credit = min(entry.credit + elapsed * self._rate, float(SLICE_STEPS))
            ran = task.run(int(entry.credit))
            entry.credit -= ran
            entry.steps_here += ran
            finished = task.state != RUNNING
        self._metrics.steps.inc(ran)
        if finished:
            self._log.info("task_done", task=entry.id, name=entry.name, state=task.state,
                           steps=task.steps, output_length=len(task.output),
                           error=task.error or None)

    # -- the table -------------------------------------------------------------------
    def _admit(self, entry: Entry, context) -> None:
        """Hold `entry` (replacing a forwarding entry of the same task); refuse when full."""
        with self._lock:
            old = self._entries.get(entry.id)
            if old is not None and old.task is not None:
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              f"task {entry.id} is here already ({old.state})")
            active = sum(1 for e in self._entries.values() if e.state in (RUNNING, MOVING))
            if active >= self._max_tasks:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self._ctx.name} runs {active} tasks, its limit "
                              f"(MOBILITY_MAX_TASKS={self._max_tasks})")
            self._entries.pop(entry.id, None)
            self._entries[entry.id] = entry
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        """Keep at most MOBILITY_KEEP_FINISHED finished tasks and forwarding entries."""
        finished = [e for e in self._entries.values() if e.state in (DONE, FAILED, MOVED)]
        for entry in finished[:max(0, len(finished) - self._keep_finished)]:
            del self._entries[entry.id]

    def _entry(self, task_id: str, context) -> Entry:
        entry = self._entries.get(task_id)
        if entry is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no task {task_id[:40]!r} on {self._ctx.name}")
        return entry

    def _info(self, entry: Entry, full: bool = False) -> mobility_pb2.TaskInfo:
        task = entry.task
        info = mobility_pb2.TaskInfo(
            id=entry.id, name=entry.name, host=self._ctx.name, state=entry.state,
            moved_to=entry.moved_to, moved_address=entry.moved_address,
            arrived_from=entry.arrived_from, mode=entry.mode, digest=entry.program.digest,
            args={k: str(v) for k, v in entry.args.items()})
        if task is None:
            info.steps = entry.steps_here
            return info
        info.steps, info.output_length, info.error = task.steps, len(task.output), task.error
        if full:
            info.output.extend(str(value) for value in task.output)
        return info

    # -- the service -----------------------------------------------------------------
    def Ship(self, request, context):
        program, args = self._program(request.program, request.args, context)
        name = self._name(request.name, context)
        entry = Entry(uuid.uuid4().hex[:12], name, program, args, Task(program, args))
        self._admit(entry, context)
        self._log.info("task_shipped", task=entry.id, name=name, digest=program.digest[:12],
                       instructions=len(program.instructions))
        with self._lock:
            return self._info(entry)

    def Tasks(self, request, context):
        with self._lock:
            return mobility_pb2.TasksReply(host=self._ctx.name, tasks=[
                self._info(entry) for entry in self._entries.values()])

    def Task(self, request, context):
        with self._lock:
            return self._info(self._entry(request.id, context), full=True)

    def Move(self, request, context):
        mode = request.mode or "strong"
        if mode not in MODES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"mode {mode[:20]!r} is not one of {', '.join(MODES)}")
        host, _, port = request.to.rpartition(":")  # moving to itself: Arrive refuses it
        if not host or not port.isdigit():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"to {request.to[:80]!r} must be host:port of a host's Mobility "
                          "service")
        with self._lock:
            entry = self._entry(request.id, context)
            if entry.state != RUNNING:
                where = f" to {entry.moved_to}" if entry.moved_to else ""
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"task {entry.id} is {entry.state}{where}: only a running task "
                              "moves")
            entry.moving = True  # paused: the runner skips it from its next slice on
            state = json.dumps(entry.task.to_state()) if mode == "strong" else ""
            steps = entry.task.steps
        arrive = mobility_pb2.ArriveRequest(
            id=entry.id, name=entry.name, program=entry.program.text,
            args={k: str(v) for k, v in entry.args.items()}, state=state,
            from_host=self._ctx.name)
        try:
            there = self._arrive(request.to, arrive)
        except grpc.RpcError as exc:
            with self._lock:
                entry.moving = False  # it runs on here
            self._metrics.moves.labels(mode=mode, outcome="failed").inc()
            self._log.warning("task_not_moved", task=entry.id, to=request.to, mode=mode,
                              code=exc.code().name, problem=exc.details())
            context.abort(exc.code() if exc.code() != grpc.StatusCode.ALREADY_EXISTS
                          else grpc.StatusCode.FAILED_PRECONDITION,
                          f"{request.to} did not take task {entry.id} ({exc.code().name}: "
                          f"{exc.details()}): it runs on here, on {self._ctx.name}")
        with self._lock:
            entry.task, entry.moving = None, False
            entry.steps_here = steps
            entry.moved_to, entry.moved_address = there.host, request.to
            self._entries.move_to_end(entry.id)
            self._forget_oldest()
        self._metrics.moves.labels(mode=mode, outcome="done").inc()
        self._log.info("task_moved", task=entry.id, name=entry.name, to=there.host, mode=mode,
                       steps=steps)
        return there

    def _arrive(self, address: str, request: mobility_pb2.ArriveRequest) -> mobility_pb2.TaskInfo:
        """The destination's answer to `request`; a timed-out one asks it once whether the
        task arrived after all (the answer, not the task, was lost), so that no move leaves
        the task running in two places."""
        stub = mobility_pb2_grpc.MobilityStub(self._ctx.channels.get(address, peer=address))
        try:
            return stub.Arrive(request, timeout=ARRIVE_SECONDS)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            try:
                held = stub.Task(mobility_pb2.TaskRequest(id=request.id), timeout=ARRIVE_SECONDS)
            except grpc.RpcError:
                raise exc from None
            if held.state in (RUNNING, DONE, FAILED) and held.arrived_from == request.from_host:
                return held
            raise

    def Arrive(self, request, context):
        program, args = self._program(request.program, request.args, context)
        name = self._name(request.name, context)
        if not request.id or len(request.id) > NAME_CHARS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a task id is 1-64 characters")
        if request.from_host == self._ctx.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"task {request.id} is on {self._ctx.name} already: a move goes "
                          "to another host")
        if request.state:
            try:
                task = Task.from_state(program, json.loads(request.state), args)
            except (ValueError, LanguageError) as exc:  # JSONDecodeError is a ValueError
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"task {request.id}'s state: {exc}")
            mode = "strong"
        else:
            task, mode = Task(program, args), "weak"
        entry = Entry(request.id, name, program, args, task, mode=mode,
                      arrived_from=request.from_host)
        self._admit(entry, context)
        self._log.info("task_arrived", task=entry.id, name=name, mode=mode,
                       from_host=request.from_host, steps=task.steps)
        with self._lock:
            return self._info(entry)

    @staticmethod
    def _program(text: str, raw_args, context) -> tuple[Program, dict[str, int]]:
        try:
            return parse(text), parse_args(dict(raw_args))
        except LanguageError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    @staticmethod
    def _name(name: str, context) -> str:
        if len(name) > NAME_CHARS or not name.isprintable():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a task name is at most {NAME_CHARS} printable characters")
        return name or "task"
