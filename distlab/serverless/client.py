"""One choke point for the host's calls to the serverless runner: deploy, invoke, list,
logs, remove. Every call has a deadline; the runner's refusals become FunctionErrors that
say what it answered. The channel presents the lab credential (Deploy, Remove and Logs
need it; Invoke and List are open, like the HTTP gateway)."""

from __future__ import annotations

from pathlib import Path

import grpc

from distlab.errors import DistlabError, UsageError
from nodes.rpc import serverless_pb2, serverless_pb2_grpc

RUNNER_ROLE = "serverless-runner"
CALL_SECONDS = 30.0
# An invocation may wait for a cold start and then run for its timeout: the runner's own
# bound (nodes.serverless.runner) is twice its READY_SECONDS plus the timeout.
INVOKE_SECONDS = 180.0


class FunctionError(DistlabError):
    """The runner refused or could not answer; `code` is the gRPC status."""

    def __init__(self, message: str, *, hint: str = "",
                 code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


def runner_channel(testbed) -> grpc.Channel:
    """A channel to the running runner that presents the lab credential."""
    for machine in testbed.machines():
        if machine.info.role == RUNNER_ROLE and machine.info.grpc_endpoint:
            return machine.protected_channel()
    raise FunctionError("no serverless runner is running", hint="distlab up serverless")


class FunctionsClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = serverless_pb2_grpc.FunctionsStub(channel)

    def deploy(self, name: str, source: str | Path, *, memory_bytes: int = 0,
               timeout: float = 0.0, max_instances: int = 0, min_instances: int = 0,
               keep_alive: float | None = None,
               queue_limit: int | None = None) -> serverless_pb2.FunctionInfo:
        if isinstance(source, Path):
            try:
                source = source.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"cannot read {source}: {exc}") from None
        spec = serverless_pb2.FunctionSpec(
            name=name, source=source, memory_bytes=memory_bytes, timeout_seconds=timeout,
            max_instances=max_instances, min_instances=min_instances,
            keep_alive_seconds=keep_alive, queue_limit=queue_limit)
        return self._call("deploy", self.stub.Deploy,
                          serverless_pb2.DeployRequest(function=spec))

    def invoke(self, name: str, data: str = "", *,
               timeout: float = INVOKE_SECONDS) -> serverless_pb2.InvokeReply:
        return self._call(f"invoke {name}", self.stub.Invoke,
                          serverless_pb2.InvokeRequest(name=name, data=data), timeout)

    def invoke_async(self, name: str, data: str = "") -> str:
        """The id of an invocation the runner keeps (on disk) to run later."""
        return self._call(f"invoke {name} asynchronously", self.stub.InvokeAsync,
                          serverless_pb2.InvokeRequest(name=name, data=data)).id

    def result(self, invocation_id: str) -> serverless_pb2.ResultReply:
        return self._call(f"result of {invocation_id}", self.stub.Result,
                          serverless_pb2.ResultRequest(id=invocation_id))

    def list(self) -> list[serverless_pb2.FunctionInfo]:
        return list(self._call("list", self.stub.List, serverless_pb2.ListRequest()).functions)

    def logs(self, name: str, limit: int = 100) -> list[str]:
        return list(self._call(f"logs of {name}", self.stub.Logs,
                               serverless_pb2.LogsRequest(name=name, limit=limit)).lines)

    def remove(self, name: str) -> bool:
        return self._call(f"remove {name}", self.stub.Remove,
                          serverless_pb2.RemoveRequest(name=name)).existed

    @staticmethod
    def _call(what: str, method, request, timeout: float = CALL_SECONDS):
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise FunctionError(f"{what}: {exc.code().name}: {exc.details()}",
                                hint="distlab fn list", code=exc.code()) from None
