"""The mapreduce lab, for real: jobs submitted from the host to the master machine, run by
three worker machines that fetch map output from each other over gRPC. One lab for the
module; a test that breaks something starts and ends healed (`healed`), so the others
find it whole.

What MIT 6.5840's lab 1 tests, against containers: word count and the inverted index
equal a sequential run of the same job; map tasks and reduce tasks run at the same time on
different workers; without failures no task runs twice; the output is final when the
master says done; workers that crash or hang at random, restarted as they die, still
finish the job right. Then the paper's straggler (backup tasks: about the time without
it), the master killed and restarted mid-job, bad jobs and inputs (a clear error, and the
next job runs), the dashboard, and the lab's scenarios through `distlab run --short`.

Which worker ran what, and when, comes from the machines' own log lines: the master's
`mr_task_assigned` (time, task, attempt, worker) and the workers' `mr_task_reported`.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from distlab.errors import DistlabError
from distlab.mapreduce.client import MapReduceClient, MapReduceError, master_channel
from nodes.mapreduce.jobs import builtin_source, load_job, run_sequential
from nodes.rpc import mapreduce_pb2
from tests.e2e.conftest import (
    assert_dashboards_answer,
    eventually,
    lab_fixture,
    run_valid,
)

pytestmark = pytest.mark.e2e
HERE = Path(__file__).resolve().parent
MASTER = "mapreduce-master-1"
WORKERS = ("mapreduce-worker-1", "mapreduce-worker-2", "mapreduce-worker-3")
#: MR_JOBS_DIR on every machine of the lab (compose.yaml): the volume they share.
JOBS_DIR = "/data/jobs"
#: Enough log lines to hold every task event of the module.
LOG_TAIL = 50_000
WORDS = ["chain", "ring", "peer", "seed", "map", "reduce", "lease", "quorum", "raft",
         "paxos", "clock", "vector", "gossip", "epoch", "shard", "replica"]

testbed = lab_fixture("mapreduce")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The jobs' inputs, laid out as on the master's volume (every name starts with e2e/):

    corpus: four files of text, about 6 MiB: a few seconds of map work for three workers;
    small: six short files: tasks far quicker than the backup threshold (1 s);
    timing: six one-line files of the timing job's keys;
    crash: three files of 50 lines, each one split, for the crash job."""
    root = tmp_path_factory.mktemp("mr")
    chooser = random.Random(11)
    vocabulary = WORDS + ["".join(chooser.choices("abcdefghij", k=6)) for _ in range(3000)]

    def write(name: str, files: int, lines: int) -> None:
        folder = root / "e2e" / name
        folder.mkdir(parents=True)
        for part in range(files):
            text = (" ".join(chooser.choices(vocabulary, k=12)) for _ in range(lines))
            (folder / f"part{part}.txt").write_text("\n".join(text) + "\n")

    write("corpus", 4, 20_000)
    write("small", 6, 200)
    write("crash", 3, 50)
    (root / "e2e" / "timing").mkdir()
    for part in range(6):
        (root / "e2e" / "timing" / f"part{part}.txt").write_text("p0 p1 p2\n")
    return root


@pytest.fixture(scope="module")
def client(testbed, inputs):
    """The host's client of the master; it finds the master again after a restart (the
    machine then publishes its port elsewhere)."""
    with master_channel(testbed) as channel:
        mr = MapReduceClient(channel, reconnect=lambda: master_channel(testbed))
        mr.upload_inputs(sorted((inputs / "e2e").iterdir()), prefix="e2e")
        yield mr
        mr.close()


@functools.cache
def sequential(inputs: Path, name: str, job: str = "wordcount") -> dict[str, str]:
    """The job run in one process on input e2e/`name`: `job` is a built-in or a .py file."""
    source = Path(job).read_text() if job.endswith(".py") else builtin_source(job)
    return run_sequential(load_job(source, "reference", {}), inputs, [f"e2e/{name}"])


def run_job(client: MapReduceClient, job: str, name: str, *, reducers: int = 3,
            timeout: float = 240, **params: str):
    """Submit `job` over e2e/`name` in splits of 1 MiB and follow it to its end."""
    reply = client.submit(job, [f"e2e/{name}"], reducers, split_mb=1, params=params)
    return reply, client.wait(reply.job_id, timeout=timeout)


# -- what the machines say -------------------------------------------------------------------


def log_events(testbed, machine: str, event: str, **fields) -> list[dict]:
    """The JSON log lines of `event` that `machine` printed (every run of it), with `fields`."""
    found = []
    for line in testbed.machine(machine).logs(tail=LOG_TAIL).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event and all(
                record.get(key) == value for key, value in fields.items()):
            found.append(record)
    return found


