"""MapReduce on loopback: a master and workers (in-process nodes) run the built-in jobs; the
output equals a sequential single-process run, and without failures no task runs twice."""

from __future__ import annotations

import time

import grpc
import pytest

from nodes.common.config import ConfigError
from nodes.rpc import mapreduce_pb2, mapreduce_pb2_grpc
from tests.integration.conftest import scrape
from tests.integration.mapreduce_support import mr, write_corpus  # noqa: F401 - the fixture


@pytest.mark.parametrize("job", ["wordcount", "indexer"])
def test_a_job_s_output_equals_the_sequential_run_and_no_task_runs_twice(mr, job):  # noqa: F811
    inputs = write_corpus(mr.input_dir)
    # Backup copies are re-executions by design: off here, where we count executions.
    mr.start_master(MR_BACKUP_FRACTION=0)
    workers = [mr.start_worker(f"mr-worker-{i}") for i in range(3)]
    job_id = mr.submit(job, inputs=inputs, reducers=3)
    status = mr.wait(job_id)
    assert mr.output(status) == mr.sequential(job, inputs)
    assert status.map.completed >= 8 and status.reduce.completed == 3
    assert set(status.attempts.values()) == {1}
    assert status.counters["map_records_in"] == 4 * 600
    ran = [scrape(worker).get("distlab_mapreduce_worker_tasks_total", phase="map",
                              outcome="ok") for worker in workers]
    assert sum(ran) == status.map.completed
    master = scrape(mr.master)
    assert master.get("distlab_mapreduce_tasks_completed_total", phase="reduce") == 3
    assert master.get("distlab_mapreduce_jobs_total", outcome="done") == 1


#: Word count whose map tasks wait (at most 10 s) until map tasks run in two threads at
#: once: each records its thread in params["dir"] and waits for a second one to appear
#: (creating params["alone"] when none did).
TOGETHER = """
import os
import re
import threading
import time

params = {}
WORD = re.compile(r"[A-Za-z]+")
_seen = set()


def map(key, value):
    me = threading.get_ident()
    if me not in _seen:
        _seen.add(me)
        open(os.path.join(params["dir"], str(me)), "w").close()
        deadline = time.monotonic() + 10
        while len(os.listdir(params["dir"])) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        if len(os.listdir(params["dir"])) < 2:
            open(params["alone"], "w").close()
    for word in WORD.findall(value):
        yield word, 1


def reduce(key, values):
    return sum(values)
"""


def test_map_tasks_really_run_at_once_on_different_workers(mr, tmp_path):  # noqa: F811
    inputs = write_corpus(mr.input_dir)
    (tmp_path / "threads").mkdir()
    mr.start_master()
    workers = [mr.start_worker(f"mr-worker-{i}") for i in range(2)]
    status = mr.wait(mr.submit(source=TOGETHER, inputs=inputs, dir=str(tmp_path / "threads"),
                               alone=str(tmp_path / "alone")))
    assert mr.output(status) == mr.sequential("wordcount", inputs)
    # Two worker threads were inside map at the same time: neither waited alone.
    assert len(list((tmp_path / "threads").iterdir())) == 2
    assert not (tmp_path / "alone").exists()
    assert all(scrape(worker).get("distlab_mapreduce_worker_tasks_total", phase="map",
                                  outcome="ok") for worker in workers)


def test_grep_and_sort_run_and_the_sort_output_is_in_order(mr):  # noqa: F811
    (mr.input_dir / "lines.txt").write_text("".join(f"{k:05d} row {k}\n"
                                                    for k in (7, 3, 99, 42, 15000, 1)))
    mr.start_master()
    mr.start_worker("mr-worker-0")
    grep = mr.wait(mr.submit("grep", inputs=["lines.txt"], reducers=2, pattern="row 4"))
    assert grep.state == "done"
    sort = mr.wait(mr.submit("sort", inputs=["lines.txt"], reducers=4))
    keys = [line.split(" ")[0] for name in sort.outputs
            for line in (mr.jobs_dir / "output" / name).read_text().splitlines()]
    assert keys == sorted(keys) and len(keys) == 6


