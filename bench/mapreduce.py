"""MapReduce's figures on loopback, for `make bench` (reports/bench/mapreduce.json).

Word count over a generated corpus (64 MiB by default) run by a master and 1, 2
and 4 workers, each a `python -m nodes.mapreduce.<role>` process of its own as in
a machine, against the same job run sequentially in this process (the module's
map and reduce, no framework) in the same run: job time and the speed-up ratio
baseline / job. Then the paper's two experiments (Dean & Ghemawat, OSDI 2004,
section 5.3), each beside the no-fault run with the same workers:

- a straggler: one of the workers has every ReportTask it sends held for a few
  seconds (an outbound DELAY rule through its Control service, the nemesis'
  RPC fault), without backup tasks (MR_BACKUP_FRACTION=0) and with them;
- a quarter of the workers killed (SIGKILL) mid-job and restarted at once, as
  the paper's cluster scheduler did.

The machine's load (os.getloadavg) is recorded before and after: on a shared
machine the figures are only as good as the cores the run got. Every process,
the corpus and the credential are removed at the end; each job has a deadline.

Usage: python -m bench.mapreduce [--mb 64] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.load import ratio
from bench.rpc_overhead import machine_facts
from bench.tiers_local import free_port, lab_credential, wait_serving
from nodes.common.auth import Credential, with_credential
from nodes.mapreduce.jobs import builtin_source, load_job, read_output, run_sequential
from nodes.rpc import control_pb2, control_pb2_grpc, mapreduce_pb2, mapreduce_pb2_grpc

DEFAULT_OUT = Path("reports/bench/mapreduce.json")
WORKER_COUNTS = (1, 2, 4)
#: The experiments' cluster: four workers, so "a quarter" is one of them.
EXPERIMENT_WORKERS = 4
REDUCERS = 4
#: Splits per corpus: M = 8 map tasks whatever --mb is, so the task grain stays the same.
MAP_TASKS = 8
#: The straggler's ReportTask calls are held this many times the no-fault job time.
STRAGGLER_DELAY_FACTOR = 1.0
#: Long enough that the straggler is rescued by backups, not by a timeout re-execution.
TASK_TIMEOUT_SECONDS = 120.0
#: When, as a fraction of the no-fault job time, a quarter of the workers are killed.
KILL_AT = 0.4
REPORT_TASK = "/distlab.mapreduce.Master/ReportTask"
VOCABULARY = 20000
SEED = 2004


def write_corpus(path: Path, mib: float, seed: int = SEED) -> int:
    """Text of about `mib` MiB: lines of 4-16 words drawn Zipf-like from a made-up
    vocabulary of letters, so word count has many rare keys and a few hot ones."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10)))
                  for _ in range(VOCABULARY)]
    weights = [1 / (rank + 1) for rank in range(VOCABULARY)]
    target = int(mib * 1024 * 1024)
    written = 0
    with open(path, "w") as out:
        while written < target:
            words = rng.choices(vocabulary, weights, k=100_000)
            lines, start = [], 0
            while start < len(words):
                end = start + rng.randint(4, 16)
                lines.append(" ".join(words[start:end]) + ".\n")
                start = end
            block = "".join(lines)
            out.write(block)
            written += len(block)
    return written


