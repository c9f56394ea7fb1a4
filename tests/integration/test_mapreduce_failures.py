"""MapReduce through failures on loopback: a hanging worker, a straggler with backup tasks,
and the master restarted mid-job. Each job's output must equal the sequential run.

The misbehaviour comes from the jobs themselves, as in MIT 6.5840's crash tests: job
modules that hang or hold on cue (files named in their params), so the framework under
test is the real one throughout."""

from __future__ import annotations

from nodes.mapreduce.jobs import builtin_source
from tests.integration.conftest import scrape
from tests.integration.mapreduce_support import mr, write_corpus  # noqa: F401 - the fixture

WORDCOUNT = builtin_source("wordcount")

#: The first map call on params["victim"] hangs until params["release"] exists (at most 30 s).
HANG_ONCE = WORDCOUNT.replace("def map(key, value):", '''import os
import time

params = {}


def _hang_once(key):
    if key != params["victim"]:
        return
    try:
        os.close(os.open(params["marker"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    deadline = time.monotonic() + 30
    while not os.path.exists(params["release"]) and time.monotonic() < deadline:
        time.sleep(0.05)


def map(key, value):
    _hang_once(key)''')

#: Reduce waits while params["hold"] exists (at most 30 s): the job stays mid-reduce.
HOLD_REDUCE = WORDCOUNT.replace("def reduce(key, values):", '''import os
import time

params = {}


def reduce(key, values):
    deadline = time.monotonic() + 30
    while os.path.exists(params["hold"]) and time.monotonic() < deadline:
        time.sleep(0.05)''')


def events(node, event: str) -> float:
    return scrape(node).get("distlab_mapreduce_scheduler_events_total", event=event)


def test_a_hanging_worker_s_task_is_reassigned_after_the_timeout(mr, tmp_path):  # noqa: F811
    inputs = write_corpus(mr.input_dir)
    mr.start_master(MR_TASK_TIMEOUT_SECONDS=1, MR_BACKUP_FRACTION=0)
    for name in ("mr-worker-0", "mr-worker-1"):
        mr.start_worker(name)
    release = tmp_path / "release"
    try:
        status = mr.wait(mr.submit(source=HANG_ONCE, inputs=inputs, victim=inputs[0],
                                   marker=str(tmp_path / "hung"), release=str(release)))
        assert (tmp_path / "hung").exists() and not release.exists()  # it hung throughout
        assert mr.output(status) == mr.sequential("wordcount", inputs)
        assert sorted(status.attempts.values())[-1] == 2
        assert list(status.attempts.values()).count(2) == 1
        assert events(mr.master, "timed_out") >= 1
    finally:
        release.touch()


def test_backup_tasks_finish_a_job_whose_last_task_straggles(mr, tmp_path):  # noqa: F811
    inputs = write_corpus(mr.input_dir)
    # A timeout far away: only a backup copy can finish the straggling task soon.
    mr.start_master(MR_TASK_TIMEOUT_SECONDS=60, MR_BACKUP_FRACTION=0.5,
                    MR_BACKUP_AFTER_SECONDS=0.5)
    for name in ("mr-worker-0", "mr-worker-1"):
        mr.start_worker(name)
    release = tmp_path / "release"
    try:
        status = mr.wait(mr.submit(source=HANG_ONCE, inputs=inputs, victim=inputs[-1],
                                   marker=str(tmp_path / "hung"), release=str(release)),
                         timeout=30)
        assert not release.exists()
        assert mr.output(status) == mr.sequential("wordcount", inputs)
        assert events(mr.master, "backups") >= 1
        assert scrape(mr.master).get("distlab_mapreduce_task_attempts_total", phase="map",
                                     reason="backup") >= 1
    finally:
        release.touch()


def test_a_master_restarted_mid_job_finishes_it_without_redoing_done_work(mr, tmp_path):  # noqa: F811
    inputs = write_corpus(mr.input_dir)
    hold = tmp_path / "hold"
    hold.touch()
    # No backups and no timeouts: a busy machine must not start a second attempt for its
    # own reasons, so any attempt 2 here could only be the restart redoing work.
    mr.start_master(MR_BACKUP_FRACTION=0, MR_TASK_TIMEOUT_SECONDS=120)
    for name in ("mr-worker-0", "mr-worker-1"):
        mr.start_worker(name)
    job_id = mr.submit(source=HOLD_REDUCE, inputs=inputs, hold=str(hold))
    mr.lab.wait_until(lambda: mr.status(job_id).reduce.in_progress == 2, what="reduces running")
    before = mr.status(job_id)
    assert before.state == "reduce"
    mr.restart_master()
    assert mr.status(job_id).reduce.in_progress == 2  # the restarted master knows its job
    hold.unlink()
    status = mr.wait(job_id)
    assert mr.output(status) == mr.sequential("wordcount", inputs)
    # Map output lived on the workers, which did not restart: nothing ran twice.
    assert set(status.attempts.values()) == {1}, status.attempts
    assert events(mr.master, "reexecuted") == 0


#: The first reduce call of the job hangs until params["release"] exists (at most 30 s).
HANG_ONE_REDUCE = WORDCOUNT.replace("def reduce(key, values):", '''import os
import time

params = {}


def reduce(key, values):
    try:
        os.close(os.open(params["marker"], os.O_CREAT | os.O_EXCL))
        deadline = time.monotonic() + 30
        while not os.path.exists(params["release"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    except FileExistsError:
        pass''')


def test_once_done_the_output_is_final_a_late_attempt_changes_nothing(mr, tmp_path):  # noqa: F811
    inputs = write_corpus(mr.input_dir)
    mr.start_master(MR_TASK_TIMEOUT_SECONDS=1, MR_BACKUP_FRACTION=0)
    workers = [mr.start_worker(f"mr-worker-{i}") for i in range(2)]
    release = tmp_path / "release"
    try:
        status = mr.wait(mr.submit(source=HANG_ONE_REDUCE, inputs=inputs, reducers=2,
                                   marker=str(tmp_path / "hung"), release=str(release)))
        outputs = {name: (mr.jobs_dir / "output" / name).read_bytes() for name in status.outputs}
    finally:
        release.touch()

    def reduces_reported() -> float:
        return sum(scrape(worker).get("distlab_mapreduce_worker_tasks_total", phase="reduce",
                                      outcome="ok") for worker in workers)

    def leftovers() -> list:
        return list((mr.jobs_dir / "output" / status.job_id).glob(".attempts/*"))

    # The hung attempt wakes, writes its output (before the worker counts it) and reports
    # after the job is done: the master throws that output away.
    mr.lab.wait_until(lambda: reduces_reported() == 3 and not leftovers(),
                      what="the late reduce's report, its output removed")
    assert {name: (mr.jobs_dir / "output" / name).read_bytes()
            for name in status.outputs} == outputs
    assert mr.output(mr.status(status.job_id)) == mr.sequential("wordcount", inputs)
