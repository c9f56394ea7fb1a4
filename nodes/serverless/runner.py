"""python -m nodes.serverless.runner — the serverless lab's gateway and controller (see --help).

`Functions.Deploy` keeps a function (its source and limits) under DATA_DIR, fsync'd, so
deployed functions survive a restart. `Functions.Invoke` (and the HTTP gateway in
OpenFaaS's shape on FN_HTTP_PORT: `POST /function/NAME`) hands the request to the
controller (nodes.serverless.controller), which picks or starts an instance, and carries
out what it decides on the engine, through the engine proxy:

- Create: a container of the lab's image (nodes.serverless.engine), then, once its gRPC
  server answers, `Instance.Load` of the function (a cold start); a prewarmed container
  is created the same way and loaded later (Specialize);
- Resume / Pause: the cgroup freezer (docker unpause / pause);
- Dispatch: `Instance.Run` with the function's timeout as the deadline;
- Remove: the container killed and removed.

Each instance's actions run in order, one at a time (an actor per instance), so a pause
never overtakes the resume before it. Limits are the runner's: a run past its timeout is
answered "timed out after 5 s" and its instance replaced (the code cannot be stopped from
inside); an instance the kernel killed for its memory is answered "exceeded 128 MiB";
a payload over 1 MiB is refused before any instance is touched. An instance whose code
does not load, or that the engine will not start, fails the requests waiting for it
with that reason rather than being started again and again.

Asynchronous invocations (`InvokeAsync`, `POST /async-function/NAME` answering 202 with
an id) are kept on disk before they are answered (nodes.serverless.asyncqueue) and run by
the same path as the synchronous ones. An attempt cut short — the instance died, overran
its timeout or its memory, or the runner itself was killed — is tried again, up to
FN_ASYNC_ATTEMPTS; a function's own error is an outcome. `Result` (`GET /result/ID`)
answers with the one outcome the invocation has.

The runner holds the lab credential (Deploy, Remove and Logs need it); each instance gets
a token of its own. Invoke and List are open, like the HTTP gateway's invocations.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import secrets
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter, Gauge, Histogram

from nodes.common.auth import Credential, service_methods
from nodes.common.config import Setting, port, positive
from nodes.common.durable import AppendFailed, write_atomically
from nodes.common.role import NodeContext, RoleNode, RoleSpec
from nodes.common.server import main
from nodes.rpc import serverless_pb2, serverless_pb2_grpc
from nodes.serverless import controller as ctl
from nodes.serverless.asyncqueue import AsyncQueue
from nodes.serverless.engine import Engine, EngineError, InstanceSpec
from nodes.serverless.gateway import Gateway, InvokeFailed

SERVICE = serverless_pb2.DESCRIPTOR.services_by_name["Functions"]
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_SOURCE_BYTES = 256 * 1024
MAX_FUNCTIONS = 50  # a bounded label set, and a lab's worth
NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
ENGINE_WAIT_SECONDS = 60.0  # for the engine proxy, at the runner's start
READY_SECONDS = 60.0  # a container's gRPC server answers within this, or it failed
# The first connection attempts reach a container whose server is not up yet: retry every
# 50 ms rather than after gRPC's default second, which alone was most of a cold start.
INSTANCE_CHANNEL = [("grpc.initial_reconnect_backoff_ms", 50),
                    ("grpc.min_reconnect_backoff_ms", 50),
                    ("grpc.max_reconnect_backoff_ms", 200)]
RECONCILE_TICKS = 2  # the engine's listing is compared with the controller's every 2 s
LOG_LINES_KEPT = 1000  # per function
ASYNC_RUNNING = 16  # asynchronous invocations running at once, across functions
ASYNC_BACKOFF_SECONDS = 1.0  # after "too many requests", before an invocation waits again
STATES = ("starting", "idle", "busy", "paused")
INIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


@dataclass
class Deployed:
    spec: serverless_pb2.FunctionSpec
    # Plain counts for List (the Prometheus counters say the same, for the dashboard).
    cold_starts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    invocations: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    logs: deque = field(default_factory=lambda: deque(maxlen=LOG_LINES_KEPT))


@dataclass
class Pending:
    """A synchronous call waiting for its answer (the controller keeps its queue time)."""

    id: str
    data: str
    done: threading.Event = field(default_factory=threading.Event)
    reply: serverless_pb2.InvokeReply | None = None
    failure: InvokeFailed | None = None

    def answer(self, reply: serverless_pb2.InvokeReply) -> None:
        self.reply = reply
        self.done.set()

    def fail(self, failure: InvokeFailed) -> None:
        self.failure = failure
        self.done.set()


@dataclass
class Handle:
    """The runner's side of one instance: its token, its channel, its queue of actions."""

    id: str
    token: Credential
    channel: grpc.Channel | None = None
    function: str = ""
    actions: deque = field(default_factory=deque)
    busy: bool = False


