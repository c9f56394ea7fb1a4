"""The host side of the MapReduce lab against a loopback master and workers: uploading
inputs, submitting, following and reading output (distlab.mapreduce.client), and the
`mapreduce` workload with its `output` check, alone and played by the scenario context."""

from __future__ import annotations

import socket
import threading

import grpc
import pytest

from distlab.history import FAIL, OK
from distlab.mapreduce.client import MapReduceClient, MapReduceError
from distlab.mapreduce.workload import MapReduceConfig, MapReduceWorkload
from distlab.registry import load_registry
from distlab.scenarios.context import ScenarioContext
from distlab.scenarios.model import Check, Workload
from nodes.rpc import mapreduce_pb2
from tests.integration.mapreduce_support import mr  # noqa: F401 - the fixture


def test_upload_submit_follow_and_read_the_output(mr, tmp_path):  # noqa: F811
    mr.start_master()
    mr.start_worker("mr-worker-0")
    client = MapReduceClient(mr.lab.channel(mr.master))
    books = tmp_path / "books"
    (books / "sub").mkdir(parents=True)
    (books / "a.txt").write_text("the cat\nthe hat\n")
    (books / "sub" / "b.txt").write_text("a cat\n")
    (books / ".hidden").write_text("secret words\n")
    names = client.upload_inputs([books], "up")
    assert names == ["up/books"]
    assert (mr.input_dir / "up/books/sub/b.txt").read_text() == "a cat\n"
    assert not (mr.input_dir / "up/books/.hidden").exists()
    seen = []
    reply = client.submit("wordcount", names, 2)
    status = client.wait(reply.job_id, timeout=60, on_status=seen.append)
    assert status.state == "done" and seen[-1] == status
    assert client.output(status) == {"a": "1", "cat": "2", "hat": "1", "the": "2"}


def test_the_master_refuses_uploads_and_reads_it_should_not_serve(mr, tmp_path):  # noqa: F811
    mr.start_master(MR_MAX_INPUT_MB=1)
    client = MapReduceClient(mr.lab.channel(mr.master))
    small = tmp_path / "small.txt"
    small.write_text("x\n")
    for name in ("../escape.txt", "/etc/x", "a/../../b"):
        with pytest.raises(MapReduceError, match="INVALID_ARGUMENT"):
            client.upload(small, name)
    big = tmp_path / "big.txt"
    big.write_bytes(b"y\n" * (600 * 1024))
    with pytest.raises(MapReduceError, match="RESOURCE_EXHAUSTED"):
        client.upload(big, "big.txt")
    assert not (mr.input_dir / "big.txt").exists() and list(mr.input_dir.iterdir()) == []
    client.upload(small, "small.txt")
    job_id = client.submit("wordcount", ["small.txt"], 1).job_id
    with pytest.raises(MapReduceError, match="FAILED_PRECONDITION"):
        client.read_output(job_id, 0)
    stranger = mr.lab.bare_channel(mr.master)
    with pytest.raises(grpc.RpcError) as caught:
        MapReduceClient(stranger).stub.ReadOutput(
            mapreduce_pb2.ReadOutputRequest(job_id=job_id), timeout=5).next()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_workload_runs_jobs_and_the_output_check_compares_them(mr):  # noqa: F811
    mr.start_master()
    for index in range(2):
        mr.start_worker(f"mr-worker-{index}")
    workload = MapReduceWorkload(mr.lab.channel(mr.master), MapReduceConfig(
        processes=1, max_ops=2, seconds=60, seed=3, reducers=2, corpus_kib=64))
    workload.setup()
    history = workload.run()
    jobs = history.of("job")
    assert [op.type for op in jobs] == [OK, OK]
    assert [op.args["job"] for op in jobs] == ["wordcount", "indexer"]
    verdict = workload.check()
    assert verdict.valid is True, verdict.problems
    assert verdict.figures["jobs_compared"] == 2
    # A tampered output is caught: the check compares everything.
    status = workload.client.status(jobs[0].args["job_id"])
    (mr.jobs_dir / "output" / status.outputs[0]).write_text("alpha 1\n")
    tampered = workload.check()
    assert tampered.valid is False and "differ from the sequential run" in tampered.problems[0]


