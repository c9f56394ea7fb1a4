"""gRPC interceptors that give every RPC, served or sent, metrics, limits and fault rules.

`ServerInterceptor` wraps every handler of a node's server: it counts and
times the call, refuses it RESOURCE_EXHAUSTED when the node already works on
MAX_CONCURRENT_RPCS calls, or one method already holds all but
MAX_CONCURRENT_RPCS_RESERVED of them (`Admission`; health, Control and
reflection are never refused; the refusal's trailer REFUSED_METADATA says
the call never ran), refuses an undecodable request body INVALID_ARGUMENT
(the caller's fault, logged without a traceback), applies inbound fault
rules, and turns an unexpected exception into INTERNAL with a one-line
message (never a stack trace to the caller). `ServerCallMeter` is the part of that
which does no waiting, shared with the asyncio server's interceptor
(nodes.common.aio). `ClientInterceptor`
does the same for one outgoing channel to one peer, adds a default deadline,
says who is calling (`x-distlab-node`) and presents the lab credential when
it has one (nodes.common.auth).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from nodes.common.auth import CallDetails, Credential
from nodes.common.faults import Decision, FaultRules
from nodes.common.logs import EventLog
from nodes.common.metrics import NodeMetrics

CALLER_METADATA_KEY = "x-distlab-node"
# Trailing metadata of a call refused before its handler ran (admission): it did nothing,
# so a proxy (the switch) may send it to another backend whatever the method.
REFUSED_METADATA = ("x-distlab-refused", "overload")
# Trailing metadata of a call a machine refused, unrun, because what it served has moved
# (a migrated vm, fenced): its value is the new address. The switch holds such a call until
# it is re-pointed and sends it there.
MOVED_METADATA_KEY = "x-distlab-moved-to"
# The longest a dropped call is held. Also what a caller without a deadline gets: gRPC
# reports "no deadline" as a time_remaining of about 1e10 s, not None, and waiting that
# long overflows the platform's time_t.
DROP_WAIT_CAP_SECONDS = 300.0
# A handler's kinds: (attribute of grpc.RpcMethodHandler, streams requests, streams responses).
KINDS = (("unary_unary", False, False), ("unary_stream", False, True),
         ("stream_unary", True, False), ("stream_stream", True, True))


def caller_of(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_METADATA_KEY:
            return value
    return ""


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


class Admission:
    """How many calls of the role's services the node works on at once; one more is refused.

    Refusing at once, rather than queueing, keeps an overloaded node's answers
    fast (a caller or the switch can go elsewhere) and its memory flat. Calls
    of `unbounded_services` (health, Control, reflection) are neither counted
    nor refused: a node that is busy must still say it is alive and still obey
    its operator.

    The last `reserved` places are never taken by calls of one method alone: a
    flood of one kind of call (slow Work, say) fills at most `limit - reserved`,
    so the cheap calls beside it (Balance) are still answered, not refused.
    """

    def __init__(self, limit: int, unbounded_services: tuple[str, ...],
                 reserved: int = 0) -> None:
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        if not 0 <= reserved < limit:
            raise ValueError("the reserved places must be at least 0 and fewer than the limit")
        self.limit = limit
        self.reserved = reserved
        self._unbounded = tuple(f"/{service}/" for service in unbounded_services)
        self._working = 0
        self._by_method: dict[str, int] = {}
        self._lock = threading.Lock()

    def bounds(self, method: str) -> bool:
        return not method.startswith(self._unbounded)

    def try_enter(self, method: str) -> bool:
        with self._lock:
            mine = self._by_method.get(method, 0)
            if self._working >= self.limit or mine >= self.limit - self.reserved:
                return False
            self._working += 1
            self._by_method[method] = mine + 1
            return True

    def leave(self, method: str) -> None:
        with self._lock:
            self._working -= 1
            left = self._by_method.pop(method) - 1
            if left:  # only methods in progress are kept: the map stays as small as they are
                self._by_method[method] = left


def default_reserved(limit: int) -> int:
    """MAX_CONCURRENT_RPCS_RESERVED when it is not set: an eighth of the limit, at least one
    place once there are two (a node working on one call at a time has none to spare)."""
    return 0 if limit < 2 else max(1, limit // 8)


@dataclass(frozen=True)
class Undecodable:
    """What a tolerant deserializer hands the handler instead of a message it could not parse."""

    message_type: str
    error: str


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning `Undecodable` instead of raising.

    grpc turns a deserializer's exception into INTERNAL (UNKNOWN on grpc.aio)
    and logs a traceback; the interceptor answers INVALID_ARGUMENT instead.
    """
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    message_type = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name",
                           "request message")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - whatever the bytes were, they are the caller's
            return Undecodable(message_type, f"{type(exc).__name__}: {exc}")

    return deserialize


