"""python -m nodes.serverless.instance — one function instance (see --help).

The runner creates this container (through the engine proxy: non-root, read-only, no
capability, limited) on the lab's internal `functions` network, then calls `Load` with the
function's source — at once for a cold start, or later for a prewarmed container waiting
in the pool — and `Run` for each request, one at a time: a second `Run` while one runs is
refused with RESOURCE_EXHAUSTED. A function's own failure (an exception, sys.exit, a
result that is not JSON) is an answer with ok = false, its error and log lines; the
instance serves the next request.

The user's code runs in this process, so this node never holds the lab credential: its
protected methods (Load, Run, Control) open to INSTANCE_TOKEN, a token the runner made for
this instance alone. A function that reads it can call only its own instance. Stopping a
function that overruns its timeout, or its memory, is the runner's part: it replaces the
instance (the code cannot be interrupted from inside).

`context.storage` is a client of the lab's storage (FN_STORAGE, a kv machine): get, put,
delete of text values. Functions keep no state of their own.
"""

from __future__ import annotations

import sys
import threading
import time

import grpc

from nodes.common.auth import Credential, service_methods
from nodes.common.config import Setting
from nodes.common.role import NodeContext, RoleNode, RoleSpec
from nodes.common.server import main
from nodes.rpc import kv_pb2, kv_pb2_grpc, serverless_pb2, serverless_pb2_grpc
from nodes.serverless.function import LoadedFunction, LoadError, load

SERVICE = serverless_pb2.DESCRIPTOR.services_by_name["Instance"]
STORAGE_TIMEOUT_SECONDS = 2.0  # under a function's default timeout: its error says why


class StorageUnavailable(Exception):
    """The lab's storage did not answer: the function's error names it, not a gRPC trace."""


class Storage:
    """What a function sees of the lab's storage: text values by key."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._kv = kv_pb2_grpc.KVStub(channel)

    def get(self, key: str, default: str | None = None) -> str | None:
        try:
            return self._call("get", self._kv.Get, kv_pb2.GetRequest(key=key)).value.decode()
        except KeyError:
            return default

    def put(self, key: str, value: str) -> None:
        self._call("put", self._kv.Put, kv_pb2.PutRequest(key=key, value=str(value).encode()))

    def delete(self, key: str) -> bool:
        return self._call("delete", self._kv.Delete, kv_pb2.DeleteRequest(key=key)).existed

    @staticmethod
    def _call(verb: str, method, request):
        try:
            return method(request, timeout=STORAGE_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                raise KeyError(request.key) from None
            raise StorageUnavailable(f"the lab's storage did not {verb} {request.key!r}: "
                                     f"{exc.code().name}: {exc.details()}") from None

    def __repr__(self) -> str:
        return "<the lab's storage: get(key), put(key, value), delete(key)>"


class InstanceNode(RoleNode, serverless_pb2_grpc.InstanceServicer):
    service_names = (SERVICE.full_name,)

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._function: LoadedFunction | None = None
        self._loading = threading.Lock()
        self._running = threading.Lock()
        storage = ctx.config["FN_STORAGE"]
        self._storage = Storage(ctx.channels.get(storage, "storage")) if storage else None
        self._served = 0

    def register(self, server: grpc.Server) -> None:
        serverless_pb2_grpc.add_InstanceServicer_to_server(self, server)

    def status(self) -> dict[str, str]:
        return {"function": self._function.name if self._function else "",
                "served": str(self._served), "busy": str(self._running.locked()).lower()}

    def Load(self, request, context):
        with self._loading:
            if self._function is not None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"this instance already runs {self._function.name}")
            started = time.perf_counter()
            try:
                self._function = load(request.name, request.source)
            except LoadError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            seconds = time.perf_counter() - started
        self._ctx.log.info("fn_loaded", function=request.name, seconds=round(seconds, 4))
        return serverless_pb2.LoadReply(load_seconds=seconds)

    def Run(self, request, context):
        function = self._function
        if function is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no function loaded yet")
        if not self._running.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "this instance runs one request at a time and is busy")
        try:
            timeout = request.timeout_seconds or (context.time_remaining() or 60.0)
            outcome = function.run(request.data, invocation_id=request.id, timeout=timeout,
                                   storage=self._storage)
            self._served += 1
        finally:
            self._running.release()
        return serverless_pb2.RunReply(ok=outcome.ok, result=outcome.result,
                                       error=outcome.error, logs=outcome.logs)


def _own_token(config: dict) -> Credential:
    return Credential(config["INSTANCE_TOKEN"])


SPEC = RoleSpec(
    name="serverless.instance",
    summary="one serverless function instance: the runner loads a function into it "
            "(Instance.Load) and runs one request at a time (Instance.Run).",
    settings=(
        Setting("INSTANCE_TOKEN", str, "", "the token that opens this instance's protected "
                "methods (the runner's; never the lab credential)"),
        Setting("FN_STORAGE", str, "", "host:port of the lab's storage (a kv machine) that "
                "functions reach as context.storage"),
    ),
    build=InstanceNode,
    protected=service_methods(SERVICE),
    credential_from=_own_token,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