@dataclass
class Cluster:
    """A master and its workers as processes on loopback, sharing one jobs directory."""

    jobs_dir: Path
    scratch: Path
    credential_file: str
    credential: Credential
    master_env: dict[str, Any]
    master: subprocess.Popen | None = None
    master_address: str = ""
    workers: dict[str, tuple[subprocess.Popen, str]] = field(default_factory=dict)
    channels: list[grpc.Channel] = field(default_factory=list)

    def _spawn(self, role: str, name: str, port: int, env: dict[str, Any]) -> subprocess.Popen:
        environ = {**os.environ, "NODE_NAME": name, "GRPC_PORT": str(port),
                   "METRICS_PORT": str(free_port()), "LOG_LEVEL": "warning",
                   "DATA_DIR": str(self.scratch / name), "CREDENTIAL_FILE": self.credential_file,
                   "MR_JOBS_DIR": str(self.jobs_dir),
                   **{key: str(value) for key, value in env.items()}}
        return subprocess.Popen([sys.executable, "-m", f"nodes.mapreduce.{role}"],
                                env=environ, stdout=subprocess.DEVNULL)

    def start(self, workers: int) -> None:
        port = free_port()
        self.master = self._spawn("master", "mr-master", port, self.master_env)
        self.master_address = f"127.0.0.1:{port}"
        wait_serving(self.master_address)
        for index in range(workers):
            self.start_worker(f"mr-worker-{index}")

    def start_worker(self, name: str) -> None:
        port = free_port()
        process = self._spawn("worker", name, port, {
            "MR_MASTER": self.master_address, "MR_ADVERTISE_HOST": "127.0.0.1",
            "GRACE_SECONDS": 0})
        address = f"127.0.0.1:{port}"
        wait_serving(address)
        self.workers[name] = (process, address)

    def kill_worker(self, name: str) -> None:
        process, _ = self.workers.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def channel(self, address: str) -> grpc.Channel:
        channel = with_credential(grpc.insecure_channel(address), self.credential)
        self.channels.append(channel)
        return channel

    def stub(self) -> mapreduce_pb2_grpc.MasterStub:
        return mapreduce_pb2_grpc.MasterStub(self.channel(self.master_address))

    def control(self, name: str) -> control_pb2_grpc.ControlStub:
        return control_pb2_grpc.ControlStub(self.channel(self.workers[name][1]))

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        processes = [process for process, _ in self.workers.values()]
        processes += [self.master] if self.master is not None else []
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def cluster(jobs_dir: Path, credential_file: str, credential: Credential, workers: int,
            **master_env: Any) -> Iterator[Cluster]:
    # Every run starts from an empty output directory and a master with no past.
    shutil.rmtree(jobs_dir / "output", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="distlab-bench-mr-") as scratch:
        running = Cluster(jobs_dir, Path(scratch), credential_file, credential,
                          {"MR_TASK_TIMEOUT_SECONDS": TASK_TIMEOUT_SECONDS, **master_env})
        try:
            running.start(workers)
            yield running
        finally:
            running.stop()


def run_job(running: Cluster, inputs: list[str], split_mb: float, deadline: float,
            during=None) -> tuple[float, mapreduce_pb2.JobStatusReply]:
    """Submit word count, wait for its end (calling `during(elapsed)` while it runs);
    the job's time as the master measured it (submission to its last commit)."""
    stub = running.stub()
    job_id = stub.SubmitJob(mapreduce_pb2.SubmitJobRequest(
        builtin="wordcount", inputs=inputs, reducers=REDUCERS, split_mb=max(1, int(split_mb))
    ), timeout=30).job_id
    started = time.monotonic()
    while True:
        status = stub.JobStatus(mapreduce_pb2.JobStatusRequest(job_id=job_id), timeout=10)
        if status.state in ("done", "failed"):
            break
        elapsed = time.monotonic() - started
        if elapsed > deadline:
            raise RuntimeError(f"{job_id} not finished within {deadline:.0f} s: {status}")
        if during is not None:
            during(elapsed)
        time.sleep(0.02)
    if status.state != "done":
        raise RuntimeError(f"{job_id} failed: {status.error}")
    return status.finished_at - status.submitted_at, status


