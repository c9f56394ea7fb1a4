"""Run the bank core's operations against the data tier: blocking, or on an event loop.

An operation (nodes.app.bank) yields data-tier requests; `run` sends each
one with the blocking `DataClient` (a server thread waits), `run_async` with
`AsyncDataClient` (the event loop serves other calls meanwhile). Either way
a `DataUnavailable` goes back into the operation as `DataTierDown`, keeping
its `definite` flag, so the core decides what the caller is told. The data
tier refusing a request as too large is RESOURCE_EXHAUSTED for the caller
too; refusing it as malformed is a bank bug, INTERNAL. Every data-tier call
(the client's retries included) gets the smaller of `timeout` and what is
left of the caller's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from nodes.app.bank import BankError, DataReply, DataRequest, DataTierDown, Operation, Pause
from nodes.data.client import AsyncDataClient, DataClient, DataUnavailable
from nodes.rpc import chain_pb2

T = TypeVar("T")
MIN_TIMEOUT_SECONDS = 0.01  # a caller already out of time still gets a (failing) answer


def run(operation: Operation[T], client: DataClient, *, timeout: float,
        time_remaining: Callable[[], float | None] = lambda: None) -> T:
    request, result = _resume(operation)
    while request is not None:
        if isinstance(request, Pause):
            time.sleep(request.seconds)
            request, result = _resume(operation)
            continue
        try:
            reply = _send(client, request, _deadline(timeout, time_remaining))
        except DataUnavailable as exc:
            request, result = _resume(operation, down=_down(exc))
        except grpc.RpcError as exc:
            raise _refused(exc) from None
        else:
            request, result = _resume(operation, reply)
    return result


async def run_async(operation: Operation[T], client: AsyncDataClient, *, timeout: float,
                    time_remaining: Callable[[], float | None] = lambda: None) -> T:
    request, result = _resume(operation)
    while request is not None:
        if isinstance(request, Pause):
            await asyncio.sleep(request.seconds)
            request, result = _resume(operation)
            continue
        call_timeout = _deadline(timeout, time_remaining)
        try:
            if isinstance(request, chain_pb2.TxnRequest):
                reply = await client.txn(request, timeout=call_timeout)
            else:
                reply = await client.read(request, timeout=call_timeout)
        except DataUnavailable as exc:
            request, result = _resume(operation, down=_down(exc))
        except grpc.RpcError as exc:
            raise _refused(exc) from None
        else:
            request, result = _resume(operation, reply)
    return result


def _send(client: DataClient, request: DataRequest, timeout: float) -> DataReply:
    if isinstance(request, chain_pb2.TxnRequest):
        return client.txn(request, timeout=timeout)
    return client.read(request, timeout=timeout)


def _resume(operation: Operation[T], reply: DataReply | None = None,
            down: DataTierDown | None = None) -> tuple[DataRequest | None, Any]:
    """Give the operation its reply (or failure): (its next request, None) or (None, its result)."""
    try:
        return (operation.throw(down) if down is not None else operation.send(reply)), None
    except StopIteration as finished:
        return None, finished.value


def _deadline(timeout: float, time_remaining: Callable[[], float | None]) -> float:
    remaining = time_remaining()
    if remaining is None:
        return timeout
    return max(MIN_TIMEOUT_SECONDS, min(timeout, remaining))


def _down(exc: DataUnavailable) -> DataTierDown:
    return DataTierDown(str(exc), definite=exc.definite)


def _refused(exc: grpc.RpcError) -> BankError:
    code = exc.code()
    ours = code if code == grpc.StatusCode.RESOURCE_EXHAUSTED else grpc.StatusCode.INTERNAL
    return BankError(ours, f"the data tier refused a request: {code.name}: {exc.details()}")
