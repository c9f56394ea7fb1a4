"""A MapReduce lab on loopback for the integration tests: a master and workers as in-process
nodes (or processes), a shared jobs directory, a generated corpus, and the sequential
reference run every job's output is compared with."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nodes.common.server import NodeServer
from nodes.mapreduce.jobs import builtin_source, load_job, read_output, run_sequential
from nodes.mapreduce.master import SPEC as MASTER_SPEC
from nodes.mapreduce.worker import SPEC as WORKER_SPEC
from nodes.rpc import mapreduce_pb2, mapreduce_pb2_grpc
from tests.integration.conftest import Lab

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron "
         "pi rho sigma tau upsilon phi chi psi omega map reduce worker master split").split()
#: Small splits, so a corpus of a few files makes a dozen map tasks.
SPLIT_MB = 16 / 1024  # 16 KiB


def write_corpus(input_dir: Path, files: int = 4, lines: int = 600, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    (input_dir / "corpus").mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(files):
        text = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + ".\n"
                       for _ in range(lines))
        name = f"corpus/doc-{index}.txt"
        (input_dir / name).write_text(text)
        names.append(name)
    return names


@dataclass
class MapReduceLab:
    lab: Lab
    jobs_dir: Path
    master: NodeServer | None = None
    master_env: dict = field(default_factory=dict)
    master_data: str = ""

    @property
    def input_dir(self) -> Path:
        return self.jobs_dir / "input"

    def start_master(self, port: int = 0, **env) -> NodeServer:
        self.master_env = {**self.master_env, **env}
        self.master = self.lab.start("mr-master", spec=MASTER_SPEC, data_dir=self.master_data,
                                     GRPC_PORT=port, MR_JOBS_DIR=self.jobs_dir,
                                     MR_SPLIT_MB=SPLIT_MB, **self.master_env)
        return self.master

    def restart_master(self) -> NodeServer:
        port = self.master.grpc_port
        self.lab.stop(self.master)
        return self.start_master(port=port)

    def start_worker(self, name: str, **env) -> NodeServer:
        return self.lab.start(name, spec=WORKER_SPEC, MR_JOBS_DIR=self.jobs_dir,
                              MR_MASTER=self.lab.address(self.master),
                              MR_ADVERTISE_HOST="127.0.0.1", MR_HEARTBEAT_SECONDS=0.2,
                              GRACE_SECONDS=0, **env)

    def stub(self) -> mapreduce_pb2_grpc.MasterStub:
        return mapreduce_pb2_grpc.MasterStub(self.lab.channel(self.master))

    def submit(self, builtin: str = "", *, inputs, reducers: int = 3, source: str = "",
               **params: str) -> str:
        reply = self.stub().SubmitJob(mapreduce_pb2.SubmitJobRequest(
            builtin=builtin, module_source=source, inputs=inputs, reducers=reducers,
            params=params), timeout=10)
        return reply.job_id

    def status(self, job_id: str) -> mapreduce_pb2.JobStatusReply:
        return self.stub().JobStatus(mapreduce_pb2.JobStatusRequest(job_id=job_id), timeout=5)

    def wait(self, job_id: str, timeout: float = 60.0) -> mapreduce_pb2.JobStatusReply:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status.state in ("done", "failed"):
                return status
            if time.monotonic() > deadline:
                pytest.fail(f"{job_id} not finished within {timeout} s: {status}")
            time.sleep(0.05)

    def output(self, status: mapreduce_pb2.JobStatusReply) -> dict[str, str]:
        assert status.state == "done", status.error
        return read_output(self.jobs_dir / "output" / name for name in status.outputs)

    def sequential(self, builtin: str, inputs, **params) -> dict[str, str]:
        return run_sequential(load_job(builtin_source(builtin), "reference", params),
                              self.input_dir, inputs)


@pytest.fixture
def mr(lab, tmp_path):
    lab_ = MapReduceLab(lab, tmp_path / "jobs", master_data=str(tmp_path / "master-data"))
    lab_.input_dir.mkdir(parents=True)
    return lab_
