"""Fuzzing the MapReduce master and worker (nodes.mapreduce) on real nodes on loopback.

The master's client methods (JobStatus, ListJobs, PutInput, ReadOutput) and
the worker-facing ones with the credential; SubmitJob and the worker
protocol without it are refused UNAUTHENTICATED whatever the body; the
worker's FetchPartition the same. Then bodies at the message-size boundary.
Afterwards the master still lists its jobs and runs a real job to its end
(the worker fuzzed beside it takes part), so neither was left broken.
"""

from __future__ import annotations

import pytest

from nodes.mapreduce.master import SPEC as MASTER_SPEC
from nodes.mapreduce.worker import SPEC as WORKER_SPEC
from nodes.rpc import mapreduce_pb2, mapreduce_pb2_grpc
from tests.integration.fuzz.support import KINDS, Target, check_size_limit, fuzz, methods_of
from tests.integration.mapreduce_support import write_corpus

LIMIT = 64 * 1024
MASTER = methods_of(mapreduce_pb2.DESCRIPTOR.services_by_name["Master"])
WORKER = methods_of(mapreduce_pb2.DESCRIPTOR.services_by_name["Worker"])
PROTECTED = frozenset(MASTER_SPEC.protected) | frozenset(m.path for m in WORKER)


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mr-fuzz-jobs")
    write_corpus(directory / "input", files=1, lines=50)
    return directory


@pytest.fixture(scope="module")
def master(shared_lab, jobs_dir):
    return shared_lab.start("mr-master-fuzz", spec=MASTER_SPEC, MR_JOBS_DIR=jobs_dir,
                            MAX_MESSAGE_BYTES=LIMIT)


@pytest.fixture(scope="module")
def worker(shared_lab, master, jobs_dir):
    return shared_lab.start("mr-worker-fuzz", spec=WORKER_SPEC, MR_JOBS_DIR=jobs_dir,
                            MR_MASTER=shared_lab.address(master), MR_ADVERTISE_HOST="127.0.0.1",
                            MR_HEARTBEAT_SECONDS=0.2, GRACE_SECONDS=0, MAX_MESSAGE_BYTES=LIMIT)


def still_runs_a_job(lab, master) -> None:
    stub = mapreduce_pb2_grpc.MasterStub(lab.channel(master))
    stub.ListJobs(mapreduce_pb2.ListJobsRequest(), timeout=5)
    job = stub.SubmitJob(mapreduce_pb2.SubmitJobRequest(
        builtin="wordcount", inputs=["corpus/doc-0.txt"], reducers=1), timeout=10).job_id
    lab.wait_until(lambda: stub.JobStatus(mapreduce_pb2.JobStatusRequest(job_id=job),
                                          timeout=5).state == "done",
                   timeout=60, what=f"job {job} done after the fuzzing")


@pytest.mark.parametrize("kind", KINDS)
def test_the_master_answers_every_body_cleanly(shared_lab, master, kind):
    fuzz(Target("mr-master", shared_lab.channel(master), MASTER), kind)
    fuzz(Target("mr-master-bare", shared_lab.bare_channel(master), MASTER, credentialed=False,
                protected=PROTECTED), kind, examples=10)


@pytest.mark.parametrize("kind", KINDS)
def test_the_worker_answers_every_body_cleanly(shared_lab, worker, kind):
    fuzz(Target("mr-worker", shared_lab.channel(worker), WORKER), kind)
    fuzz(Target("mr-worker-bare", shared_lab.bare_channel(worker), WORKER, credentialed=False,
                protected=PROTECTED), kind, examples=10)


def test_bodies_at_the_size_limit_then_a_job_still_runs(shared_lab, master, worker):
    check_size_limit(Target("mr-master", shared_lab.channel(master), MASTER), LIMIT)
    check_size_limit(Target("mr-worker", shared_lab.channel(worker), WORKER), LIMIT)
    still_runs_a_job(shared_lab, master)