MAP_RAISES = """
def map(key, value):
    if "omega" in value:
        raise ValueError("cannot stand omega")
    yield value, 1

def reduce(key, values):
    return len(values)
"""


def test_bad_jobs_fail_clearly_and_the_next_job_still_runs(mr):  # noqa: F811
    inputs = write_corpus(mr.input_dir, files=1, lines=200)
    (mr.input_dir / "empty.txt").write_text("")
    mr.start_master()
    mr.start_worker("mr-worker-0")
    stub = mr.stub()

    def refused(**fields) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            stub.SubmitJob(mapreduce_pb2.SubmitJobRequest(reducers=2, **fields), timeout=5)
        return caught.value

    missing = refused(builtin="wordcount", inputs=["corpus/nope.txt"])
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "nope.txt" in missing.details()
    empty = refused(builtin="wordcount", inputs=["empty.txt"])
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in empty.details()
    for fields in ({"builtin": "wordcount", "inputs": ["../master-data"]},
                   {"builtin": "wordcount", "inputs": ["/etc/passwd"]},
                   {"builtin": "../wordcount", "inputs": inputs},
                   {"module_source": MAP_RAISES, "name": "../../evil", "inputs": inputs}):
        assert refused(**fields).code() == grpc.StatusCode.INVALID_ARGUMENT, fields

    broken = mr.wait(mr.submit(source="import no_such_module_here\n", inputs=inputs))
    assert broken.state == "failed" and "does not import" in broken.error
    assert "no_such_module_here" in broken.error and "map task" in broken.error

    raising = mr.wait(mr.submit(source=MAP_RAISES, inputs=inputs))
    assert raising.state == "failed"
    assert "map task 0" in raising.error and "corpus/doc-0.txt at byte" in raising.error
    assert "cannot stand omega" in raising.error

    after = mr.wait(mr.submit("wordcount", inputs=inputs))
    assert mr.output(after) == mr.sequential("wordcount", inputs)


def test_only_the_lab_may_submit_but_anyone_may_read_the_status(mr):  # noqa: F811
    inputs = write_corpus(mr.input_dir, files=1, lines=10)
    mr.start_master()
    job_id = mr.submit("wordcount", inputs=inputs)
    stranger = mapreduce_pb2_grpc.MasterStub(mr.lab.bare_channel(mr.master))
    with pytest.raises(grpc.RpcError) as caught:
        stranger.SubmitJob(mapreduce_pb2.SubmitJobRequest(builtin="wordcount", inputs=inputs,
                                                          reducers=1), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stranger.JobStatus(mapreduce_pb2.JobStatusRequest(job_id=job_id),
                              timeout=5).state == "map"


def test_an_idle_worker_s_held_ask_is_answered_as_soon_as_a_job_comes(mr):  # noqa: F811
    inputs = write_corpus(mr.input_dir, files=1, lines=50)
    # The longest hold there is: a worker that only learned of the job at its next ask
    # would take seconds per phase; held asks answered at once take a fraction of one.
    mr.start_master(MR_POLL_SECONDS=5, MR_WORKER_TIMEOUT_SECONDS=30)
    mr.start_worker("mr-worker-0")
    mr.lab.wait_until(lambda: scrape(mr.master).get("distlab_mapreduce_workers") == 1,
                      what="the worker's first ask")
    started = time.monotonic()
    status = mr.wait(mr.submit("wordcount", inputs=inputs, reducers=2))
    assert status.state == "done"
    assert time.monotonic() - started < 4.0  # the ask held since before the job: < 5 s
    assert mr.output(status) == mr.sequential("wordcount", inputs)


def test_a_poll_longer_than_workers_wait_for_is_refused(mr):  # noqa: F811
    with pytest.raises(ConfigError, match="MR_POLL_SECONDS='6' must be > 0 and <= 5"):
        mr.start_master(MR_POLL_SECONDS=6)