class ServerCallMeter:
    """What every server interceptor does around a call, waiting aside.

    It times and counts the call, decides which inbound fault rule acts on it,
    and reports a handler's bug. The blocking `ServerInterceptor` and the
    asyncio one (nodes.common.aio) share it, so both record the same metrics
    and apply the same rules.
    """

    def __init__(self, metrics: NodeMetrics, rules: FaultRules, log: EventLog,
                 admission: Admission) -> None:
        self._metrics = metrics
        self._rules = rules
        self._log = log
        self.admission = admission
        metrics.server_concurrency_limit.set(admission.limit)

    def begin(self) -> float:
        self._metrics.server_in_flight.inc()
        return time.perf_counter()

    def overloaded(self, method: str) -> str:
        """Count a call refused for overload; return what its caller is told."""
        self._metrics.server_overloaded.labels(method=method).inc()
        limit, reserved = self.admission.limit, self.admission.reserved
        return (f"overloaded: this node works on at most {limit} calls at once "
                f"(its MAX_CONCURRENT_RPCS), at most {limit - reserved} of one method "
                f"(MAX_CONCURRENT_RPCS_RESERVED={reserved}); try again later or another node")

    def undecodable(self, method: str, request: Undecodable) -> str:
        """Count and log (one line, no traceback) a request body that did not decode; return
        what its caller is told."""
        self._metrics.server_undecodable.labels(method=method).inc()
        self._log.info("rpc_request_undecodable", method=method, error=request.error)
        return f"the request body is not a valid {request.message_type}"

    def fault(self, method: str, context: Any) -> Decision | None:
        """The inbound fault rule acting on this call, if any; counted as injected."""
        decision = self._rules.decide(method, caller_of(context), "inbound")
        if decision is not None:
            self._metrics.fault_injected.labels(method=method, action=decision.action).inc()
        return decision

    def bug(self, method: str, exc: BaseException) -> str:
        """Log a handler's unexpected exception; return what its caller is told instead."""
        self._log.error("rpc_internal_error", method=method, error=repr(exc))
        return f"internal error: {type(exc).__name__}"

    def record(self, method: str, started: float, code: grpc.StatusCode) -> None:
        self._metrics.server_in_flight.dec()
        self._metrics.server_handled.labels(method=method, code=code.name).inc()
        self._metrics.server_latency.labels(method=method).observe(time.perf_counter() - started)


def drop_seconds(remaining: float | None) -> float:
    """How long a dropped call is held: past the caller's deadline, so it sees that deadline;
    at most DROP_WAIT_CAP_SECONDS (then UNAVAILABLE), however far off or absent it is."""
    if remaining is None or not remaining + 1 < DROP_WAIT_CAP_SECONDS:  # NaN included
        return DROP_WAIT_CAP_SECONDS
    return max(0.0, remaining + 1)


class ServerInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: NodeMetrics, rules: FaultRules, log: EventLog,
                 admission: Admission) -> None:
        self.meter = ServerCallMeter(metrics, rules, log, admission)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        handler = handler._replace(request_deserializer=tolerant(handler.request_deserializer))
        for kind, streams_in, streams_out in KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: self.wrap(behavior, method, streams_in,
                                                           streams_out)})
        return handler

    def wrap(self, behavior: Callable, method: str, streams_in: bool,
             streams_out: bool) -> Callable:
        """`behavior` (a plain function or generator handler) metered, bounded, checked and
        fault-injected."""
        bounded = self.meter.admission.bounds(method)

        def unary_result(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(method, context, request, bounded)
            requests = RequestStream(request, method, context, self.meter) if streams_in else None
            try:
                result = behavior(requests or request, context)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and mapped
                self._fail(method, context, started, exc, requests)
            finally:
                if bounded:
                    self.meter.admission.leave(method)
            self._end(method, context, started)
            return result

        def streamed_result(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(method, context, request, bounded)
            requests = RequestStream(request, method, context, self.meter) if streams_in else None
            try:
                yield from behavior(requests or request, context)
            except Exception as exc:  # noqa: BLE001
                self._fail(method, context, started, exc, requests)
            finally:  # also when the caller goes away and the generator is closed
                if bounded:
                    self.meter.admission.leave(method)
            self._end(method, context, started)

        return streamed_result if streams_out else unary_result

    def _begin(self, method: str, context: grpc.ServicerContext, request: Any,
               bounded: bool) -> float:
        """Start metering the call; refuse it (raises) when undecodable or over the limit.

        Once this returns, a bounded call holds one place of the admission limit.
        """
        started = self.meter.begin()
        if isinstance(request, Undecodable):
            message = self.meter.undecodable(method, request)
            self.meter.record(method, started, grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        if bounded and not self.meter.admission.try_enter(method):
            message = self.meter.overloaded(method)
            self.meter.record(method, started, grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_trailing_metadata((REFUSED_METADATA,))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        decision = self.meter.fault(method, context)
        if decision is not None:
            try:
                self._inject(context, decision)
            except Exception as exc:
                if bounded:
                    self.meter.admission.leave(method)
                if context.code() is None:  # not the injected status: a bug, told as INTERNAL
                    self.meter.record(method, started, grpc.StatusCode.INTERNAL)
                    context.abort(grpc.StatusCode.INTERNAL, self.meter.bug(method, exc))
                self.meter.record(method, started, context.code())
                raise
        return started

    def _inject(self, context: grpc.ServicerContext, decision: Decision) -> None:
        if decision.action == "delay":
            _wait_while_active(context, decision.delay_seconds)
            return
        if decision.action == "error":
            context.abort(decision.status_code, f"injected by fault rule {decision.rule_id}")
        _wait_while_active(context, drop_seconds(context.time_remaining()))
        context.abort(grpc.StatusCode.UNAVAILABLE, f"dropped by fault rule {decision.rule_id}")

    def _fail(self, method: str, context: grpc.ServicerContext, started: float,
              exc: Exception, requests: RequestStream | None = None) -> None:
        if requests is not None and exc is requests.broken:
            # The caller went away or sent a message past the size limit: gRPC has ended
            # the call with the reason already, and it is no bug of the handler's.
            self.meter.record(method, started, grpc.StatusCode.CANCELLED)
            raise exc
        code = context.code()
        if code is None:  # not a deliberate context.abort: a bug in a handler
            message = self.meter.bug(method, exc)
            self.meter.record(method, started, grpc.StatusCode.INTERNAL)
            context.abort(grpc.StatusCode.INTERNAL, message)
        self.meter.record(method, started, code)
        if not _is_abort(exc):
            # A code set, then another exception: what grpc's generated base classes do for
            # a method a servicer does not implement. End the call with that code and its
            # details, rather than with the exception's repr and a logged traceback.
            context.abort(code, _text(context.details()))
        raise exc

    def _end(self, method: str, context: grpc.ServicerContext, started: float) -> None:
        self.meter.record(method, started, context.code() or grpc.StatusCode.OK)


class RequestStream:
    """A call's request stream as its handler sees it: it ends the call INVALID_ARGUMENT at
    its first undecodable message (the handler sees the abort as an exception, and `_fail`
    records it), and remembers the error that broke it, if the stream itself broke."""

    def __init__(self, requests: Iterator[Any], method: str, context: grpc.ServicerContext,
                 meter: ServerCallMeter) -> None:
        self._requests = requests
        self._method = method
        self._context = context
        self._meter = meter
        self.broken: grpc.RpcError | None = None

    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> Any:
        try:
            request = next(self._requests)
        except grpc.RpcError as exc:
            self.broken = exc
            raise
        if isinstance(request, Undecodable):
            self._context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                self._meter.undecodable(self._method, request))
        return request


def _is_abort(exc: Exception) -> bool:
    """Whether `exc` is how context.abort ends a call: a bare Exception on a thread-pool
    server (as grpc documents), AbortError for a plain-function handler on grpc.aio."""
    return type(exc) is Exception or isinstance(exc, grpc.aio.AbortError)


def _text(details: str | bytes | None) -> str:
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return details or ""


def _wait_while_active(context: grpc.ServicerContext, seconds: float) -> None:
    """Sleep, but stop early when the caller has gone (cancelled or deadline passed)."""
    gone = threading.Event()
    if not context.add_callback(gone.set):
        return
    gone.wait(seconds)


class InjectedFailure(grpc.RpcError, grpc.Call, grpc.Future):
    """A call an outbound fault rule failed before it left this node."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple:
        return ()

    def trailing_metadata(self) -> tuple:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Exception:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def add_done_callback(self, fn: Callable) -> None:
        fn(self)

    def __iter__(self):
        raise self

    def __next__(self):
        raise self


class ClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Metrics, outbound faults, a default deadline, the caller's name and the lab
    credential (when given), for one peer."""

    def __init__(self, *, node: str, peer: str, metrics: NodeMetrics, rules: FaultRules,
                 default_timeout: float, credential: Credential | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._added_metadata = ((CALLER_METADATA_KEY, node),
                                *(credential.metadata() if credential else ()))
        self._peer = peer
        self._metrics = metrics
        self._rules = rules
        self._default_timeout = default_timeout
        self._sleep = sleep

    def _intercept(self, continuation: Callable, details: Any, request: Any) -> Any:
        method = _method_name(details.method)
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        started = time.perf_counter()
        failure = self._outbound_fault(method, timeout)
        if failure is not None:
            self._record(method, started, failure.code())
            return failure
        # Time an outbound delay rule held the call is part of the caller's deadline.
        remaining = timeout - (time.perf_counter() - started)
        metadata = [*(details.metadata or ()), *self._added_metadata]
        details = CallDetails(method, remaining, metadata, details.credentials,
                               getattr(details, "wait_for_ready", None),
                               getattr(details, "compression", None))
        call = continuation(details, request)
        call.add_done_callback(lambda done: self._record(method, started, done.code()))
        return call

    def _outbound_fault(self, method: str, timeout: float) -> InjectedFailure | None:
        decision = self._rules.decide(method, self._peer, "outbound")
        if decision is None:
            return None
        self._metrics.fault_injected.labels(method=method, action=decision.action).inc()
        if decision.action == "delay":
            self._sleep(min(decision.delay_seconds, timeout))
            if decision.delay_seconds < timeout:
                return None
            return InjectedFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"deadline passed while delayed by rule {decision.rule_id}")
        if decision.action == "error":
            return InjectedFailure(decision.status_code,
                                   f"injected by outbound fault rule {decision.rule_id}")
        self._sleep(timeout)
        return InjectedFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"dropped by outbound fault rule {decision.rule_id}")

    def _record(self, method: str, started: float, code: grpc.StatusCode | None) -> None:
        code_name = (code or grpc.StatusCode.UNKNOWN).name
        self._metrics.client_handled.labels(method=method, peer=self._peer, code=code_name).inc()
        self._metrics.client_latency.labels(method=method, peer=self._peer).observe(
            time.perf_counter() - started)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return self._intercept(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return self._intercept(continuation, client_call_details, request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return self._intercept(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return self._intercept(continuation, client_call_details, request_iterator)
