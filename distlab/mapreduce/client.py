"""One choke point for the host's calls to the MapReduce master: upload inputs, submit,
follow, read output. Every call has a deadline; errors become MapReduceErrors that say what
the master answered. The channel must present the lab credential (`master_channel`).

A master machine that restarts comes back on another published port, so a client given
`reconnect` (a function returning a fresh channel, `lambda: master_channel(testbed)`)
opens a new channel when the master stops answering, and `wait` follows a job through the
master's restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import grpc

from distlab.errors import DistlabError
from nodes.rpc import mapreduce_pb2, mapreduce_pb2_grpc

MASTER_ROLE = "mapreduce-master"
CHUNK_BYTES = 1024 * 1024
CALL_SECONDS = 30.0
UPLOAD_SECONDS = 600.0
FINISHED = ("done", "failed")


#: The master did not answer (it is down or restarting): nothing it refused.
UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class MapReduceError(DistlabError):
    """The master refused or could not answer; the message has its status and words,
    `code` the status (None when no call was made)."""

    def __init__(self, message: str, *, hint: str = "",
                 code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


def _error(what: str, exc: grpc.RpcError) -> MapReduceError:
    return MapReduceError(f"{what}: {exc.code().name}: {exc.details()}",
                          hint="distlab status (is the mapreduce lab up?)", code=exc.code())


def master_channel(testbed) -> grpc.Channel:
    """A channel to the running master that presents the lab credential."""
    for machine in testbed.machines():
        if machine.info.role == MASTER_ROLE and machine.info.grpc_endpoint:
            return machine.protected_channel()
    raise MapReduceError("no mapreduce master is running", hint="distlab up mapreduce")


def job_request(job: str) -> dict[str, str]:
    """A built-in job's name, or the path of a job module (a .py file) to ship."""
    path = Path(job)
    if path.suffix == ".py":
        if not path.is_file():
            raise MapReduceError(f"no job module {job}", hint="a .py file, or a built-in: "
                                 "wordcount, indexer, grep, sort")
        return {"module_source": path.read_text(), "name": path.stem}
    return {"builtin": job}


def _visible_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(directory).parts))


class MapReduceClient:
    def __init__(self, channel: grpc.Channel, *,
                 reconnect: Callable[[], grpc.Channel] | None = None) -> None:
        self.stub = mapreduce_pb2_grpc.MasterStub(channel)
        self._reconnect = reconnect
        self._reopened: grpc.Channel | None = None  # the channel `reconnect` gave us, if any

    def reconnect(self) -> bool:
        """Open a fresh channel to the master (it may have restarted on another port);
        False when there is no way to, or no master runs right now."""
        if self._reconnect is None:
            return False
        try:
            channel = self._reconnect()
        except DistlabError:
            return False
        if self._reopened is not None:
            self._reopened.close()
        self._reopened = channel
        self.stub = mapreduce_pb2_grpc.MasterStub(channel)
        return True

    def close(self) -> None:
        if self._reopened is not None:
            self._reopened.close()
            self._reopened = None

    def upload(self, local: Path, name: str) -> int:
        """Store a local file as input `name` on the master's volume; its size."""
        def chunks() -> Iterator[mapreduce_pb2.InputChunk]:
            with open(local, "rb") as handle:
                yield mapreduce_pb2.InputChunk(name=name, data=handle.read(CHUNK_BYTES))
                while data := handle.read(CHUNK_BYTES):
                    yield mapreduce_pb2.InputChunk(data=data)

        try:
            return self.stub.PutInput(chunks(), timeout=UPLOAD_SECONDS).bytes
        except grpc.RpcError as exc:
            raise _error(f"uploading {local}", exc) from None

    def upload_inputs(self, paths: Iterable[Path], prefix: str) -> list[str]:
        """Upload files and directories (hidden files left out) under `prefix`/; their names."""
        names = []
        for path in paths:
            files = [path] if path.is_file() else _visible_files(path)
            if not files:
                raise MapReduceError(f"no input files at {path}")
            for file in files:
                relative = file.name if file == path else \
                    f"{path.name}/{file.relative_to(path).as_posix()}"
                self.upload(file, f"{prefix}/{relative}")
            names.append(f"{prefix}/{path.name}")
        return names

    def submit(self, job: str, inputs: Iterable[str], reducers: int, *, split_mb: int = 0,
               params: Mapping[str, str] | None = None) -> mapreduce_pb2.SubmitJobReply:
        request = mapreduce_pb2.SubmitJobRequest(inputs=list(inputs), reducers=reducers,
                                                 split_mb=split_mb, params=dict(params or {}),
                                                 **job_request(job))
        try:
            return self.stub.SubmitJob(request, timeout=CALL_SECONDS)
        except grpc.RpcError as exc:
            raise _error(f"submitting {job}", exc) from None

    def status(self, job_id: str) -> mapreduce_pb2.JobStatusReply:
        try:
            return self.stub.JobStatus(mapreduce_pb2.JobStatusRequest(job_id=job_id),
                                       timeout=CALL_SECONDS)
        except grpc.RpcError as exc:
            raise _error(f"status of {job_id}", exc) from None

    def jobs(self) -> list[mapreduce_pb2.JobStatusReply]:
        try:
            return list(self.stub.ListJobs(mapreduce_pb2.ListJobsRequest(),
                                           timeout=CALL_SECONDS).jobs)
        except grpc.RpcError as exc:
            raise _error("listing jobs", exc) from None

    def wait(self, job_id: str, *, timeout: float,
             on_status: Callable[[mapreduce_pb2.JobStatusReply], None] = lambda _: None,
             poll: float = 0.25) -> mapreduce_pb2.JobStatusReply:
        """Follow a job until it is done or failed; the last status even when `timeout`
        passes first (its state then says it is not finished). A master that does not
        answer for a moment (it is restarting) is waited for, within `timeout`, and
        reached again through `reconnect` when it comes back elsewhere."""
        deadline = time.monotonic() + timeout
        status = None
        while True:
            try:
                status = self.stub.JobStatus(mapreduce_pb2.JobStatusRequest(job_id=job_id),
                                             timeout=min(CALL_SECONDS, timeout))
                on_status(status)
                if status.state in FINISHED:
                    return status
            except grpc.RpcError as exc:
                if exc.code() not in UNANSWERED:
                    raise _error(f"status of {job_id}", exc) from None
                self.reconnect()
            if time.monotonic() > deadline:
                if status is None:
                    raise MapReduceError(f"the master did not answer about {job_id} "
                                         f"within {timeout:g} s")
                return status
            time.sleep(poll)

    def read_output(self, job_id: str, partition: int) -> bytes:
        try:
            chunks = self.stub.ReadOutput(mapreduce_pb2.ReadOutputRequest(
                job_id=job_id, partition=partition), timeout=UPLOAD_SECONDS)
            return b"".join(chunk.data for chunk in chunks)
        except grpc.RpcError as exc:
            raise _error(f"reading mr-out-{partition} of {job_id}", exc) from None

    def output(self, status: mapreduce_pb2.JobStatusReply) -> dict[str, str]:
        """A done job's whole output, key -> value."""
        result: dict[str, str] = {}
        for partition in range(len(status.outputs)):
            for line in self.read_output(status.job_id, partition).decode().splitlines():
                key, _, value = line.partition(" ")
                result[key] = value
        return result