class RunnerNode(RoleNode, serverless_pb2_grpc.FunctionsServicer):
    service_names = (SERVICE.full_name,)

    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        self._ctx = ctx
        self.defaults = serverless_pb2.FunctionSpec(
            memory_bytes=config["FN_MEMORY_BYTES"], timeout_seconds=config["FN_TIMEOUT_SECONDS"],
            max_instances=config["FN_MAX_INSTANCES"],
            keep_alive_seconds=config["FN_KEEP_ALIVE_SECONDS"],
            queue_limit=config["FN_QUEUE_LIMIT"])
        self.dir = ctx.data_dir / "functions"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the controller, the functions, the pending, the handles
        self.controller = ctl.Controller(clock=time.monotonic, prewarm=config["FN_PREWARM"],
                                         id_prefix=f"fn-{secrets.token_hex(2)}")
        self.functions: dict[str, Deployed] = {}
        self.pending: dict[str, Pending] = {}
        self.handles: dict[str, Handle] = {}
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="fn-action")
        self._stopping = threading.Event()
        # Asynchronous invocations: on disk before they are answered, run by _run_queue.
        self.queue = AsyncQueue(ctx.data_dir / "async.log",
                                max_attempts=config["FN_ASYNC_ATTEMPTS"])
        self._queue_lock = threading.Lock()
        self._queued = threading.Event()
        self._async_pool = ThreadPoolExecutor(max_workers=ASYNC_RUNNING,
                                              thread_name_prefix="fn-async")
        self._gateway: Gateway | None = None
        self._metrics(ctx)
        self._engine = self._start_engine()
        for path in sorted(self.dir.glob("*.json")):  # deployed before a restart
            self._deploy(json_format.Parse(path.read_text(), serverless_pb2.FunctionSpec()),
                         persist=False)

    def _metrics(self, ctx: NodeContext) -> None:
        registry = ctx.registry
        self.m_invocations = Counter("distlab_serverless_invocations_total",
                                     "Invocations by function and outcome.",
                                     ["function", "outcome"], registry=registry)
        self.m_starts = Counter("distlab_serverless_starts_total",
                                "How an instance came to be free for a request, by path "
                                "(warm, paused, prewarm, cold).", ["function", "path"],
                                registry=registry)
        self.m_init = Histogram("distlab_serverless_init_seconds",
                                "Time from an instance's start to ready, by path.", ["path"],
                                buckets=INIT_BUCKETS, registry=registry)
        self.m_run = Histogram("distlab_serverless_run_seconds", "Time a function ran.",
                               ["function"], buckets=RUN_BUCKETS, registry=registry)
        self.m_wait = Histogram("distlab_serverless_queue_wait_seconds",
                                "Time a request waited for an instance.", ["function"],
                                buckets=RUN_BUCKETS, registry=registry)
        self.m_instances = Gauge("distlab_serverless_instances",
                                 "Instances by state (a prewarmed one has function '').",
                                 ["function", "state"], registry=registry)

    # -- the node contract ------------------------------------------------------------------

    def register(self, server: grpc.Server) -> None:
        serverless_pb2_grpc.add_FunctionsServicer_to_server(self, server)

    def _start_engine(self) -> Engine:
        """The engine, its leftovers gone: before the server answers, so that no request
        finds the runner without its engine or its functions."""
        config = self._ctx.config
        deadline = time.monotonic() + ENGINE_WAIT_SECONDS
        while True:
            try:
                engine = Engine(config["FN_ENGINE"], self._ctx.credential,
                                image=config["FN_IMAGE"], network=config["FN_NETWORK"],
                                lab=config["FN_LAB"], storage=config["FN_STORAGE"])
                for leftover in engine.states():
                    engine.remove(leftover)  # a runner before us made them; nobody owns them
                return engine
            except EngineError as exc:
                if time.monotonic() > deadline:
                    raise
                self._ctx.log.warning("fn_engine_waiting", problem=str(exc))
                time.sleep(1.0)

    def serving(self, grpc_port: int) -> None:
        config = self._ctx.config
        self._gateway = Gateway(self, config["FN_HTTP_PORT"], MAX_PAYLOAD_BYTES)
        threading.Thread(target=self._ticks, name="fn-tick", daemon=True).start()
        threading.Thread(target=self._run_queue, name="fn-queue", daemon=True).start()
        self._ctx.log.info("runner_started", functions=len(self.functions),
                           http_port=self._gateway.port)

    def close(self) -> None:
        self._stopping.set()
        if self._gateway is not None:
            self._gateway.close()
        with self._lock:
            instances = list(self.controller.instances)
        for instance in instances:  # scale to zero on the way out: nobody else would
            self._remove(instance)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._async_pool.shutdown(wait=False, cancel_futures=True)
        with self._queue_lock:
            self.queue.close()

    def status(self) -> dict[str, str]:
        with self._lock:
            pool = sum(1 for i in self.controller.instances.values()
                       if i.function is None and i.state is ctl.State.IDLE)
            busy = [i.id for i in self.controller.instances.values()
                    if i.state is ctl.State.BUSY]
            return {"functions": str(len(self.functions)),
                    "instances": str(len(self.controller.instances)),
                    "pool": str(pool), "waiting": str(len(self.pending)),
                    "busy": ",".join(sorted(busy))}

    def _ticks(self) -> None:
        ticks = 0
        while not self._stopping.wait(1.0):
            ticks += 1
            if ticks % RECONCILE_TICKS == 0:
                self._reconcile()
            with self._lock:
                actions = self.controller.tick()
                self._count_instances()
            self._apply(actions)

    def _reconcile(self) -> None:
        """Instances whose container died while idle (killed from outside, the kernel's
        OOM killer) are failed now, not found dead by the next request."""
        try:
            states = self._engine.states()
        except EngineError as exc:
            self._ctx.log.warning("fn_reconcile_failed", problem=str(exc))
            return
        actions: list[ctl.Action] = []
        with self._lock:
            for instance in list(self.controller.instances.values()):
                handle = self.handles.get(instance.id)
                created = handle is not None and handle.channel is not None
                if created and instance.state in (ctl.State.IDLE, ctl.State.PAUSED) \
                        and states.get(instance.id) not in ("running", "paused"):
                    self._ctx.log.warning("fn_instance_gone", instance=instance.id,
                                          state=states.get(instance.id, "missing"))
                    actions += self.controller.failed(instance.id)[1]
        self._apply(actions)

    def _count_instances(self) -> None:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for instance in self.controller.instances.values():
            counts[(instance.function or "", instance.state.value)] += 1
        for name in [*self.functions, ""]:
            for state in STATES:
                self.m_instances.labels(function=name, state=state).set(counts[(name, state)])

    # -- functions --------------------------------------------------------------------------

    def Deploy(self, request, context):
        spec = request.function
        problem = _check_function(spec)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        with self._lock:
            if spec.name not in self.functions and len(self.functions) >= MAX_FUNCTIONS:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{MAX_FUNCTIONS} functions are deployed already; remove one")
        try:
            deployed = self._deploy(spec, persist=True)
        except ctl.ControllerError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._ctx.log.info("fn_deployed", function=spec.name)
        return self._info(deployed, with_source=False)

    def _deploy(self, spec: serverless_pb2.FunctionSpec, *, persist: bool) -> Deployed:
        full = serverless_pb2.FunctionSpec()
        full.CopyFrom(self.defaults)
        full.MergeFrom(spec)  # what the caller set, over the defaults
        config = ctl.FunctionConfig(full.name, max_instances=full.max_instances,
                                    min_instances=full.min_instances,
                                    keep_alive=full.keep_alive_seconds,
                                    pause_after=min(self._ctx.config["FN_PAUSE_AFTER_SECONDS"],
                                                    full.keep_alive_seconds),
                                    queue_limit=full.queue_limit)
        if persist:
            write_atomically(self.dir / f"{full.name}.json",
                             json_format.MessageToJson(full).encode())
        with self._lock:
            old = self.functions.get(full.name)
            replaced = old is not None and old.spec.source != full.source
            removals = self.controller.undeploy(full.name) if replaced else []
            actions = self.controller.deploy(config)
            deployed = Deployed(full) if old is None else old
            deployed.spec = full
            self.functions[full.name] = deployed
        self._apply(removals + actions)  # new code: the old instances go
        return deployed

    def Remove(self, request, context):
        with self._lock:
            if request.name not in self.functions:
                return serverless_pb2.RemoveReply(existed=False)
            actions = self.controller.undeploy(request.name)
            del self.functions[request.name]
            for state in STATES:  # no stale series of a function that is gone
                with contextlib.suppress(KeyError):
                    self.m_instances.remove(request.name, state)
        (self.dir / f"{request.name}.json").unlink(missing_ok=True)
        self._apply(actions)
        self._ctx.log.info("fn_removed", function=request.name)
        return serverless_pb2.RemoveReply(existed=True)

    def List(self, request, context):
        return serverless_pb2.ListReply(functions=self.list_functions())

    def list_functions(self) -> list[serverless_pb2.FunctionInfo]:
        with self._lock:
            return [self._info(d, with_source=False) for _, d in sorted(self.functions.items())]

    def _info(self, deployed: Deployed, *, with_source: bool) -> serverless_pb2.FunctionInfo:
        spec = serverless_pb2.FunctionSpec()
        spec.CopyFrom(deployed.spec)
        if not with_source:
            spec.source = ""
        states: dict[str, int] = defaultdict(int)
        for instance in self.controller.instances.values():
            if instance.function == spec.name:
                states[instance.state.value] += 1
        waiting = self.controller.waiting(spec.name) if spec.name in self.functions else 0
        return serverless_pb2.FunctionInfo(function=spec, instances=states,
                                           cold_starts=deployed.cold_starts,
                                           invocations=deployed.invocations, waiting=waiting)

    def Logs(self, request, context):
        with self._lock:
            deployed = self.functions.get(request.name)
            if deployed is None:
                context.abort(grpc.StatusCode.NOT_FOUND, self._unknown(request.name))
            lines = list(deployed.logs)[-(request.limit or 100):]
        return serverless_pb2.LogsReply(lines=lines)

    def _unknown(self, name: str) -> str:
        known = ", ".join(sorted(self.functions)) or "none deployed"
        return f"no function {name!r} (functions: {known})"

    # -- invocations ------------------------------------------------------------------------

    def Invoke(self, request, context):
        try:
            return self.invoke(request.name, request.data)
        except InvokeFailed as exc:
            context.abort(exc.code, str(exc))

    def invoke(self, name: str, data: str, *, request_id: str = "") -> serverless_pb2.InvokeReply:
        """Run `name` on `data` (JSON text) and return its answer, or raise InvokeFailed."""
        _check_payload(data)
        pending = Pending(request_id or uuid.uuid4().hex, data)
        with self._lock:
            deployed = self.functions.get(name)
            if deployed is None:
                raise InvokeFailed(grpc.StatusCode.NOT_FOUND, "refused", self._unknown(name))
            self.pending[pending.id] = pending
            actions = self.controller.invoke(pending.id, name)
        self._apply(actions)
        # Bounded: a request waits for an instance to start (READY_SECONDS) and then runs
        # for at most its timeout; the dispatch answers before either passes.
        if not pending.done.wait(READY_SECONDS * 2 + deployed.spec.timeout_seconds):
            pending.fail(InvokeFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "timeout",
                                      f"no instance of {name} answered in time"))
        with self._lock:
            self.pending.pop(pending.id, None)
            outcome = pending.failure.outcome if pending.failure else (
                "ok" if pending.reply.ok else "error")
            deployed.invocations[outcome] += 1
        self.m_invocations.labels(function=name, outcome=outcome).inc()
        if pending.failure is not None:
            raise pending.failure
        return pending.reply

    # -- asynchronous invocations -----------------------------------------------------------

    def InvokeAsync(self, request, context):
        try:
            return serverless_pb2.InvokeAsyncReply(id=self.invoke_async(request.name,
                                                                        request.data))
        except InvokeFailed as exc:
            context.abort(exc.code, str(exc))

    def invoke_async(self, name: str, data: str) -> str:
        """Accept an invocation for later; its id, once it is on disk."""
        _check_payload(data)
        with self._lock:
            if name not in self.functions:
                raise InvokeFailed(grpc.StatusCode.NOT_FOUND, "refused", self._unknown(name))
        invocation = uuid.uuid4().hex
        try:
            with self._queue_lock:
                self.queue.accept(invocation, name, data)
        except AppendFailed as exc:
            raise InvokeFailed(grpc.StatusCode.UNAVAILABLE, "refused",
                               f"could not keep the invocation: {exc}") from None
        self._queued.set()
        return invocation

    def Result(self, request, context):
        reply = self.result(request.id)
        if reply is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no asynchronous invocation "
                                                     f"{request.id!r} (or it was long ago)")
        return reply

    def result(self, invocation_id: str) -> serverless_pb2.ResultReply | None:
        with self._queue_lock:
            invocation = self.queue.result(invocation_id)
        return None if invocation is None else _result_reply(invocation)

    def _run_queue(self) -> None:
        """Start every waiting invocation (at most ASYNC_RUNNING at once), as they come."""
        running: set[str] = set()
        done_lock = threading.Lock()
        while not self._stopping.is_set():
            self._queued.wait(1.0)
            self._queued.clear()
            with self._queue_lock:
                waiting = self.queue.pending()
            for invocation in waiting:
                with done_lock:
                    if invocation.id in running or len(running) >= ASYNC_RUNNING:
                        continue
                    running.add(invocation.id)

                def attempt(invocation=invocation) -> None:
                    try:
                        self._attempt(invocation)
                    except Exception as exc:  # noqa: BLE001 - a full disk: it waits, logged
                        self._ctx.log.error("fn_async_failed", invocation=invocation.id,
                                            problem=f"{type(exc).__name__}: {exc}")
                        self._stopping.wait(ASYNC_BACKOFF_SECONDS)
                    finally:
                        with done_lock:
                            running.discard(invocation.id)
                        self._queued.set()
                self._async_pool.submit(attempt)

    def _attempt(self, invocation) -> None:
        with self._queue_lock:
            attempt = self.queue.started(invocation.id).attempts
        with self._lock:
            known = invocation.function in self.functions
        if not known:
            with self._queue_lock:
                self.queue.finished(invocation.id, ok=False,
                                    error=f"function {invocation.function} was removed")
            return
        try:
            reply = self.invoke(invocation.function, invocation.event,
                                request_id=f"{invocation.id}.{attempt}")
        except InvokeFailed as exc:
            if exc.outcome == "refused":  # it never ran: wait for room, as a queue does
                self._stopping.wait(ASYNC_BACKOFF_SECONDS)
            with self._queue_lock:
                self.queue.attempt_failed(invocation.id, str(exc))
            return
        with self._queue_lock:
            self.queue.finished(invocation.id, ok=reply.ok, result=reply.result,
                                error=reply.error)

    # -- carrying out the controller's actions ----------------------------------------------

    def _apply(self, actions: list[ctl.Action]) -> None:
        for action in actions:
            if isinstance(action, ctl.Refuse):
                self._refuse(action)
            elif isinstance(action, ctl.Remove):
                self._enqueue(action.instance, lambda a=action: self._remove(a.instance))
            else:
                self._enqueue(action.instance, lambda a=action: self._carry_out(a))

    def _refuse(self, action: ctl.Refuse) -> None:
        with self._lock:
            pending = self.pending.get(action.request)
        if pending is not None:
            code = (grpc.StatusCode.RESOURCE_EXHAUSTED if action.reason.startswith("too many")
                    else grpc.StatusCode.UNAVAILABLE)
            pending.fail(InvokeFailed(code, "refused", action.reason))

    def _enqueue(self, instance: str, work: Callable[[], None]) -> None:
        """Run `work` after every action of `instance` before it: one at a time, in order."""
        with self._lock:
            handle = self.handles.setdefault(
                instance, Handle(instance, Credential.generate()))
            handle.actions.append(work)
            if handle.busy:
                return
            handle.busy = True
        self._pool.submit(self._drain, handle)

    def _drain(self, handle: Handle) -> None:
        while True:
            with self._lock:
                if not handle.actions:
                    handle.busy = False
                    return
                work = handle.actions.popleft()
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - one instance's fault is not the runner's
                self._ctx.log.error("fn_action_failed", instance=handle.id,
                                    problem=f"{type(exc).__name__}: {exc}")

    def _carry_out(self, action: ctl.Action) -> None:
        if isinstance(action, ctl.Dispatch):
            return self._dispatch(action)
        if isinstance(action, ctl.Pause):
            try:
                self._engine.pause(action.instance)
            except EngineError as exc:  # it stays running: a warm start, not a failure
                self._ctx.log.warning("fn_pause_failed", instance=action.instance,
                                      problem=str(exc))
            return None
        started = time.perf_counter()
        try:
            if isinstance(action, ctl.Create):
                self._create(action)
                path = ctl.COLD if action.function else ctl.PREWARM
            elif isinstance(action, ctl.Specialize):
                self._load(action.instance, action.function)
                path = ctl.PREWARM
            else:  # Resume
                self._engine.unpause(action.instance)
                path = ctl.PAUSED
        except (EngineError, grpc.RpcError) as exc:
            return self._start_failed(action, exc)
        self.m_init.labels(path=path).observe(time.perf_counter() - started)
        with self._lock:
            if action.instance not in self.controller.instances:
                return None  # removed meanwhile (its function went)
            actions = self.controller.ready(action.instance)
        self._apply(actions)
        return None

    def _create(self, action: ctl.Create) -> None:
        with self._lock:
            handle = self.handles[action.instance]
            spec = self.functions[action.function].spec if action.function else self.defaults
        (_, token), = handle.token.metadata()
        name = self._engine.start(InstanceSpec(
            action.instance, action.function or "", token, spec.memory_bytes,
            int(self._ctx.config["FN_CPUS"] * 1e9), self._ctx.config["FN_PIDS"]))
        handle.channel = grpc.insecure_channel(f"{name}:50051", options=INSTANCE_CHANNEL)
        _wait_serving(handle.channel, READY_SECONDS)
        if action.function:
            self._load(action.instance, action.function)

    def _load(self, instance: str, function: str) -> None:
        with self._lock:
            handle = self.handles[instance]
            source = self.functions[function].spec.source
        serverless_pb2_grpc.InstanceStub(handle.channel).Load(
            serverless_pb2.LoadRequest(name=function, source=source),
            metadata=handle.token.metadata(), timeout=READY_SECONDS)
        handle.function = function

    def _start_failed(self, action: ctl.Action, exc: Exception) -> None:
        """The instance did not come up: it goes, and so do the requests waiting for it."""
        reason = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        function = getattr(action, "function", None)
        self._ctx.log.warning("fn_start_failed", instance=action.instance, function=function,
                              problem=reason)
        with self._lock:
            if action.instance not in self.controller.instances:
                return
            _, actions = self.controller.failed(action.instance)
            if function in self.functions:
                actions = self.controller.drain(function, f"{function} could not start: "
                                                          f"{reason}") + actions
        self._apply(actions)

    def _dispatch(self, action: ctl.Dispatch) -> None:
        with self._lock:
            pending = self.pending.get(action.request)
            handle = self.handles[action.instance]
            deployed = self.functions.get(handle.function)
        if pending is None or deployed is None:  # the caller gave up, or the function went
            with self._lock:
                actions = self.controller.done(action.instance)
            return self._apply(actions)
        name, spec = deployed.spec.name, deployed.spec
        deployed.cold_starts[action.path] += 1
        self.m_starts.labels(function=name, path=action.path).inc()
        self.m_wait.labels(function=name).observe(action.waited)
        started = time.perf_counter()
        try:
            reply = serverless_pb2_grpc.InstanceStub(handle.channel).Run(
                serverless_pb2.RunRequest(id=pending.id, data=pending.data,
                                          timeout_seconds=spec.timeout_seconds),
                metadata=handle.token.metadata(), timeout=spec.timeout_seconds)
        except grpc.RpcError as exc:
            return self._run_failed(action, pending, spec, exc)
        seconds = time.perf_counter() - started
        self.m_run.labels(function=name).observe(seconds)
        with self._lock:
            for line in reply.logs:
                deployed.logs.append(f"{pending.id[:8]} {line}")
            if not reply.ok:
                deployed.logs.append(f"{pending.id[:8]} error: {reply.error}")
            actions = self.controller.done(action.instance)
        pending.answer(serverless_pb2.InvokeReply(
            id=pending.id, ok=reply.ok, result=reply.result, error=reply.error, logs=reply.logs,
            path=action.path, instance=action.instance, queued_seconds=action.waited,
            run_seconds=seconds))
        self._apply(actions)
        return None

    def _run_failed(self, action: ctl.Dispatch, pending: Pending,
                    spec: serverless_pb2.FunctionSpec, exc: grpc.RpcError) -> None:
        """Past its timeout, out of memory, or dead: the instance goes, the caller hears why."""
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            failure = InvokeFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "timeout",
                                   f"{spec.name} timed out after {spec.timeout_seconds:g} s")
        elif self._engine.oom_killed(action.instance):
            failure = InvokeFailed(grpc.StatusCode.ABORTED, "memory",
                                   f"{spec.name} exceeded "
                                   f"{spec.memory_bytes // (1024 * 1024)} MiB")
        else:
            failure = InvokeFailed(grpc.StatusCode.ABORTED, "died",
                                   f"the instance running {spec.name} died: {exc.details()}")
        with self._lock:
            deployed = self.functions.get(spec.name)
            if deployed is not None:
                deployed.logs.append(f"{pending.id[:8]} {failure}")
            _, actions = self.controller.failed(action.instance)
        pending.fail(failure)
        self._apply(actions)

    def _remove(self, instance: str) -> None:
        with self._lock:
            handle = self.handles.pop(instance, None)
        if handle is not None and handle.channel is not None:
            handle.channel.close()
        try:
            self._engine.remove(instance)
        except EngineError as exc:
            self._ctx.log.warning("fn_remove_failed", instance=instance, problem=str(exc))


