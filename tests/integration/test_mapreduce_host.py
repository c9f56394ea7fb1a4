"""The host side of the MapReduce lab against a loopback master and workers: uploading
inputs, submitting, following and reading output (distlab.mapreduce.client), and the
`mapreduce` workload with its `output` check."""

from __future__ import annotations

import grpc
import pytest

from distlab.history import OK
from distlab.mapreduce.client import MapReduceClient, MapReduceError
from distlab.mapreduce.workload import MapReduceConfig, MapReduceWorkload
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
