"""The `mapreduce` workload and the `output` check.

The workload makes a corpus from its seed, uploads it to the master
(PutInput), and has its client processes submit jobs one after another
(word count and inverted index in turn), each followed until it ends: one
history operation `job` per job, invoked at submission and completed when
the master says done (ok), failed (fail: a definite end) or when the
workload's time runs out first (info: the job may still finish). A submission
the master did not answer (it is down or restarting) is recorded too (fail
when it never arrived, info when it timed out and may have), and the next
one goes through a fresh channel (`reconnect`). The `output` check reads
every done job's output back (ReadOutput) and compares it, sorted, with a
sequential single-process run of the same job on the same corpus
(nodes.mapreduce.jobs.run_sequential), computed here on the host. A job the
master failed, or a submission it refused, makes the check invalid; one it
could not hear about does not (no job ran, so no output is wrong).
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from distlab.checkers import Verdict
from distlab.history import FAIL, INFO, OK, History, Op
from distlab.mapreduce.client import UNANSWERED, MapReduceClient, MapReduceError
from distlab.workloads.clients import ClientConfig, ClientWorkload
from nodes.mapreduce.jobs import builtin_source, load_job, run_sequential

JOBS = ("wordcount", "indexer")
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron "
         "pi rho sigma tau upsilon phi chi psi omega").split()


def write_corpus(directory: Path, *, seed: int, kib: int, files: int = 4) -> None:
    """`files` text files of about `kib` KiB in all, the same for the same seed."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        lines, size = [], 0
        while size < kib * 1024 // files:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + ".\n"
            lines.append(line)
            size += len(line)
        (directory / f"doc-{index}.txt").write_text("".join(lines))


@dataclass
class MapReduceConfig(ClientConfig):
    reducers: int = 3
    corpus_kib: int = 1024
    split_mb: int = 0  # 0: the master's MR_SPLIT_MB


class MapReduceWorkload(ClientWorkload):
    name = "mapreduce"

    def __init__(self, channel: grpc.Channel, config: MapReduceConfig | None = None, *,
                 history: History | None = None, run_id: str | None = None,
                 first_process: int = 0,
                 reconnect: Callable[[], grpc.Channel] | None = None) -> None:
        super().__init__(config or MapReduceConfig(), history=history, run_id=run_id,
                         first_process=first_process)
        self.client = MapReduceClient(channel, reconnect=reconnect)
        self.inputs: list[str] = []
        self.expected: dict[str, dict[str, str]] = {}

    def setup(self, *, deadline_seconds: float = 60.0) -> None:
        with tempfile.TemporaryDirectory(prefix="distlab-mr-") as scratch:
            # Laid out as on the master's volume: the indexer's output names the files.
            prefix = f"workload-{self.run_id}"
            corpus = Path(scratch) / prefix / "corpus"
            write_corpus(corpus, seed=self.config.seed, kib=self.config.corpus_kib)
            self.inputs = self.client.upload_inputs([corpus], prefix)
            for job in JOBS:
                module = load_job(builtin_source(job), "reference", {})
                self.expected[job] = run_sequential(module, Path(scratch), self.inputs)

    def _process(self, process: int, stop: threading.Event, ends: float) -> None:
        turn = process
        while not stop.is_set() and time.monotonic() < ends and self._take_slot():
            job = JOBS[turn % len(JOBS)]
            turn += 1
            invoke = self.history.now()
            try:
                submitted = self.client.submit(job, self.inputs, self.config.reducers,
                                               split_mb=self.config.split_mb)
            except MapReduceError as exc:
                # Refused, or not heard (UNAVAILABLE: it never arrived; DEADLINE_EXCEEDED: it
                # may have, and a job we do not follow may run).
                unheard = exc.code in UNANSWERED
                kind = INFO if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED else FAIL
                self.history.add(Op(process, "job", {"job": job}, invoke, self.history.now(),
                                    kind, result={"unheard": unheard}, error=str(exc)[:200]))
                if unheard:
                    self.client.reconnect()
                stop.wait(0.5)
                continue
            args = {"job": job, "job_id": submitted.job_id}
            try:
                status = self.client.wait(submitted.job_id,
                                          timeout=max(0.0, ends - time.monotonic()))
            except MapReduceError as exc:
                # No answer about it before the run ended (the master was down): it may
                # still finish, unseen.
                self.history.add(Op(process, "job", args, invoke, self.history.now(), INFO,
                                    result={"state": "unknown"}, error=str(exc)[:200]))
                continue
            kind = {"done": OK, "failed": FAIL}.get(status.state, INFO)
            self.history.add(Op(process, "job", args, invoke, self.history.now(), kind,
                                result={"state": status.state, "map_tasks": submitted.map_tasks,
                                        "attempts": sum(status.attempts.values())},
                                error=status.error[:200]))

    def check(self, **_: Any) -> Verdict:
        self.client.reconnect()  # the master may have restarted since the last job
        done = [op for op in self.history.of("job") if op.type == OK]
        problems, compared = [], 0
        for op in done:
            try:
                status = self.client.status(op.args["job_id"])
                got = self.client.output(status)
            except MapReduceError as exc:
                problems.append(f"{op.args['job_id']}: cannot read its output: {exc}")
                continue
            compared += 1
            want = self.expected[op.args["job"]]
            if got != want:
                wrong = sorted(k for k in want.keys() | got.keys() if got.get(k) != want.get(k))
                problems.append(f"{op.args['job_id']} ({op.args['job']}): {len(wrong)} keys "
                                f"differ from the sequential run, first {wrong[0]!r}: "
                                f"got {got.get(wrong[0])!r}, want {want.get(wrong[0])!r}")
        failed = [op for op in self.history.of("job") if op.type == FAIL
                  and not (op.result or {}).get("unheard")]
        problems += [f"job {op.args['job_id']} failed: {op.error}" if "job_id" in op.args
                     else f"submitting {op.args['job']} was refused: {op.error}"
                     for op in failed]
        unheard = [op for op in self.history.of("job") if (op.result or {}).get("unheard")]
        if problems:
            valid = False
        elif not done:
            valid, problems = None, ["no job finished: nothing to compare"]
        else:
            valid = True
        return Verdict("output", valid, problems,
                       {"jobs_done": len(done), "jobs_compared": compared,
                        "jobs_failed": len(failed), "submissions_unheard": len(unheard)})