def _check_payload(data: str) -> None:
    """Refuse a payload over the limit or not JSON, before any instance is touched."""
    size = len(data.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise InvokeFailed(grpc.StatusCode.INVALID_ARGUMENT, "refused",
                           f"a payload of {size} bytes is over the "
                           f"{MAX_PAYLOAD_BYTES // 1024} KiB limit")
    try:
        json.loads(data or "null")
    except ValueError as exc:
        raise InvokeFailed(grpc.StatusCode.INVALID_ARGUMENT, "refused",
                           f"the payload is not JSON: {exc}") from None


def _result_reply(invocation) -> serverless_pb2.ResultReply:
    return serverless_pb2.ResultReply(
        id=invocation.id, function=invocation.function, done=invocation.done, ok=invocation.ok,
        result=invocation.result, error=invocation.error, attempts=invocation.attempts)


def _wait_serving(channel: grpc.Channel, seconds: float) -> None:
    """Until the instance's gRPC server says SERVING (a container's start to ready)."""
    deadline = time.monotonic() + seconds
    stub = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0,
                          wait_for_ready=True).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def _check_function(spec: serverless_pb2.FunctionSpec) -> str:
    """What is wrong with a function to deploy ("" : nothing), without running its code."""
    if not NAME.match(spec.name):
        return (f"function name {spec.name!r}: lowercase letters, digits and '-', "
                f"starting with a letter, at most 40")
    if len(spec.source.encode()) > MAX_SOURCE_BYTES:
        return f"the source is over {MAX_SOURCE_BYTES // 1024} KiB"
    try:
        tree = ast.parse(spec.source, f"<function {spec.name}>")
    except SyntaxError as exc:
        return f"function {spec.name} does not compile: {exc.msg} (line {exc.lineno})"
    if not any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "handle"
               for node in tree.body):
        return f"function {spec.name} has no handle(event, context) at its top level"
    if spec.timeout_seconds < 0 or spec.keep_alive_seconds < 0:
        return "timeout and keep-alive are never negative"
    return ""


