"""The mapreduce lab, for real: jobs submitted from the host to the master machine, run by
three worker machines that fetch map output from each other over gRPC. Word count and the
inverted index equal a sequential run of the same job; a worker killed mid-job costs time,
not the answer; a job that cannot run says why and the next job still runs."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from distlab.mapreduce.client import MapReduceClient, MapReduceError, master_channel
from nodes.mapreduce.jobs import builtin_source, load_job, run_sequential
from tests.e2e.conftest import eventually, lab_fixture

pytestmark = pytest.mark.e2e
DISTLAB = str(Path(sys.executable).parent / "distlab")
WORDS = ["chain", "ring", "peer", "seed", "map", "reduce", "lease", "quorum", "raft",
         "paxos", "clock", "vector", "gossip", "epoch", "shard", "replica"]

testbed = lab_fixture("mapreduce")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four files of text, about 6 MiB in all: a few seconds of map work for three workers."""
    folder = tmp_path_factory.mktemp("mr") / "e2e" / "corpus"  # as named on the master
    folder.mkdir(parents=True)
    chooser = random.Random(11)
    vocabulary = WORDS + ["".join(chooser.choices("abcdefghij", k=6)) for _ in range(3000)]
    for part in range(4):
        lines = (" ".join(chooser.choices(vocabulary, k=12)) for _ in range(20_000))
        (folder / f"part{part}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def client(testbed, corpus):
    with master_channel(testbed) as channel:
        mr = MapReduceClient(channel)
        mr.upload_inputs([corpus], prefix="e2e")
        yield mr


def expected(job: str, corpus: Path) -> dict[str, str]:
    module = load_job(builtin_source(job), f"reference-{job}", {})
    return run_sequential(module, corpus.parent.parent, [f"e2e/{corpus.name}"])


@pytest.mark.parametrize("job", ["wordcount", "indexer"])
def test_output_equals_a_sequential_run(healed, client, corpus, job):
    reply = client.submit(job, ["e2e/" + corpus.name], reducers=3, split_mb=1)
    status = client.wait(reply.job_id, timeout=180)
    assert status.state == "done", status.error
    assert client.output(status) == expected(job, corpus)
    assert (status.map.idle, status.map.in_progress, status.reduce.completed) == (0, 0, 3)


def test_a_worker_killed_mid_job_costs_time_not_the_answer(healed, client, corpus):
    reply = client.submit("wordcount", ["e2e/" + corpus.name], reducers=3, split_mb=1)
    eventually(lambda: client.status(reply.job_id).map.completed >= 1, timeout=60, interval=0.1,
               what="some map task is done")
    healed.nemesis.kill("mapreduce-worker-1")
    status = client.wait(reply.job_id, timeout=240)
    assert status.state == "done", status.error
    assert client.output(status) == expected("wordcount", corpus)


def test_a_job_that_cannot_run_says_why_and_the_next_one_runs(healed, client, corpus):
    with pytest.raises(MapReduceError) as raised:
        client.submit("wordcount", ["../../etc/passwd"], reducers=2)
    assert "passwd" in str(raised.value)
    broken = client.submit(str(Path(__file__).with_name("mr_broken_job.py")),
                           ["e2e/" + corpus.name], reducers=2, split_mb=1)
    status = client.wait(broken.job_id, timeout=120)
    assert status.state == "failed" and "record" in status.error
    after = client.wait(client.submit("wordcount", ["e2e/" + corpus.name], reducers=2,
                                      split_mb=1).job_id, timeout=180)
    assert after.state == "done"
