"""The per-request path: forward the methods the switch fronts to a backend, as raw bytes.

`Forwarder` is the grpc.GenericRpcHandler the switch registers. It forwards
exactly the methods of SWITCH_SERVICES (`ForwardingRules.methods`, read from
the service descriptors compiled into the image), without knowing their
messages: unary, or as a stream (any cardinality on the wire) for the
methods whose descriptor streams. It declines (returns None for) the
services the switch answers itself — Control, health and reflection — and
answers every other method UNIMPLEMENTED on the spot: no backend is picked,
called or charged for it, and its name becomes no metric label.

For each forwarded call it: copies the caller's metadata with
`x-distlab-node` replaced by the switch's name and any lab credential
removed; picks a backend (BackendPool.candidates + the policy); gives the
attempt min(the caller's time left, the per-try timeout); applies this
node's outbound fault rules for that backend, like every node's outgoing
calls; and answers with the backend's response, or its status code, details
and trailing metadata unchanged. Idempotent methods are retried on
UNAVAILABLE or a per-try timeout, on a different backend, within the attempt
limit, the caller's deadline and the retry budget; any unary method is, the
same way, when the backend refused it before running it (RESOURCE_EXHAUSTED
with REFUSED_METADATA: its admission limit), since it then did nothing.

Kept short on purpose (it is benchmarked against HAProxy): no thread, no
log line and no channel created per request; handlers are built once per
forwarded method, metric children and callables once per backend and method;
locks are held for a counter update. A forwarded unary call holds one server
worker thread while it waits (so WORKERS bounds the calls in flight); a
caller that cancels a unary call does not cancel the backend's attempt,
whose deadline ends it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

from nodes.common.auth import METADATA_KEY as CREDENTIAL_METADATA_KEY
from nodes.common.faults import FaultRules
from nodes.common.interceptors import CALLER_METADATA_KEY, MOVED_METADATA_KEY, REFUSED_METADATA
from nodes.common.logs import EventLog
from nodes.common.metrics import NodeMetrics
from nodes.switch.backends import Backend, BackendPool
from nodes.switch.config import NEVER_FORWARDED
from nodes.switch.hold import Hold, HoldFull
from nodes.switch.metrics import SwitchMetrics
from nodes.switch.policies import Policy
from nodes.switch.retry_budget import RetryBudget

# What the node itself answers, whatever the backends serve.
OWN_SERVICES = tuple(f"/{service}/" for service in NEVER_FORWARDED)
# grpc Python reports "no deadline" as about 9e18 seconds remaining.
NO_DEADLINE_ABOVE = 1e9
# A refused method's name is quoted back at most this long: callers choose it.
MAX_QUOTED_METHOD = 200
# A caller's lab credential stops at the switch: a forwarded call is never a privileged one,
# whatever SWITCH_SERVICES names.
_NOT_FORWARDED = frozenset({"user-agent", CALLER_METADATA_KEY, CREDENTIAL_METADATA_KEY})
_RICH_ERROR_DETAILS = "grpc-status-details-bin"
_OK = grpc.StatusCode.OK
# A call refused "moved" by one backend, then another, is not followed further.
MAX_MOVES = 2


def link_options(max_message_bytes: int) -> list[tuple[str, object]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # The switch retries by itself, on another backend, within a budget.
        ("grpc.enable_retries", 0),
        # Reconnect quickly to a backend that comes back.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class BackendLink:
    """One backend's raw-bytes channel, its callables per method and its metric children."""

    def __init__(self, name: str, target: str, *, max_message_bytes: int,
                 metrics: SwitchMetrics) -> None:
        self.name = name
        self.channel = grpc.insecure_channel(target, options=link_options(max_message_bytes))
        self._unary: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._streams: dict[str, grpc.StreamStreamMultiCallable] = {}
        self._metrics = metrics
        self._requests: dict[grpc.StatusCode, Any] = {}
        self._latency = metrics.latency.labels(backend=name)
        self.retries = metrics.retries.labels(backend=name)

    # Only forwarded methods get here, so the caches hold at most one entry per method.
    def unary(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        callable_ = self._unary.get(method)
        if callable_ is None:
            # No (de)serializers: bytes pass through.
            callable_ = self._unary[method] = self.channel.unary_unary(method)
        return callable_

    def stream(self, method: str) -> grpc.StreamStreamMultiCallable:
        callable_ = self._streams.get(method)
        if callable_ is None:
            callable_ = self._streams[method] = self.channel.stream_stream(method)
        return callable_

    def record(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._requests.get(code)
        if counter is None:
            counter = self._requests[code] = self._metrics.requests.labels(backend=self.name,
                                                                            code=code.name)
        counter.inc()
        self._latency.observe(seconds)

    def close(self) -> None:
        self.channel.close()


@dataclass(frozen=True)
class ForwardingRules:
    services: tuple[str, ...]
    methods: Mapping[str, bool]  # every forwarded method -> whether it streams
    idempotent_methods: frozenset[str]
    affinity_key: str
    max_attempts: int
    per_try_timeout: float
    stream_timeout: float


class Result(NamedTuple):
    code: grpc.StatusCode
    response: bytes | None = None
    details: str = ""
    trailing: tuple = ()


class Forwarder(grpc.GenericRpcHandler):
    def __init__(self, *, node: str, pool: BackendPool, policy: Policy, budget: RetryBudget,
                 rules: ForwardingRules, metrics: SwitchMetrics, node_metrics: NodeMetrics,
                 faults: FaultRules, log: EventLog, hold: Hold) -> None:
        self.policy = policy  # replaced whole by Reconfigure; read once per pick
        self._caller = (CALLER_METADATA_KEY, node)
        self._pool = pool
        self._budget = budget
        self._rules = rules
        self._metrics = metrics
        self._node_metrics = node_metrics
        self._faults = faults
        self._log = log
        self._hold = hold
        self._handlers = {
            method: grpc.stream_stream_rpc_method_handler(
                functools.partial(self._forward_stream, method)) if streams else
            grpc.unary_unary_rpc_method_handler(functools.partial(self._forward_unary, method))
            for method, streams in rules.methods.items()}
        self._forwarded = ", ".join(rules.services)

    def service(self, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        if method.startswith(OWN_SERVICES):
            return None  # the node's own Control, health and reflection answer these
        # Any cardinality on the wire; the call ends before a message is read.
        return grpc.stream_stream_rpc_method_handler(functools.partial(self._refuse, method))

    def _refuse(self, method: str, requests: Iterator[bytes],
                context: grpc.ServicerContext) -> Iterator[bytes]:
        self._metrics.refused.inc()
        quoted = method if len(method) <= MAX_QUOTED_METHOD else method[:MAX_QUOTED_METHOD] + "..."
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"the switch forwards only the methods of {self._forwarded}; "
                      f"{quoted!r} is not one of them")

    # -- unary ---------------------------------------------------------------------------------

    def _forward_unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata, affinity = self._outgoing_metadata(context)
        deadline = _deadline_of(context)
        retryable = method in self._rules.idempotent_methods
        self._budget.deposit()
        self._enter_hold(deadline, context)
        backend = self._first_choice(affinity, context)
        tried: list[Backend] = []
        attempt = moves = 1
        while True:
            timeout, per_try_capped = self._attempt_timeout(deadline, context)
            generation = self._hold.generation
            result = self._attempt(backend, method, request, metadata, timeout)
            if result.code is _OK:
                if result.trailing:
                    context.set_trailing_metadata(_forwardable(result.trailing))
                return result.response
            if _moved(result) and moves <= MAX_MOVES and self._await_move(generation, deadline):
                # The backend ran nothing and the switch points elsewhere now: go there.
                self._metrics.moved.inc()
                backend = self._first_choice(affinity, context)
                moves += 1
                continue
            if ((retryable and _worth_retrying(result.code, per_try_capped)
                    or _refused_unstarted(result))
                    and attempt < self._rules.max_attempts
                    and (deadline is None or deadline > time.monotonic())):
                tried.append(backend)
                retry_to = self._retry_target(tried, affinity)
                if retry_to is not None:
                    backend.link.retries.inc()
                    backend = retry_to
                    attempt += 1
                    continue
            if result.trailing:
                context.set_trailing_metadata(_forwardable(result.trailing))
            context.abort(result.code, result.details)

    def _attempt_timeout(self, deadline: float | None,
                         context: grpc.ServicerContext) -> tuple[float, bool]:
        """This attempt's timeout, and whether the per-try limit (not the caller) set it."""
        per_try = self._rules.per_try_timeout
        if deadline is None:
            return per_try, True
        left = deadline - time.monotonic()
        if left <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          "the caller's deadline passed before the switch could forward the call")
        return (per_try, True) if per_try < left else (left, False)

    def _attempt(self, backend: Backend, method: str, request: bytes, metadata: list,
                 timeout: float) -> Result:
        link = backend.link
        self._pool.begin(backend)
        started = time.perf_counter()
        result = Result(grpc.StatusCode.UNKNOWN, details="the switch failed to forward the call")
        try:
            fault, timeout = self._outbound_fault(method, backend, timeout)
            if fault is not None:
                result = fault
            else:
                try:
                    response, call = link.unary(method).with_call(request, timeout=timeout,
                                                                  metadata=metadata)
                    result = Result(_OK, response, "", call.trailing_metadata() or ())
                except grpc.RpcError as error:
                    result = Result(error.code(), None, error.details() or "",
                                    error.trailing_metadata() or ())
        finally:
            self._finish(backend, result.code, started)
        return result

    def _retry_target(self, tried: list[Backend], affinity: str | None) -> Backend | None:
        candidates = self._pool.candidates(exclude=tried)
        if not candidates:
            return None
        if not self._budget.try_withdraw():
            self._metrics.retry_budget_exhausted.inc()
            return None
        return self.policy.choose(candidates, affinity)

    # -- streams -------------------------------------------------------------------------------

    def _forward_stream(self, method: str, requests: Iterator[bytes],
                        context: grpc.ServicerContext) -> Iterator[bytes]:
        metadata, affinity = self._outgoing_metadata(context)
        deadline = _deadline_of(context)
        timeout = (self._rules.stream_timeout if deadline is None
                   else max(0.0, deadline - time.monotonic()))
        self._enter_hold(deadline, context)
        backend = self._first_choice(affinity, context)
        self._pool.begin(backend)
        started = time.perf_counter()
        # Until the backend answers: the caller went away if the generator is closed early.
        result = Result(grpc.StatusCode.CANCELLED, details="the caller cancelled")
        try:
            fault, timeout = self._outbound_fault(method, backend, timeout)
            if fault is not None:
                result = fault
            else:
                call = backend.link.stream(method)(requests, timeout=timeout, metadata=metadata)
                context.add_callback(call.cancel)
                try:
                    yield from call
                    result = Result(_OK, trailing=call.trailing_metadata() or ())
                except grpc.RpcError as error:
                    result = Result(error.code(), None, error.details() or "",
                                    error.trailing_metadata() or ())
        finally:
            self._finish(backend, result.code, started)
        if result.trailing:
            context.set_trailing_metadata(_forwardable(result.trailing))
        if result.code is not _OK:
            context.abort(result.code, result.details)

    # -- shared --------------------------------------------------------------------------------

    def _outgoing_metadata(self, context: grpc.ServicerContext) -> tuple[list, str | None]:
        affinity = None
        metadata = [self._caller]
        for key, value in context.invocation_metadata():
            if key in _NOT_FORWARDED or key.startswith("grpc-"):
                continue
            if key == self._rules.affinity_key:
                affinity = value
            metadata.append((key, value))
        return metadata, affinity

    def _enter_hold(self, deadline: float | None, context: grpc.ServicerContext) -> None:
        """Wait while the switch holds new calls (a migration's blackout)."""
        try:
            self._hold.enter(deadline)
        except HoldFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    def _await_move(self, generation: int, deadline: float | None) -> bool:
        """After a "moved" refusal: wait for the switch to be re-pointed; whether it was."""
        try:
            return self._hold.await_move(generation, deadline)
        except HoldFull:
            return False  # the caller gets the backend's refusal

    def _first_choice(self, affinity: str | None, context: grpc.ServicerContext) -> Backend:
        candidates = self._pool.candidates()
        if not candidates:
            self._metrics.no_backend.inc()
            known = len(self._pool)
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"no healthy backend: none of the {known} known backends may take calls"
                          if known else "no healthy backend: the configured backends resolve "
                                        "to no machine")
        return self.policy.choose(candidates, affinity)

    def _outbound_fault(self, method: str, backend: Backend,
                        timeout: float) -> tuple[Result | None, float]:
        """Carry out an outbound fault rule for this attempt: a failed Result, or the time left."""
        decision = self._faults.decide(method, backend.name, "outbound")
        if decision is None:
            return None, timeout
        self._node_metrics.fault_injected.labels(method=method, action=decision.action).inc()
        if decision.action == "error":
            return Result(decision.status_code,
                          details=f"injected by outbound fault rule {decision.rule_id}"), timeout
        if decision.action == "delay" and decision.delay_seconds < timeout:
            time.sleep(decision.delay_seconds)
            return None, timeout - decision.delay_seconds
        time.sleep(timeout)
        return Result(grpc.StatusCode.DEADLINE_EXCEEDED,
                      details=f"deadline passed, held by outbound fault rule {decision.rule_id}"), 0

    def _finish(self, backend: Backend, code: grpc.StatusCode, started: float) -> None:
        backend.link.record(code, time.perf_counter() - started)
        if self._pool.finish(backend, code):
            self._metrics.ejections.labels(backend=backend.name).inc()
            self._log.warning("backend_ejected", backend=backend.name,
                              consecutive_failures=backend.consecutive_failures,
                              seconds=round((backend.ejected_until or 0) - time.monotonic(), 3),
                              last_code=code.name)


def _worth_retrying(code: grpc.StatusCode, per_try_capped: bool) -> bool:
    """The backend was unreachable or refused the call, or the attempt ran out of its own
    per-try time (not the caller's): another backend may well answer."""
    return code is grpc.StatusCode.UNAVAILABLE or (
        code is grpc.StatusCode.DEADLINE_EXCEEDED and per_try_capped)


def _refused_unstarted(result: Result) -> bool:
    """Whether the backend refused the call before running it (its admission limit): then
    another backend may take it, idempotent or not."""
    return (result.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            and tuple(REFUSED_METADATA) in (tuple(item) for item in result.trailing))


def _moved(result: Result) -> bool:
    """Whether the backend refused the call, unrun, because its service moved elsewhere."""
    return (result.code is grpc.StatusCode.UNAVAILABLE
            and any(key == MOVED_METADATA_KEY for key, _ in result.trailing))


def _deadline_of(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline on the monotonic clock, or None when it set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_ABOVE:
        return None
    return time.monotonic() + remaining


def _forwardable(trailing: tuple) -> tuple:
    return tuple((key, value) for key, value in trailing
                 if not key.startswith("grpc-") or key == _RICH_ERROR_DETAILS)