def describe(seconds: float, status: mapreduce_pb2.JobStatusReply, baseline: float,
             expected: dict[str, str], jobs_dir: Path) -> dict[str, Any]:
    output = read_output(jobs_dir / "output" / name for name in status.outputs)
    attempts = dict(status.attempts)
    return {"job_seconds": round(seconds, 3),
            "ratio_to_reference": ratio(baseline, seconds),
            "output_equals_sequential": output == expected,
            "attempts": sum(attempts.values()),
            "tasks": len(attempts)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.mapreduce",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=64.0, help="corpus size in MiB")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    # Splits are whole MiB (SubmitJob's split_mb); M is MAP_TASKS from --mb 8 up.
    split_mb = max(1, round(args.mb / MAP_TASKS))
    report: dict[str, Any] = {"benchmark": "mapreduce", "machine": machine_facts(),
                              "load_average_before": [round(x, 2) for x in load_before],
                              "parameters": {"corpus_mib": args.mb, "split_mib": split_mb,
                                             "reducers": REDUCERS, "job": "wordcount",
                                             "task_timeout_seconds": TASK_TIMEOUT_SECONDS}}
    with ExitStack() as stack:
        jobs_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="distlab-bench-mr-jobs-")))
        (jobs_dir / "input").mkdir()
        corpus_bytes = write_corpus(jobs_dir / "input" / "corpus.txt", args.mb)
        inputs = ["corpus.txt"]
        credential_file, credential = stack.enter_context(lab_credential())

        started = time.perf_counter()
        expected = run_sequential(load_job(builtin_source("wordcount"), "reference", {}),
                                  jobs_dir / "input", inputs)
        baseline = time.perf_counter() - started
        report["sequential"] = {"seconds": round(baseline, 3), "corpus_bytes": corpus_bytes,
                                "keys": len(expected)}
        print(f"sequential word count of {corpus_bytes / 2**20:.0f} MiB: {baseline:.2f} s",
              flush=True)
        deadline = max(60.0, 20 * baseline)

        def one(workers: int, during=None, prepare=None, **env: Any) -> dict[str, Any]:
            with cluster(jobs_dir, credential_file, credential, workers, **env) as running:
                if prepare is not None:
                    prepare(running)
                seconds, status = run_job(running, inputs, split_mb, deadline,
                                          during=(lambda e: during(running, e)) if during
                                          else None)
            return describe(seconds, status, baseline, expected, jobs_dir)

        scaling = {}
        for workers in WORKER_COUNTS:
            scaling[f"workers_{workers}"] = row = one(workers)
            print(f"{workers} worker(s): {row['job_seconds']:.2f} s, "
                  f"x{row['ratio_to_reference']} of sequential", flush=True)
        report["scaling"] = scaling
        no_fault = scaling[f"workers_{EXPERIMENT_WORKERS}"]["job_seconds"]

        delay = round(max(2.0, STRAGGLER_DELAY_FACTOR * no_fault), 2)

        def slow_one(running: Cluster) -> None:
            running.control("mr-worker-0").AddFaultRule(control_pb2.FaultRule(
                method=REPORT_TASK, action=control_pb2.FaultRule.DELAY,
                direction=control_pb2.FaultRule.OUTBOUND, delay_seconds=delay), timeout=5)

        straggler = {"delay_seconds": delay,
                     "no_fault": scaling[f"workers_{EXPERIMENT_WORKERS}"]}
        straggler["without_backups"] = one(EXPERIMENT_WORKERS, prepare=slow_one,
                                           MR_BACKUP_FRACTION=0)
        straggler["with_backups"] = one(EXPERIMENT_WORKERS, prepare=slow_one)
        for case in ("without_backups", "with_backups"):
            straggler[case]["ratio_to_no_fault"] = ratio(straggler[case]["job_seconds"],
                                                         no_fault)
            print(f"straggler ({delay} s per report), {case}: "
                  f"{straggler[case]['job_seconds']:.2f} s, "
                  f"x{straggler[case]['ratio_to_no_fault']} of no-fault", flush=True)
        report["straggler"] = straggler

        killed: list[str] = []

        def kill_a_quarter(running: Cluster, elapsed: float) -> None:
            if killed or elapsed < KILL_AT * no_fault:
                return
            for index in range(EXPERIMENT_WORKERS // 4):
                name = f"mr-worker-{index}"
                running.kill_worker(name)
                running.start_worker(name)  # a new process: its map output is gone
                killed.append(name)

        row = one(EXPERIMENT_WORKERS, during=kill_a_quarter)
        row["killed"] = killed
        row["killed_at_seconds"] = round(KILL_AT * no_fault, 2)
        row["ratio_to_no_fault"] = ratio(row["job_seconds"], no_fault)
        report["killed_quarter"] = {"no_fault": scaling[f"workers_{EXPERIMENT_WORKERS}"],
                                    "killed": row}
        print(f"a quarter killed at {KILL_AT:.0%}: {row['job_seconds']:.2f} s, "
              f"x{row['ratio_to_no_fault']} of no-fault", flush=True)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"load average before {report['load_average_before']}, after "
          f"{report['load_average_after']}; written to {args.out}")
    return report


if __name__ == "__main__":
    main()