def node_name(testbed, machine: str) -> str:
    """The name `machine` gives itself to the master (its log lines' `node`)."""
    (started, *_) = log_events(testbed, machine, "node_started") or [{}]
    return started.get("node") or machine


def state_of(testbed, name: str) -> dict[str, str]:
    """What a machine says of itself through Control.Status ({} when it cannot answer)."""
    try:
        with testbed.machine(name).control() as control:
            return dict(control.status().state)
    except DistlabError:  # exited (it crashed) or restarting: it runs nothing
        return {}


def workers_idle(testbed) -> bool:
    return not any(state_of(testbed, name).get("running") for name in WORKERS)


@dataclass(frozen=True)
class Window:
    """An accepted attempt: handed out by the master at `start`, reported done at `end`."""

    task: str
    worker: str
    start: float
    end: float


def task_windows(testbed, job_id: str) -> list[Window]:
    assigned = {(event["task"], event["attempt"]): event
                for event in log_events(testbed, MASTER, "mr_task_assigned", job=job_id)}
    return [Window(event["task"], worker, assigned[event["task"], event["attempt"]]["ts"],
                   event["ts"])
            for worker in WORKERS
            for event in log_events(testbed, worker, "mr_task_reported", job=job_id,
                                    accepted=True)]


def overlapping_on_two_workers(windows: Iterable[Window]) -> tuple[Window, Window] | None:
    for one, other in itertools.combinations(windows, 2):
        if one.worker != other.worker and one.start < other.end and other.start < one.end:
            return one, other
    return None


def assert_output_final(client: MapReduceClient, status, settle: Callable[[], object]) -> None:
    """Read a done job's output, let `settle` wait for whatever attempts still ran to end,
    read it again: the same bytes."""
    partitions = range(len(status.outputs))
    before = [client.read_output(status.job_id, partition) for partition in partitions]
    settle()
    assert [client.read_output(status.job_id, partition) for partition in partitions] == before


class WorkerSupervisor:
    """Starts a worker machine again as soon as it has exited, as a process supervisor would
    (compose.yaml gives the lab's machines no restart policy: a crash must be visible)."""

    def __init__(self, testbed) -> None:
        self.testbed = testbed
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor",
                                        daemon=True)

    def __enter__(self) -> WorkerSupervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _watch(self) -> None:
        while not self._stop.wait(0.3):
            try:
                for machine in self.testbed.machines():
                    if machine.info.role == "mapreduce-worker" and machine.info.state == "exited":
                        machine.start()
                        self.restarts += 1
            except DistlabError:
                continue  # the engine did not answer this time: look again


# -- the textbook behaviour ----------------------------------------------------------------


@pytest.mark.parametrize("job", ["wordcount", "indexer"])
def test_output_equals_a_sequential_run(testbed, client, inputs, job):
    _, status = run_job(client, job, "corpus")
    assert status.state == "done", status.error
    assert client.output(status) == sequential(inputs, "corpus", job)
    assert (status.map.idle, status.map.in_progress, status.reduce.completed) == (0, 0, 3)


def test_map_and_reduce_tasks_run_in_parallel_on_different_workers(testbed, client, inputs):
    # Every task of the timing job sleeps a second: six maps and three reduces on three
    # workers overlap unless the master hands out one task at a time.
    reply, status = run_job(client, str(HERE / "mr_timing_job.py"), "timing", seconds="1")
    assert status.state == "done", status.error
    assert client.output(status) == {"p0": "6", "p1": "6", "p2": "6"}
    tasks = reply.map_tasks + reply.reduce_tasks
    windows = eventually(lambda: found if len(found := task_windows(testbed, reply.job_id))
                         >= tasks else None,
                         timeout=30, what="every task's report in the workers' logs")
    assert len({window.worker for window in windows}) >= 2, windows
    for phase in ("m", "r"):
        pair = overlapping_on_two_workers(w for w in windows if w.task.startswith(phase))
        assert pair, f"no two {phase} tasks overlapped on different workers: {windows}"


def test_without_failures_no_task_runs_twice(testbed, client, inputs):
    # Tasks of a few milliseconds: far below the backup threshold (MR_BACKUP_AFTER_SECONDS),
    # so no backup copy runs either.
    reply, status = run_job(client, "wordcount", "small")
    assert status.state == "done", status.error
    assert client.output(status) == sequential(inputs, "small")
    tasks = sorted([f"m{i}" for i in range(reply.map_tasks)]
                   + [f"r{i}" for i in range(reply.reduce_tasks)])
    assert sorted(status.attempts) == tasks and set(status.attempts.values()) == {1}
    handed = log_events(testbed, MASTER, "mr_task_assigned", job=reply.job_id)
    assert sorted(event["task"] for event in handed) == tasks
    assert {event["reason"] for event in handed} == {"first"}

    def executions() -> list[str]:
        return sorted(event["task"] for worker in WORKERS
                      for event in log_events(testbed, worker, "mr_task_reported",
                                              job=reply.job_id))

    ran = eventually(lambda: found if len(found := executions()) >= len(tasks) else None,
                     timeout=30, what="every execution in the workers' logs")
    assert ran == tasks


