"""asyncio support for the node contract: an event loop thread and the grpc.aio interceptor.

`NodeServer` in asyncio mode (a role's `ServerMode(asyncio=True)`) runs a
grpc.aio server on an `EventLoopThread`, with `AioServerInterceptor` in
front of every handler. Coroutine handlers (the role's service, and health:
grpc.aio's own servicer) run on the loop; plain-function handlers (Control,
reflection) run in the server's migration thread pool, wrapped by the
blocking `ServerInterceptor`. Both
share one `ServerCallMeter`, so the metrics and fault rules are the node
contract's either way.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from nodes.common.faults import FaultRules
from nodes.common.interceptors import (
    KINDS,
    REFUSED_METADATA,
    Admission,
    ServerInterceptor,
    Undecodable,
    drop_seconds,
    tolerant,
)
from nodes.common.logs import EventLog
from nodes.common.metrics import NodeMetrics

T = TypeVar("T")


class EventLoopThread:
    """An asyncio event loop running in a thread of its own, driven from other threads."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the loop and wait for its result in the calling thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        """Cancel what still runs on the loop, then stop and close it."""
        self.run(_cancel_others())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _cancel_others() -> None:
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


class _MigratedContext:
    """A plain-function handler's context on a grpc.aio server, made to act like the sync one.

    grpc's migrated context has no `code()` or `details()`, which `ServerInterceptor`
    needs to tell a deliberate abort from a bug, so this one remembers them. And it
    accepts callbacks but never runs them, so `add_callback` says yes and a
    fault rule's wait runs its whole (bounded) time.
    """

    def __init__(self, context: Any) -> None:
        self._context = context
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def abort(self, code: grpc.StatusCode, details: str = "",
              trailing_metadata: tuple = ()) -> None:
        self._code, self._details = code, details
        self._context.abort(code, details, trailing_metadata)  # raises

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._details = details
        self._context.set_details(details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class AioServerInterceptor(grpc.aio.ServerInterceptor):
    """`ServerInterceptor`'s metrics, limit, request check, fault rules and bug mapping, for a
    grpc.aio server."""

    def __init__(self, metrics: NodeMetrics, rules: FaultRules, log: EventLog,
                 admission: Admission) -> None:
        self._blocking = ServerInterceptor(metrics, rules, log, admission)
        self._meter = self._blocking.meter

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        handler = handler._replace(request_deserializer=tolerant(handler.request_deserializer))
        for kind, streams_in, streams_out in KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: self._wrap(behavior, method, streams_in,
                                                            streams_out)})
        return handler

    def _wrap(self, behavior: Callable, method: str, streams_in: bool,
              streams_out: bool) -> Callable:
        # grpc.aio runs a coroutine or async-generator behavior on the loop and any
        # other in its migration thread pool: each wrapper keeps the kind it wraps.
        if inspect.isasyncgenfunction(behavior):
            return self._wrap_async_generator(behavior, method, streams_in)
        if inspect.iscoroutinefunction(behavior):
            return self._wrap_coroutine(behavior, method, streams_in)
        wrapped = self._blocking.wrap(behavior, method, streams_in, streams_out)
        return lambda request, context: wrapped(request, _MigratedContext(context))

    def _wrap_coroutine(self, behavior: Callable[..., Awaitable], method: str,
                        streams_in: bool) -> Callable:
        bounded = self._meter.admission.bounds(method)

        async def metered(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = await self._begin(method, context, request, bounded)
            try:
                await self._inject(method, context)
                result = await behavior(self._arguments(request, method, context, streams_in),
                                        context)
            except BaseException as exc:  # noqa: BLE001 - every ending is recorded
                await self._fail(method, context, started, exc)
            finally:
                if bounded:
                    self._meter.admission.leave(method)
            self._meter.record(method, started, context.code() or grpc.StatusCode.OK)
            return result

        return metered

    def _wrap_async_generator(self, behavior: Callable, method: str,
                              streams_in: bool) -> Callable:
        bounded = self._meter.admission.bounds(method)

        async def metered(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = await self._begin(method, context, request, bounded)
            try:
                await self._inject(method, context)
                async for response in behavior(
                        self._arguments(request, method, context, streams_in), context):
                    yield response
            except BaseException as exc:  # noqa: BLE001
                await self._fail(method, context, started, exc)
            finally:
                if bounded:
                    self._meter.admission.leave(method)
            self._meter.record(method, started, context.code() or grpc.StatusCode.OK)

        return metered

    async def _begin(self, method: str, context: grpc.aio.ServicerContext, request: Any,
                     bounded: bool) -> float:
        """Start metering; refuse the call (raises) when undecodable or over the limit."""
        started = self._meter.begin()
        if isinstance(request, Undecodable):
            message = self._meter.undecodable(method, request)
            self._meter.record(method, started, grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        if bounded and not self._meter.admission.try_enter(method):
            message = self._meter.overloaded(method)
            self._meter.record(method, started, grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_trailing_metadata((REFUSED_METADATA,))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        return started

    def _arguments(self, request: Any, method: str, context: grpc.aio.ServicerContext,
                   streams_in: bool) -> Any:
        return self._decoded(request, method, context) if streams_in else request

    async def _decoded(self, requests: AsyncIterator[Any], method: str,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """A request stream that ends the call INVALID_ARGUMENT at its first undecodable one."""
        async for request in requests:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    self._meter.undecodable(method, request))
            yield request

    async def _inject(self, method: str, context: grpc.aio.ServicerContext) -> None:
        decision = self._meter.fault(method, context)
        if decision is None:
            return
        # A caller that goes away cancels the handler's task, which ends these sleeps.
        if decision.action == "delay":
            await asyncio.sleep(decision.delay_seconds)
            return
        if decision.action == "error":
            await context.abort(decision.status_code, f"injected by fault rule {decision.rule_id}")
        await asyncio.sleep(drop_seconds(context.time_remaining()))
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"dropped by fault rule {decision.rule_id}")

    async def _fail(self, method: str, context: grpc.aio.ServicerContext, started: float,
                    exc: BaseException) -> None:
        """Record how the call ended and re-raise; a bug becomes INTERNAL (raises too)."""
        if not isinstance(exc, Exception):  # cancelled: the caller went away or the server stops
            remaining = context.time_remaining()
            ended = (grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0
                     else grpc.StatusCode.CANCELLED)
            self._meter.record(method, started, ended)
            raise exc
        if isinstance(exc, grpc.aio.AbortError):  # a deliberate context.abort
            self._meter.record(method, started, context.code() or grpc.StatusCode.UNKNOWN)
            raise exc
        message = self._meter.bug(method, exc)
        self._meter.record(method, started, grpc.StatusCode.INTERNAL)
        await context.abort(grpc.StatusCode.INTERNAL, message)