SPEC = RoleSpec(
    name="serverless.runner",
    summary="the serverless gateway (gRPC Functions, HTTP /function/NAME) and the controller "
            "that runs each function in instances it starts, pauses and removes on the "
            "engine through the engine proxy.",
    settings=(
        Setting("FN_ENGINE", str, "tcp://engine-proxy:2375", "the engine proxy"),
        Setting("FN_IMAGE", str, "distlab/node:dev", "the image instances run"),
        Setting("FN_NETWORK", str, "distlab-functions", "the network instances join"),
        Setting("FN_LAB", str, "serverless", "the distlab.lab label instances carry"),
        Setting("FN_STORAGE", str, "fn-storage:50051", "the lab's storage, for functions"),
        Setting("FN_HTTP_PORT", int, 8080, "port of the HTTP gateway", port),
        Setting("FN_MEMORY_BYTES", int, 128 * 1024 * 1024, "default memory of an instance",
                positive),
        Setting("FN_TIMEOUT_SECONDS", float, 5.0, "default timeout of a run", positive),
        Setting("FN_MAX_INSTANCES", int, 4, "default max instances of a function", positive),
        Setting("FN_KEEP_ALIVE_SECONDS", float, 60.0, "default keep-alive of an idle instance",
                positive),
        Setting("FN_PAUSE_AFTER_SECONDS", float, 5.0, "an idle instance is paused after this",
                positive),
        Setting("FN_QUEUE_LIMIT", int, 100, "requests that may wait beyond the instances "
                "starting for them", positive),
        Setting("FN_PREWARM", int, 1, "generic containers kept ready to specialize"),
        Setting("FN_ASYNC_ATTEMPTS", int, 3, "attempts of an asynchronous invocation whose "
                "instance dies or overruns", positive),
        # A core: at half of one, the Python start alone made a cold start 1.5 s.
        Setting("FN_CPUS", float, 1.0, "CPU limit of an instance (cores)", positive),
        Setting("FN_PIDS", int, 64, "pids limit of an instance", positive),
    ),
    build=RunnerNode,
    protected=service_methods(SERVICE, "Deploy", "Remove", "Logs"),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