def test_a_worker_killed_mid_job_costs_time_not_the_answer(healed, client, inputs):
    reply = client.submit("wordcount", ["e2e/corpus"], reducers=3, split_mb=1)
    eventually(lambda: client.status(reply.job_id).map.completed >= 1, timeout=60, interval=0.1,
               what="some map task is done")
    healed.nemesis.kill("mapreduce-worker-1")
    status = client.wait(reply.job_id, timeout=240)
    assert status.state == "done", status.error
    assert client.output(status) == sequential(inputs, "corpus")


def test_workers_that_crash_or_hang_at_random_still_finish_the_job_right(healed, client,
                                                                        inputs):
    job = str(HERE / "mr_crash_job.py")
    # The crash job's first roll is a crash: it leaves this file on the shared volume.
    first_crash = f"{JOBS_DIR}/input/.mr-crash-{uuid.uuid4().hex}"
    with WorkerSupervisor(healed) as supervisor:
        _, status = run_job(client, job, "crash", reducers=2, timeout=300, crash="1",
                            max_sleep="10", first_crash=first_crash)
        assert status.state == "done", status.error
        assert client.output(status) == sequential(inputs, "crash", job)
        print(f"worker restarts: {supervisor.restarts}; attempts: {dict(status.attempts)}")
        assert supervisor.restarts >= 1
        assert sum(status.attempts.values()) > len(status.attempts), "no task ran again"
        # Attempts that hung past their task's end still finish, late; nothing they write
        # may change the output the master called done.
        assert_output_final(client, status, lambda: eventually(
            lambda: workers_idle(healed), timeout=60, what="every worker idle"))


STRAGGLER_REDUCERS = 12  # several reduce tasks per worker: the straggler asks for some
BACKUP_GRACE_SECONDS = 6.0


def test_a_straggler_is_backed_up_and_the_job_takes_about_as_long_as_without_it(
        healed, client, inputs):
    started = time.monotonic()
    _, baseline_status = run_job(client, "wordcount", "corpus", reducers=STRAGGLER_REDUCERS)
    baseline = time.monotonic() - started
    assert baseline_status.state == "done", baseline_status.error
    straggler = WORKERS[1]
    # Every partition fetch it makes waits 4 s (a worker with a slow network): a reduce
    # task on it takes 4 s per map task, past the task timeout.
    fault = healed.nemesis.rpc(straggler, "delay", seconds=4.0, outbound=True,
                               method="/distlab.mapreduce.Worker/FetchPartition")
    # Workers pull tasks, so which worker runs a reduce task is up to timing: a run in which
    # the straggler happened to ask for none has nothing to back up and is run again.
    for _ in range(3):
        started = time.monotonic()
        reply, status = run_job(client, "wordcount", "corpus", reducers=STRAGGLER_REDUCERS)
        slowed = time.monotonic() - started
        assert status.state == "done", status.error
        assert client.output(status) == sequential(inputs, "corpus")
        on_straggler = [event["task"] for event in log_events(
            healed, MASTER, "mr_task_assigned", job=reply.job_id,
            worker=node_name(healed, straggler)) if event["task"].startswith("r")]
        if on_straggler:
            break
    print(f"job time: {baseline:.1f} s without a straggler, {slowed:.1f} s with one "
          f"({slowed / baseline:.2f}x); attempts {dict(status.attempts)}")
    assert on_straggler, "the straggler ran no reduce task in 3 jobs: nothing to back up"
    assert any(status.attempts[task] > 1 for task in on_straggler), (on_straggler,
                                                                     dict(status.attempts))
    # A backup starts once the task has run MR_BACKUP_AFTER_SECONDS (1 s) and twice the
    # median: the job takes the baseline plus about that. Without the backup the straggler's
    # task alone would fetch 8 partitions at 4 s each, over 30 s.
    assert slowed < baseline + BACKUP_GRACE_SECONDS, (
        f"{slowed:.1f} s with a straggler, {baseline:.1f} s without")
    # Its own attempt goes on and reports late: the output the master called done stays.
    healed.nemesis.end(fault.id)
    assert_output_final(client, status, lambda: eventually(
        lambda: log_events(healed, straggler, "mr_task_reported", job=reply.job_id,
                           accepted=False),
        timeout=60, what="the straggler's late report"))


