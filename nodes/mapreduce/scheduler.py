"""The master's job state machine (sans-I/O): which task runs where, and what is done.

The master node (nodes.mapreduce.master) owns one `Scheduler` and calls it with
the time (`now`, seconds) on every request; the scheduler does no I/O, keeps
no clock and never sleeps, so unit tests and property tests drive it through
hours of crashes in milliseconds. What it returns tells the node what to do
(an `Assignment` to send; `would_accept`, whether a reduce attempt's output
should be renamed into place before its report is taken). `to_dict` and
`restore` are its persisted form.

The rules, after Dean & Ghemawat (OSDI 2004), section 3:

- Jobs run one at a time, in submission order. Reduce tasks are handed out
  only once every map task of the job is completed.
- A task is idle, in progress (at least one live attempt) or completed (one
  accepted attempt: the first to report success; later ones are duplicates,
  ignored). Every attempt has a number unique in the master's life, persisted.
- An attempt running longer than `task_timeout` is stale: the task is idle
  again and goes to the next worker that asks, but the stale attempt may still
  win if it reports first (a slow worker's result is as good as any).
- A worker silent for `worker_timeout`, or back with a new incarnation (it
  restarted and its disk state is gone), is lost: its attempts are dropped
  and reports from them ignored, and its *completed map tasks go back to
  idle*, because their output lived on its disk. A reducer that cannot fetch a
  map task's output says so, and that map task goes back to idle too.
- Near the end of a phase (nothing idle, at most `backup_fraction` of the
  phase's tasks still running), a worker asking for work gets a backup copy of
  a task that has run longer than `backup_after` seconds and twice the median
  time of the phase's completed tasks. First to finish wins. A `backup_fraction`
  of 0 means no backups at all.
- The job's own fault (its module does not import, map raises on a record)
  fails the job at once, with the worker's message naming the task and the
  record; any other failure of an attempt makes the task idle, and a task
  that fails `max_failures` times fails the job.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

IDLE, IN_PROGRESS, COMPLETED = "idle", "in_progress", "completed"
MAP, REDUCE = "map", "reduce"
QUEUED, DONE, FAILED = "queued", "done", "failed"
#: The longest a master holds a worker's RequestTask waiting for a task (MR_POLL_SECONDS
#: may not exceed it); a worker's deadline for the call covers it.
MAX_POLL_SECONDS = 5.0
#: Finished jobs kept for status queries; older ones are forgotten (the state file stays small).
KEEP_FINISHED_JOBS = 100


@dataclass
class Attempt:
    number: int
    worker: str
    started: float
    stale: bool = False


@dataclass
class Task:
    kind: str
    index: int
    attempts: dict[int, Attempt] = field(default_factory=dict)
    attempts_started: int = 0
    failures: int = 0
    #: The accepted attempt: its number, worker and (for a map task) the worker's address.
    done_attempt: int | None = None
    done_worker: str = ""
    done_address: str = ""
    duration: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.kind[0]}{self.index}"

    @property
    def state(self) -> str:
        if self.done_attempt is not None:
            return COMPLETED
        if any(not attempt.stale for attempt in self.attempts.values()):
            return IN_PROGRESS
        return IDLE

    def reset(self) -> None:
        """Back to idle: the accepted output is gone (its map worker was lost)."""
        self.done_attempt, self.done_worker, self.done_address = None, "", ""


@dataclass(frozen=True)
class Split:
    path: str
    start: int
    end: int


@dataclass
class Job:
    job_id: str
    name: str
    module_source: str
    params: dict[str, str]
    reducers: int
    splits: list[Split]
    submitted_at: float
    state: str = QUEUED
    error: str = ""
    finished_at: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    #: Wall-clock times (Unix seconds) for people; the scheduler itself uses only `now`.
    submitted_unix: float = 0.0
    finished_unix: float = 0.0
    maps: list[Task] = field(default_factory=list)
    reduces: list[Task] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.maps:
            self.maps = [Task(MAP, index) for index in range(len(self.splits))]
        if not self.reduces:
            self.reduces = [Task(REDUCE, index) for index in range(self.reducers)]

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED)

    def tasks(self, kind: str) -> list[Task]:
        return self.maps if kind == MAP else self.reduces

    def phase(self) -> str:
        return MAP if any(task.done_attempt is None for task in self.maps) else REDUCE

    def counts(self, kind: str) -> dict[str, int]:
        counts = {IDLE: 0, IN_PROGRESS: 0, COMPLETED: 0}
        for task in self.tasks(kind):
            counts[task.state] += 1
        return counts


@dataclass
class WorkerInfo:
    name: str
    address: str
    incarnation: str
    last_seen: float


@dataclass(frozen=True)
class Assignment:
    """A task for a worker. For a reduce task, `locations` says where each map output is."""

    job: Job
    task: Task
    attempt: int
    backup: bool = False

    @property
    def locations(self) -> list[tuple[int, int, str, str]]:
        return [(task.index, task.done_attempt or 0, task.done_address, task.done_worker)
                for task in self.job.maps]


@dataclass(frozen=True)
class Commit:
    """An accepted reduce attempt, whose output the node has put in place."""

    job_id: str
    reduce_task: int
    attempt: int


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    commit: Commit | None = None
    #: True when the job changed state (finished or failed): the node persists and logs it.
    job_finished: bool = False


class SchedulerError(ValueError):
    """A request the scheduler refuses; the message says why."""


class Scheduler:
    def __init__(self, *, task_timeout: float = 10.0, worker_timeout: float = 5.0,
                 backup_fraction: float = 0.2, backup_after: float = 1.0,
                 max_failures: int = 4) -> None:
        self.task_timeout = task_timeout
        self.worker_timeout = worker_timeout
        self.backup_fraction = backup_fraction
        self.backup_after = backup_after
        self.max_failures = max_failures
        self.jobs: dict[str, Job] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self.next_attempt = 1
        self.next_job = 1
        #: What happened, for metrics: "reexecuted", "backups", "stale", "lost_workers" ...
        self.events: dict[str, int] = {}

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, *, name: str, module_source: str, params: dict[str, str], reducers: int,
               splits: list[Split], now: float) -> Job:
        if reducers < 1:
            raise SchedulerError("a job needs at least one reducer")
        job = Job(f"job-{self.next_job:04d}", name, module_source, dict(params), reducers,
                  list(splits), submitted_at=now)
        self.next_job += 1
        self.jobs[job.job_id] = job
        self._advance(now)
        return job

    def active(self) -> Job | None:
        return next((job for job in self.jobs.values() if not job.finished), None)

    def _advance(self, now: float) -> bool:
        """Move the active job to its current phase; True when a job finished."""
        job = self.active()
        if job is None:
            return False
        if all(task.done_attempt is not None for task in job.maps + job.reduces):
            job.state, job.finished_at = DONE, now
            self._retire(job)
            self._advance(now)
            return True
        job.state = job.phase()
        return False

    def _fail(self, job: Job, error: str, now: float) -> None:
        job.state, job.error, job.finished_at = FAILED, error, now
        for task in job.maps + job.reduces:
            task.attempts.clear()
        self._retire(job)
        self._advance(now)

    def _retire(self, job: Job) -> None:
        """A finished job needs its code no more; the oldest finished jobs are forgotten."""
        job.module_source = ""
        finished = [other.job_id for other in self.jobs.values() if other.finished]
        for job_id in finished[:max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del self.jobs[job_id]

    # -- workers ---------------------------------------------------------------------------

    def _seen(self, worker: str, address: str, incarnation: str, now: float) -> None:
        known = self.workers.get(worker)
        if known is not None and known.incarnation != incarnation:
            self._lose(worker, now, why="restarted")
        self.workers[worker] = WorkerInfo(worker, address or (known.address if known else ""),
                                          incarnation, now)

    def _lose(self, worker: str, now: float, *, why: str) -> None:
        self.workers.pop(worker, None)
        self._count("lost_workers")
        for job in self.jobs.values():
            if job.finished:
                continue
            for task in job.maps + job.reduces:
                for number in [n for n, a in task.attempts.items() if a.worker == worker]:
                    del task.attempts[number]
                # Reduce output is on the shared volume and survives; map output does not.
                if task.kind == MAP and task.done_worker == worker:
                    task.reset()
                    self._count("maps_lost")
        self._advance(now)

    def tick(self, now: float) -> None:
        """Expire silent workers and overdue attempts; call it often (every request does)."""
        for info in list(self.workers.values()):
            if now - info.last_seen > self.worker_timeout:
                self._lose(info.name, now, why="silent")
        job = self.active()
        if job is None:
            return
        for task in job.maps + job.reduces:
            for attempt in task.attempts.values():
                if not attempt.stale and now - attempt.started > self.task_timeout:
                    attempt.stale = True
                    self._count("timed_out")

    # -- the worker's calls ----------------------------------------------------------------

    def request_task(self, worker: str, address: str, incarnation: str,
                     now: float) -> Assignment | None:
        self._seen(worker, address, incarnation, now)
        self.tick(now)
        job = self.active()
        if job is None:
            return None
        kind = job.phase()
        tasks = job.tasks(kind)
        idle = next((task for task in tasks if task.state == IDLE), None)
        if idle is not None:
            return self._start(job, idle, worker, now, backup=False)
        backup = self._backup_candidate(tasks, worker, now)
        if backup is not None:
            self._count("backups")
            return self._start(job, backup, worker, now, backup=True)
        return None

    def _backup_candidate(self, tasks: list[Task], worker: str, now: float) -> Task | None:
        if self.backup_fraction <= 0:  # backups switched off (MR_BACKUP_FRACTION=0)
            return None
        running = [task for task in tasks if task.state == IN_PROGRESS]
        # At least one task may get a backup whatever the fraction, or a phase of few
        # tasks would never have one.
        if not running or len(running) > max(1, self.backup_fraction * len(tasks)):
            return None
        durations = [task.duration for task in tasks if task.done_attempt is not None]
        threshold = max(self.backup_after, 2 * statistics.median(durations) if durations else 0)
        for task in running:
            live = [a for a in task.attempts.values() if not a.stale]
            if len(live) == 1 and live[0].worker != worker \
                    and now - live[0].started > threshold:
                return task
        return None

    def _start(self, job: Job, task: Task, worker: str, now: float, *,
               backup: bool) -> Assignment:
        number = self.next_attempt
        self.next_attempt += 1
        if task.attempts_started or task.failures:
            self._count("reexecuted" if not backup else "backup_attempts")
        task.attempts_started += 1
        task.attempts[number] = Attempt(number, worker, now)
        job.state = job.phase()
        return Assignment(job, task, number, backup)

    def _attempt(self, job_id: str, kind: str, index: int, attempt: int,
                 worker: str) -> tuple[Job, Task, Attempt] | None:
        job = self.jobs.get(job_id)
        if job is None or job.finished or kind not in (MAP, REDUCE):
            return None
        tasks = job.tasks(kind)
        if not 0 <= index < len(tasks):
            return None
        found = tasks[index].attempts.get(attempt)
        if found is None or found.worker != worker:
            return None
        return job, tasks[index], found

    def heartbeat(self, worker: str, incarnation: str, job_id: str, kind: str, index: int,
                  attempt: int, now: float) -> bool:
        """True while the attempt is still wanted."""
        known = self.workers.get(worker)
        if known is not None and known.incarnation == incarnation:
            known.last_seen = now
        self.tick(now)
        found = self._attempt(job_id, kind, index, attempt, worker)
        return found is not None and found[1].done_attempt is None

    def would_accept(self, worker: str, incarnation: str, job_id: str, kind: str, index: int,
                     attempt: int) -> bool:
        """Whether a success reported now would be accepted; changes nothing. The node asks
        before it commits a reduce attempt's output, so a rejected one never overwrites."""
        known = self.workers.get(worker)
        if known is None or known.incarnation != incarnation:
            return False
        found = self._attempt(job_id, kind, index, attempt, worker)
        return found is not None and found[1].done_attempt is None

    def report(self, worker: str, incarnation: str, job_id: str, kind: str, index: int,
               attempt: int, *, ok: bool, now: float, address: str = "", error: str = "",
               job_error: bool = False, lost_map_tasks: tuple[int, ...] = (),
               counters: dict[str, int] | None = None) -> Outcome:
        known = self.workers.get(worker)
        if known is None or known.incarnation != incarnation:
            return Outcome(False)  # a lost worker's attempts were dropped with it
        known.last_seen = now
        found = self._attempt(job_id, kind, index, attempt, worker)
        if found is None:
            return Outcome(False)
        job, task, run = found
        del task.attempts[attempt]
        if task.done_attempt is not None:
            self._count("duplicates")
            return Outcome(False)
        if not ok:
            return self._failed(job, task, run, error=error, job_error=job_error,
                                lost_map_tasks=lost_map_tasks, now=now)
        task.done_attempt, task.done_worker = attempt, worker
        task.done_address = known.address if kind == MAP else ""
        task.duration = now - run.started
        for name, value in (counters or {}).items():
            job.counters[name] = job.counters.get(name, 0) + value
        if kind == MAP:
            # The other attempts' outputs are not the accepted one: stop them.
            task.attempts.clear()
        finished = self._advance(now)
        commit = Commit(job.job_id, index, attempt) if kind == REDUCE else None
        return Outcome(True, commit, job_finished=finished)

    def _failed(self, job: Job, task: Task, run: Attempt, *, error: str, job_error: bool,
                lost_map_tasks: tuple[int, ...], now: float) -> Outcome:
        where = f"{task.kind} task {task.index} (attempt {run.number} on {run.worker})"
        if job_error:
            self._fail(job, f"{where}: {error}", now)
            return Outcome(False, job_finished=True)
        if lost_map_tasks:
            # The reducer could not reach a map worker: that output must be made again.
            for index in lost_map_tasks:
                if 0 <= index < len(job.maps) and job.maps[index].done_attempt is not None:
                    job.maps[index].reset()
                    self._count("maps_lost")
            job.state = job.phase()
            return Outcome(False)
        task.failures += 1
        self._count("task_failures")
        if task.failures >= self.max_failures:
            self._fail(job, f"{where} failed {task.failures} times; last: {error}", now)
            return Outcome(False, job_finished=True)
        return Outcome(False)

    def _count(self, event: str) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"next_attempt": self.next_attempt, "next_job": self.next_job,
                "events": dict(self.events),
                "workers": [vars(info) for info in self.workers.values()],
                "jobs": [_job_to_dict(job) for job in self.jobs.values()]}

    def restore(self, state: dict[str, Any], now: float) -> None:
        """Take over a persisted state. Clocks do not survive a restart: every worker and
        every running attempt is treated as heard from `now`, so each gets a full timeout."""
        self.next_attempt = state["next_attempt"]
        self.next_job = state["next_job"]
        self.events = dict(state.get("events", {}))
        self.workers = {info["name"]: WorkerInfo(**{**info, "last_seen": now})
                        for info in state["workers"]}
        self.jobs = {}
        for raw in state["jobs"]:
            job = _job_from_dict(raw, now)
            self.jobs[job.job_id] = job
        self._advance(now)


