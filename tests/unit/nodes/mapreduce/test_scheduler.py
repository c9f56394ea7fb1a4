"""nodes/mapreduce/scheduler.py: the master's job state machine, driven with a fake clock."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.mapreduce.scheduler import (
    COMPLETED,
    DONE,
    FAILED,
    IDLE,
    IN_PROGRESS,
    KEEP_FINISHED_JOBS,
    MAP,
    REDUCE,
    Scheduler,
    Split,
)


def submit(scheduler: Scheduler, maps: int = 3, reducers: int = 2, now: float = 0.0):
    return scheduler.submit(name="wc", module_source="", params={}, reducers=reducers,
                            splits=[Split(f"in-{i}", 0, 10) for i in range(maps)], now=now)


def finish(scheduler: Scheduler, assignment, worker: str, now: float, **kwargs):
    return scheduler.report(worker, "inc-" + worker, assignment.job.job_id,
                            assignment.task.kind, assignment.task.index, assignment.attempt,
                            ok=True, now=now, **kwargs)


def ask(scheduler: Scheduler, worker: str, now: float):
    return scheduler.request_task(worker, f"{worker}:50051", "inc-" + worker, now)


def test_maps_first_then_reduces_then_done_with_no_task_run_twice():
    scheduler = Scheduler()
    job = submit(scheduler)
    seen = []
    now = 0.0
    while job.state != DONE:
        now += 0.1
        assignment = ask(scheduler, "w1", now)
        assert assignment is not None
        seen.append((assignment.task.kind, assignment.task.index))
        assert finish(scheduler, assignment, "w1", now + 0.05).accepted
    assert seen == [(MAP, 0), (MAP, 1), (MAP, 2), (REDUCE, 0), (REDUCE, 1)]
    assert all(task.attempts_started == 1 for task in job.maps + job.reduces)


def test_reduces_wait_until_every_map_is_done():
    scheduler = Scheduler()
    submit(scheduler, maps=2)
    first = ask(scheduler, "w1", 0.0)
    second = ask(scheduler, "w2", 0.0)
    assert (first.task.kind, second.task.kind) == (MAP, MAP)
    assert ask(scheduler, "w3", 0.1) is None  # nothing idle, too early for a backup
    finish(scheduler, first, "w1", 0.2)
    assert ask(scheduler, "w1", 0.3) is None
    finish(scheduler, second, "w2", 0.4)
    assert ask(scheduler, "w1", 0.5).task.kind == REDUCE


def test_an_attempt_past_the_timeout_is_given_to_another_worker_and_the_first_report_wins():
    scheduler = Scheduler(task_timeout=10.0, worker_timeout=60.0, backup_after=100.0)
    job = submit(scheduler, maps=1, reducers=1)
    hung = ask(scheduler, "slow", 0.0)
    assert ask(scheduler, "fast", 5.0) is None
    retry = ask(scheduler, "fast", 10.5)
    assert retry.task is hung.task and retry.attempt != hung.attempt
    assert job.maps[0].state == IN_PROGRESS
    assert finish(scheduler, retry, "fast", 11.0).accepted
    # The hung attempt wakes up and reports: a duplicate, ignored.
    assert not finish(scheduler, hung, "slow", 12.0).accepted
    assert job.maps[0].done_worker == "fast"


def test_a_stale_attempt_that_reports_first_still_wins():
    scheduler = Scheduler(task_timeout=1.0, worker_timeout=60.0)
    job = submit(scheduler, maps=1, reducers=1)
    slow = ask(scheduler, "slow", 0.0)
    retry = ask(scheduler, "other", 2.0)
    assert finish(scheduler, slow, "slow", 2.5).accepted
    assert not finish(scheduler, retry, "other", 3.0).accepted
    assert job.maps[0].done_attempt == slow.attempt


def test_a_lost_map_worker_s_completed_maps_go_back_to_idle():
    scheduler = Scheduler(worker_timeout=3.0)
    job = submit(scheduler, maps=2, reducers=1)
    for now in (0.0, 0.1):
        finish(scheduler, ask(scheduler, "doomed", now), "doomed", now + 0.01)
    assert job.state == REDUCE
    reduce_ = ask(scheduler, "survivor", 1.0)
    assert reduce_.task.kind == REDUCE
    scheduler.heartbeat("survivor", "inc-survivor", job.job_id, REDUCE, 0, reduce_.attempt, 4.5)
    scheduler.tick(4.5)  # "doomed" silent for 4.4 s > 3 s
    assert [task.state for task in job.maps] == [IDLE, IDLE]
    assert job.state == MAP
    # The reducer could not fetch either: its failure sends nobody anything more.
    assert not scheduler.report("survivor", "inc-survivor", job.job_id, REDUCE, 0,
                                reduce_.attempt, ok=False, now=4.6, error="fetch failed",
                                lost_map_tasks=(0, 1)).accepted
    assert ask(scheduler, "survivor", 4.7).task.kind == MAP


def test_a_worker_back_with_a_new_incarnation_loses_its_map_outputs():
    scheduler = Scheduler()
    job = submit(scheduler, maps=1, reducers=1)
    finish(scheduler, ask(scheduler, "w1", 0.0), "w1", 0.1)
    assert job.maps[0].state == COMPLETED
    again = scheduler.request_task("w1", "w1:50051", "restarted", 0.2)
    assert again.task.kind == MAP and job.maps[0].state == IN_PROGRESS


def test_a_reducer_that_cannot_fetch_sends_that_map_task_back():
    scheduler = Scheduler()
    job = submit(scheduler, maps=2, reducers=1)
    for now in (0.0, 0.1):
        finish(scheduler, ask(scheduler, "w1", now), "w1", now)
    reduce_ = ask(scheduler, "w2", 0.2)
    scheduler.report("w2", "inc-w2", job.job_id, REDUCE, 0, reduce_.attempt, ok=False,
                     now=0.3, error="unreachable", lost_map_tasks=(1,))
    assert [task.state for task in job.maps] == [COMPLETED, IDLE]
    again = ask(scheduler, "w2", 0.4)
    assert (again.task.kind, again.task.index) == (MAP, 1)


def test_backups_near_the_end_of_a_phase_first_to_finish_wins():
    scheduler = Scheduler(task_timeout=100.0, worker_timeout=100.0, backup_after=1.0)
    job = submit(scheduler, maps=5, reducers=1)
    straggler = ask(scheduler, "slow", 0.0)
    for index in range(4):
        now = 0.1 * (index + 1)
        finish(scheduler, ask(scheduler, "fast", now), "fast", now + 0.05)
    assert ask(scheduler, "fast", 0.6) is None  # running for 0.6 s: not yet a straggler
    backup = ask(scheduler, "fast", 2.0)
    assert backup.backup and backup.task is straggler.task
    assert ask(scheduler, "third", 2.1) is None  # one backup per task
    assert finish(scheduler, backup, "fast", 2.5).accepted
    assert not finish(scheduler, straggler, "slow", 3.0).accepted
    assert scheduler.events["backups"] == 1 and job.maps[straggler.task.index].done_worker == "fast"


def test_a_backup_fraction_of_zero_means_no_backups_the_straggler_finishes_alone():
    scheduler = Scheduler(task_timeout=100.0, worker_timeout=100.0, backup_after=1.0,
                          backup_fraction=0.0)
    job = submit(scheduler, maps=5, reducers=1)
    straggler = ask(scheduler, "slow", 0.0)
    for index in range(4):
        now = 0.1 * (index + 1)
        finish(scheduler, ask(scheduler, "fast", now), "fast", now + 0.05)
    assert ask(scheduler, "fast", 50.0) is None  # long past any backup threshold
    assert finish(scheduler, straggler, "slow", 60.0).accepted
    assert "backups" not in scheduler.events
    assert job.maps[straggler.task.index].done_worker == "slow"


def test_the_job_s_own_fault_fails_it_naming_the_task_and_the_next_job_runs():
    scheduler = Scheduler()
    bad = submit(scheduler, maps=2, reducers=1)
    good = submit(scheduler, maps=1, reducers=1)
    first = ask(scheduler, "w1", 0.0)
    scheduler.report("w1", "inc-w1", bad.job_id, MAP, first.task.index, first.attempt,
                     ok=False, now=0.1, job_error=True,
                     error="map raised on record in-0:17: ValueError: boom")
    assert bad.state == FAILED
    assert "map task 0" in bad.error and "in-0:17" in bad.error
    assert ask(scheduler, "w1", 0.2).job is good


def test_a_task_failing_again_and_again_fails_the_job():
    scheduler = Scheduler(max_failures=2)
    job = submit(scheduler, maps=1, reducers=1)
    for now in (0.0, 1.0):
        attempt = ask(scheduler, "w1", now)
        scheduler.report("w1", "inc-w1", job.job_id, MAP, 0, attempt.attempt, ok=False,
                         now=now + 0.5, error="disk full")
    assert job.state == FAILED and "disk full" in job.error


def test_counters_come_from_accepted_attempts_only():
    scheduler = Scheduler(task_timeout=1.0)
    job = submit(scheduler, maps=1, reducers=1)
    slow = ask(scheduler, "a", 0.0)
    fast = ask(scheduler, "b", 2.0)
    finish(scheduler, fast, "b", 2.1, counters={"records_in": 10})
    finish(scheduler, slow, "a", 2.2, counters={"records_in": 10})
    assert job.counters == {"records_in": 10}


def test_a_restarted_master_resumes_from_its_persisted_state():
    scheduler = Scheduler()
    job = submit(scheduler, maps=2, reducers=1)
    done = ask(scheduler, "w1", 0.0)
    finish(scheduler, done, "w1", 0.1)
    running = ask(scheduler, "w2", 0.2)
    state = json.loads(json.dumps(scheduler.to_dict()))
    resumed = Scheduler()
    resumed.restore(state, now=1000.0)
    again = resumed.jobs[job.job_id]
    assert again.maps[0].state == COMPLETED and again.maps[1].state == IN_PROGRESS
    # The attempt that ran before the restart still counts, and attempt numbers go on.
    assert resumed.report("w2", "inc-w2", job.job_id, MAP, 1, running.attempt, ok=True,
                          now=1000.5).accepted
    assert ask(resumed, "w1", 1001.0).attempt > running.attempt


# -- properties --------------------------------------------------------------------------

WORKERS = ("w0", "w1", "w2")
step = st.tuples(st.sampled_from(("ask", "finish", "fail", "fetch_fail", "crash", "wait")),
                 st.sampled_from(WORKERS), st.floats(0.0, 4.0))


@settings(max_examples=200)
@given(maps=st.integers(1, 5), reducers=st.integers(1, 3), steps=st.lists(step, max_size=60))
def test_no_task_is_lost_and_each_output_comes_from_one_accepted_attempt(maps, reducers, steps):
    scheduler = Scheduler(task_timeout=3.0, worker_timeout=5.0, backup_after=1.0,
                          max_failures=1000)
    job = submit(scheduler, maps=maps, reducers=reducers)
    incarnation = {w: 0 for w in WORKERS}
    running: dict[str, list] = {w: [] for w in WORKERS}
    commits: dict[int, list[int]] = {}
    now = 0.0

    def inc(w):
        return f"{w}-{incarnation[w]}"

    def report(w, assignment, **kwargs):
        outcome = scheduler.report(w, inc(w), job.job_id, assignment.task.kind,
                                   assignment.task.index, assignment.attempt, now=now, **kwargs)
        if outcome.commit is not None:
            commits.setdefault(outcome.commit.reduce_task, []).append(outcome.commit.attempt)
        return outcome

    def check():
        for kind in (MAP, REDUCE):
            counts = job.counts(kind)
            assert sum(counts.values()) == len(job.tasks(kind))  # every task is somewhere
        for task in job.maps + job.reduces:
            assert task.state != IN_PROGRESS or task.attempts  # in progress means running

    for action, worker, delay in steps:
        now += delay
        if action == "ask":
            got = scheduler.request_task(worker, worker, inc(worker), now)
            if got is not None:
                running[worker].append(got)
        elif action in ("finish", "fail", "fetch_fail") and running[worker]:
            assignment = running[worker].pop(0)
            if action == "finish":
                report(worker, assignment, ok=True)
            elif action == "fail":
                report(worker, assignment, ok=False, error="io")
            else:
                report(worker, assignment, ok=False, error="fetch",
                       lost_map_tasks=tuple(range(maps)))
        elif action == "crash":
            incarnation[worker] += 1
            running[worker] = []
        check()

    # Faults over: every worker keeps asking and finishing. The job must end, done.
    for _ in range(10 * (maps + reducers) + 10):
        if job.state == DONE:
            break
        now += 1.0
        for worker in WORKERS:
            got = scheduler.request_task(worker, worker, inc(worker), now)
            if got is not None:
                report(worker, got, ok=True)
            check()
    assert job.state == DONE
    # Every partition of the final output: exactly one accepted attempt, committed once.
    assert sorted(commits) == list(range(reducers))
    assert all(len(attempts) == 1 for attempts in commits.values())
    assert all(task.done_attempt is not None for task in job.maps + job.reduces)


def test_finished_jobs_drop_their_code_and_only_the_latest_are_kept():
    scheduler = Scheduler()
    first = submit(scheduler, maps=1, reducers=1)
    while first.state != DONE:
        assignment = ask(scheduler, "w1", 0.0)
        finish(scheduler, assignment, "w1", 0.0)
    assert first.module_source == "" and first.job_id in scheduler.jobs
    for _ in range(KEEP_FINISHED_JOBS + 1):
        job = submit(scheduler, maps=1, reducers=1)
        scheduler.report("w1", "inc-w1", job.job_id, MAP, 0, ask(scheduler, "w1", 0.0).attempt,
                         ok=False, now=0.0, job_error=True, error="boom")
    assert first.job_id not in scheduler.jobs
    assert len(scheduler.jobs) == KEEP_FINISHED_JOBS


def test_would_accept_says_whether_a_report_wins_without_changing_anything():
    scheduler = Scheduler(task_timeout=1.0)
    job = submit(scheduler, maps=1, reducers=1)
    finish(scheduler, ask(scheduler, "a", 0.0), "a", 0.1)
    first = ask(scheduler, "a", 0.2)
    second = ask(scheduler, "b", 2.0)  # the first went stale
    args = (job.job_id, REDUCE, 0)
    assert scheduler.would_accept("a", "inc-a", *args, first.attempt)
    assert scheduler.would_accept("b", "inc-b", *args, second.attempt)
    assert not scheduler.would_accept("b", "inc-b", *args, first.attempt)  # not b's attempt
    assert not scheduler.would_accept("a", "other", *args, first.attempt)
    assert finish(scheduler, second, "b", 2.1).accepted
    assert not scheduler.would_accept("a", "inc-a", *args, first.attempt)