def test_the_master_killed_mid_job_finishes_it_after_a_restart(healed, client, inputs):
    reply = client.submit("wordcount", ["e2e/corpus"], reducers=3, split_mb=1)
    eventually(lambda: client.status(reply.job_id).map.completed >= 1, timeout=60, interval=0.1,
               what="some map task is done")
    healed.nemesis.kill(MASTER)
    # Started again only once it is down: a start while the kill lands would do nothing.
    eventually(lambda: healed.machine(MASTER).info.state == "exited", timeout=30,
               what=f"{MASTER} down")
    healed.nemesis.start(MASTER)
    status = client.wait(reply.job_id, timeout=240)  # through the restart, on its new port
    assert status.state == "done", status.error
    assert client.output(status) == sequential(inputs, "corpus")
    restored = log_events(healed, MASTER, "mr_state_restored")
    assert restored and restored[-1]["active"] == reply.job_id, restored[-1:]


# -- bad input -----------------------------------------------------------------------------


def test_bad_jobs_and_inputs_get_a_clear_error_and_the_next_job_runs(testbed, client, inputs,
                                                                    tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "nothing.txt").write_bytes(b"")
    (empty,) = client.upload_inputs([tmp_path / "empty"], "e2e-empty")
    refused = [(["e2e/no-such-file.txt"], grpc.StatusCode.NOT_FOUND, "does not exist"),
               ([empty], grpc.StatusCode.INVALID_ARGUMENT, "the input is empty"),
               (["../../etc/passwd"], grpc.StatusCode.INVALID_ARGUMENT, "without '..'"),
               (["e2e/../../etc/passwd"], grpc.StatusCode.INVALID_ARGUMENT, "without '..'"),
               (["/etc/passwd"], grpc.StatusCode.INVALID_ARGUMENT, "relative")]
    for names, code, words in refused:
        with pytest.raises(MapReduceError) as raised:
            client.submit("wordcount", names, reducers=2)
        assert raised.value.code == code and words in str(raised.value), (names, raised.value)
    for request in (mapreduce_pb2.SubmitJobRequest(builtin="../wordcount", inputs=["e2e/small"],
                                                   reducers=1),
                    mapreduce_pb2.SubmitJobRequest(builtin="wordcount", name="../../x",
                                                   inputs=["e2e/small"], reducers=1)):
        with pytest.raises(grpc.RpcError) as raised:
            client.stub.SubmitJob(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a plain name" in raised.value.details()
    with pytest.raises(MapReduceError) as raised:
        client.upload(tmp_path / "empty" / "nothing.txt", "../escape.txt")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT

    unimportable = tmp_path / "unimportable.py"
    unimportable.write_text("import distlab_no_such_module\n\n\ndef map(key, value):\n"
                            "    return []\n\n\ndef reduce(key, values):\n    return 0\n")
    _, status = run_job(client, str(unimportable), "small", reducers=2, timeout=120)
    assert status.state == "failed"
    assert re.search(r"^map task \d+ \(attempt \d+ on [\w.-]+\): the job module does not "
                     r"import: ModuleNotFoundError: .*distlab_no_such_module", status.error), \
        status.error
    # mr_broken_job.py raises in map on every line with "quorum" in it.
    _, status = run_job(client, str(HERE / "mr_broken_job.py"), "corpus", reducers=2,
                        timeout=120)
    assert status.state == "failed"
    assert re.search(r"^map task \d+ \(attempt \d+ on [\w.-]+\): map raised on record "
                     r"e2e/corpus/part\d\.txt at byte \d+ \(.*\): ValueError: this job cannot "
                     r"read a line with 'quorum'", status.error), status.error

    _, after = run_job(client, "wordcount", "small")
    assert after.state == "done", after.error
    assert client.output(after) == sequential(inputs, "small")


# -- what a user watches and runs ----------------------------------------------------------


def test_every_mapreduce_dashboard_query_returns_series(testbed, client, inputs):
    _, status = run_job(client, "indexer", "small", reducers=2)
    assert status.state == "done", status.error
    assert_dashboards_answer("mapreduce")


@pytest.mark.parametrize("scenario, kind", [("mapreduce-kill-worker", "kill"),
                                            ("mapreduce-restart-master", "restart"),
                                            ("mapreduce-slow-worker", "rpc")])
def test_each_mapreduce_scenario_comes_out_valid(testbed, tmp_path, scenario, kind):
    outcome = run_valid(f"{scenario}.yaml", tmp_path)
    assert [fault["kind"] for fault in outcome["faults"]] == [kind]
    (check,) = outcome["checks"]
    assert (check["name"], check["outcome"]) == ("output", "valid"), check
    assert check["figures"]["jobs_compared"] >= 1, check["figures"]
    assert testbed.nemesis.active() == [], "a fault outlived its scenario"