def _job_to_dict(job: Job) -> dict[str, Any]:
    def task(t: Task) -> dict[str, Any]:
        return {"attempts": [vars(a) for a in t.attempts.values()],
                "attempts_started": t.attempts_started, "failures": t.failures,
                "done_attempt": t.done_attempt, "done_worker": t.done_worker,
                "done_address": t.done_address, "duration": t.duration}

    return {"job_id": job.job_id, "name": job.name, "module_source": job.module_source,
            "params": job.params, "reducers": job.reducers,
            "splits": [[s.path, s.start, s.end] for s in job.splits],
            "submitted_at": job.submitted_at, "state": job.state, "error": job.error,
            "finished_at": job.finished_at, "counters": job.counters,
            "submitted_unix": job.submitted_unix, "finished_unix": job.finished_unix,
            "maps": [task(t) for t in job.maps], "reduces": [task(t) for t in job.reduces]}


def _job_from_dict(raw: dict[str, Any], now: float) -> Job:
    def tasks(kind: str, items: list[dict[str, Any]]) -> list[Task]:
        out = []
        for index, item in enumerate(items):
            attempts = {a["number"]: Attempt(**{**a, "started": now}) for a in item["attempts"]}
            out.append(Task(kind, index, attempts, item["attempts_started"], item["failures"],
                            item["done_attempt"], item["done_worker"], item["done_address"],
                            item["duration"]))
        return out

    return Job(raw["job_id"], raw["name"], raw["module_source"], raw["params"], raw["reducers"],
               [Split(*s) for s in raw["splits"]], raw["submitted_at"], raw["state"],
               raw["error"], raw["finished_at"], raw["counters"], raw["submitted_unix"],
               raw["finished_unix"], tasks(MAP, raw["maps"]), tasks(REDUCE, raw["reduces"]))
