"""gRPC interceptors that give every RPC, served or sent, metrics and fault rules.

`ServerInterceptor` wraps every handler of a node's server: it counts and
times the call, applies inbound fault rules, and turns an unexpected
exception into INTERNAL with a one-line message (never a stack trace to the
caller). `ServerCallMeter` is the part of that which does no waiting, shared
with the asyncio server's interceptor (nodes.common.aio). `ClientInterceptor`
does the same for one outgoing channel to one peer, adds a default deadline,
says who is calling (`x-distlab-node`) and presents the lab credential when
it has one (nodes.common.auth).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from nodes.common.auth import CallDetails, Credential
from nodes.common.faults import Decision, FaultRules
from nodes.common.logs import EventLog
from nodes.common.metrics import NodeMetrics

CALLER_METADATA_KEY = "x-distlab-node"
DROP_WAIT_CAP_SECONDS = 300.0


def caller_of(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_METADATA_KEY:
            return value
    return ""


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


class ServerCallMeter:
    """What every server interceptor does around a call, waiting aside.

    It times and counts the call, decides which inbound fault rule acts on it,
    and reports a handler's bug. The blocking `ServerInterceptor` and the
    asyncio one (nodes.common.aio) share it, so both record the same metrics
    and apply the same rules.
    """

    def __init__(self, metrics: NodeMetrics, rules: FaultRules, log: EventLog) -> None:
        self._metrics = metrics
        self._rules = rules
        self._log = log

    def begin(self) -> float:
        self._metrics.server_in_flight.inc()
        return time.perf_counter()

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
    """How long a dropped call is held: past the caller's deadline, so it sees that deadline."""
    return DROP_WAIT_CAP_SECONDS if remaining is None else remaining + 1


class ServerInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: NodeMetrics, rules: FaultRules, log: EventLog) -> None:
        self.meter = ServerCallMeter(metrics, rules, log)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=self.wrap(handler.unary_unary, method, False))
        if handler.unary_stream:
            return handler._replace(unary_stream=self.wrap(handler.unary_stream, method, True))
        if handler.stream_unary:
            return handler._replace(stream_unary=self.wrap(handler.stream_unary, method, False))
        return handler._replace(stream_stream=self.wrap(handler.stream_stream, method, True))

    def wrap(self, behavior: Callable, method: str, streams_out: bool) -> Callable:
        """`behavior` (a plain function or generator handler) metered and fault-injected."""
        def unary_result(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(method, context)
            try:
                result = behavior(request, context)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and mapped
                self._fail(method, context, started, exc)
            self._end(method, context, started)
            return result

        def streamed_result(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(method, context)
            try:
                yield from behavior(request, context)
            except Exception as exc:  # noqa: BLE001
                self._fail(method, context, started, exc)
            self._end(method, context, started)

        return streamed_result if streams_out else unary_result

    def _begin(self, method: str, context: grpc.ServicerContext) -> float:
        started = self.meter.begin()
        decision = self.meter.fault(method, context)
        if decision is not None:
            try:
                self._inject(context, decision)
            except Exception:
                self.meter.record(method, started, context.code() or grpc.StatusCode.UNKNOWN)
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
              exc: Exception) -> None:
        if context.code() is None:  # not a deliberate context.abort: a bug in a handler
            message = self.meter.bug(method, exc)
            self.meter.record(method, started, grpc.StatusCode.INTERNAL)
            context.abort(grpc.StatusCode.INTERNAL, message)
        self.meter.record(method, started, context.code())
        raise exc

    def _end(self, method: str, context: grpc.ServicerContext, started: float) -> None:
        self.meter.record(method, started, context.code() or grpc.StatusCode.OK)


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