def test_the_workload_reaches_a_master_that_moved_and_follows_it_through_a_restart(
        mr):  # noqa: F811
    """In containers a restarted master comes back on another published port: the channel
    the workload started with stops answering, and `reconnect` gives it the new one."""
    mr.start_master()
    for index in range(2):
        mr.start_worker(f"mr-worker-{index}")
    with socket.socket() as probe:  # a port nothing listens on: the master's old address
        probe.bind(("127.0.0.1", 0))
        gone = f"127.0.0.1:{probe.getsockname()[1]}"
    workload = MapReduceWorkload(mr.lab.channel(gone), MapReduceConfig(
        processes=1, max_ops=4, seconds=60, seed=4, reducers=2, corpus_kib=64),
        reconnect=lambda: mr.lab.channel(mr.master))
    workload.client.reconnect()  # setup uploads through the master where it is now ...
    workload.setup()
    # ... and then the master "moves": the first job is submitted to its old address.
    workload.client.stub = MapReduceClient(mr.lab.channel(gone)).stub
    runner = threading.Thread(target=workload.run)
    runner.start()
    mr.lab.wait_until(lambda: any(op.type == OK for op in workload.history.of("job")),
                      timeout=30, what="a first job done")
    mr.restart_master()
    runner.join(60)
    jobs = workload.history.of("job")
    assert jobs[0].type == FAIL and jobs[0].result == {"unheard": True}, jobs[0]
    # A job submitted while the master restarts is not heard either; every other one ends.
    unheard = [op for op in jobs if op.result == {"unheard": True}]
    assert all(op.type == OK for op in jobs if op not in unheard), jobs
    verdict = workload.check()
    assert verdict.valid is True, verdict.problems
    assert verdict.figures["submissions_unheard"] == len(unheard)
    assert verdict.figures["jobs_compared"] == len(jobs) - len(unheard) >= 1


def test_a_submission_the_master_refuses_makes_the_output_check_invalid(mr):  # noqa: F811
    mr.start_master()
    mr.start_worker("mr-worker-0")
    workload = MapReduceWorkload(mr.lab.channel(mr.master), MapReduceConfig(
        processes=1, max_ops=1, seconds=30, seed=5, reducers=2, corpus_kib=16))
    workload.setup()
    workload.inputs = ["no-such-input"]
    workload.run()
    (refused,) = workload.history.of("job")
    assert refused.type == FAIL and refused.result == {"unheard": False}
    verdict = workload.check()
    assert verdict.valid is False and "refused" in verdict.problems[0], verdict.problems



class LoopbackTestbed:
    """What ScenarioContext asks of a Testbed to run workloads and checks: the registry, and
    a channel to the lab's entry role (wherever the master is now)."""

    def __init__(self, mr) -> None:  # noqa: F811
        self.registry = load_registry()
        self.mr = mr
        self.asked = 0

    def client(self, role: str) -> grpc.Channel:
        assert role == "mapreduce-master"
        self.asked += 1
        return self.mr.lab.channel(self.mr.master)


def test_the_scenario_context_plays_the_workload_and_the_output_check(mr):  # noqa: F811
    """The runner's side of a mapreduce scenario on loopback: the registered workload built
    from its scenario fields, following its jobs through a restart of the master (asking
    the testbed for the master again), and the `output` check on what it saw."""
    mr.start_master()
    for index in range(2):
        mr.start_worker(f"mr-worker-{index}")
    testbed = LoopbackTestbed(mr)
    context = ScenarioContext(testbed, lab="mapreduce", seed=6)
    context.start_workloads([Workload("mapreduce", 1, 0.0, 2.0, 100, reducers=2,
                                      corpus_kib=64)], seconds=6)
    mr.lab.wait_until(lambda: context.history.of("job"), timeout=30, what="a first job")
    mr.restart_master()
    context.sleep_until(6)
    context.stop_workloads()
    (verdict,) = context.settle_and_check([Check("output")], [])
    assert verdict.valid is True, verdict.problems
    assert verdict.figures["jobs_compared"] >= 2, verdict.figures
    assert testbed.asked >= 2, "the workload never reconnected through the runner"
