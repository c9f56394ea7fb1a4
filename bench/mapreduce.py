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
import statistics
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
from bench.tiers_local import cpu_seconds, free_port, lab_credential, wait_serving
from nodes.common.auth import Credential, with_credential
from nodes.mapreduce.jobs import builtin_source, load_job, read_output, run_sequential
from nodes.rpc import control_pb2, control_pb2_grpc, mapreduce_pb2, mapreduce_pb2_grpc

DEFAULT_OUT = Path("reports/bench/mapreduce.json")
WORKER_COUNTS = (1, 2, 4)
#: The experiments' cluster: four workers, so "a quarter" is one of them.
EXPERIMENT_WORKERS = 4
REDUCERS = 4
#: Splits per corpus: M = 4 map tasks whatever --mb is (the textbook's 64 MB in 4 splits of 16 MB).
MAP_TASKS = 4
#: The straggler's ReportTask calls are held this many times the no-fault job time.
STRAGGLER_DELAY_FACTOR = 0.5
#: The workers' deadline for calls to the master: above the straggler's delay, so its
#: held reports arrive late rather than fail (same in every run, so runs compare).
WORKER_RPC_TIMEOUT_SECONDS = 60.0
#: Long enough that the straggler is rescued by backups, not by a timeout re-execution.
TASK_TIMEOUT_SECONDS = 120.0
#: When, as a fraction of the no-fault job time, a quarter of the workers are killed.
KILL_AT = 0.4
REPORT_TASK = "/distlab.mapreduce.Master/ReportTask"
VOCABULARY = 20000
SEED = 2004


def write_corpus(path: Path, mib: float, seed: int = SEED) -> int:
    """Text of at most `mib` MiB: lines of 4-16 words drawn Zipf-like from a made-up
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
            if written + len(block) > target:  # at most `mib`: M splits, not M and a crumb
                block = block[:block.rfind("\n", 0, target - written) + 1]
                if not block:
                    break
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
            "GRACE_SECONDS": 0, "RPC_TIMEOUT_SECONDS": WORKER_RPC_TIMEOUT_SECONDS})
        address = f"127.0.0.1:{port}"
        wait_serving(address)
        self.workers[name] = (process, address)

    def pids(self) -> list[int]:
        processes = [process for process, _ in self.workers.values()]
        return [process.pid for process in [self.master, *processes] if process is not None]

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
        # Workers first: a worker whose master went away first logs its lost connection.
        workers = [process for process, _ in self.workers.values()]
        for group in (workers, [self.master] if self.master is not None else []):
            for process in group:
                process.terminate()
            for process in group:
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


def run_job(running: Cluster, inputs: list[str], split_mb: int, deadline: float,
            during=None) -> dict[str, Any]:
    """Submit word count and wait for its end, calling `during(running, elapsed)` while it
    runs: the job's time as the master measured it (submission to its last commit), the
    CPU seconds its processes used meanwhile (when none was replaced), its status."""
    pids = running.pids()
    cpu_before = cpu_seconds(pids)
    stub = running.stub()
    job_id = stub.SubmitJob(mapreduce_pb2.SubmitJobRequest(
        builtin="wordcount", inputs=inputs, reducers=REDUCERS, split_mb=split_mb),
        timeout=30).job_id
    started = time.monotonic()
    while True:
        status = stub.JobStatus(mapreduce_pb2.JobStatusRequest(job_id=job_id), timeout=10)
        if status.state in ("done", "failed"):
            break
        elapsed = time.monotonic() - started
        if elapsed > deadline:
            raise RuntimeError(f"{job_id} not finished within {deadline:.0f} s: {status}")
        if during is not None:
            during(running, elapsed)
        time.sleep(0.1)  # the master times the job; polling often would only load it
    if status.state != "done":
        raise RuntimeError(f"{job_id} failed: {status.error}")
    same = running.pids() == pids
    return {"seconds": status.finished_at - status.submitted_at,
            "cpu_seconds": cpu_seconds(pids) - cpu_before if same else None,
            "status": status}


def summary(values: list[float]) -> dict[str, float]:
    return {"best": round(min(values), 3), "median": round(statistics.median(values), 3),
            "all": [round(value, 3) for value in values]}


class Bench:
    """One corpus, one credential and the sequential reference, for every run."""

    def __init__(self, stack: ExitStack, mib: float) -> None:
        self.jobs_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="distlab-bench-mr-jobs-")))
        (self.jobs_dir / "input").mkdir()
        self.corpus_bytes = write_corpus(self.jobs_dir / "input" / "corpus.txt", mib)
        self.inputs = ["corpus.txt"]
        self.credential_file, self.credential = stack.enter_context(lab_credential())
        # Splits are whole MiB (SubmitJob's split_mb): M is MAP_TASKS from --mb 4 up.
        self.split_mb = max(1, round(mib / MAP_TASKS))
        self.module = load_job(builtin_source("wordcount"), "reference", {})
        self.expected: dict[str, str] = {}
        self.deadline = 600.0

    def sequential(self) -> tuple[float, float]:
        """The job without the framework, in this process: wall and CPU seconds."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.expected = run_sequential(self.module, self.jobs_dir / "input", self.inputs)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.deadline = max(60.0, 20 * wall)
        return wall, cpu

    def job(self, workers: int, *, prepare=None, during=None, **env: Any) -> dict[str, Any]:
        with cluster(self.jobs_dir, self.credential_file, self.credential, workers,
                     **env) as running:
            if prepare is not None:
                prepare(running)
            result = run_job(running, self.inputs, self.split_mb, self.deadline, during)
        status = result.pop("status")
        output = read_output(self.jobs_dir / "output" / name for name in status.outputs)
        if output != self.expected:
            raise RuntimeError(f"{workers} workers: the output differs from the sequential "
                               f"run's")
        result["attempts"] = sum(status.attempts.values())
        result["tasks"] = len(status.attempts)
        return result


def scaling(bench: Bench, rounds: int) -> dict[str, Any]:
    """Sequential and 1, 2, 4 workers, interleaved round by round, so load that comes and
    goes on a shared machine falls on every variant alike."""
    walls: dict[str, list[float]] = {"sequential": []}
    cpus: dict[str, list[float]] = {"sequential": []}
    for round_ in range(rounds):
        wall, cpu = bench.sequential()
        walls["sequential"].append(wall)
        cpus["sequential"].append(cpu)
        print(f"round {round_ + 1}: sequential {wall:.2f} s", end="", flush=True)
        for workers in WORKER_COUNTS:
            result = bench.job(workers)
            walls.setdefault(f"workers_{workers}", []).append(result["seconds"])
            cpus.setdefault(f"workers_{workers}", []).append(result["cpu_seconds"])
            print(f", {workers} worker(s) {result['seconds']:.2f} s", end="", flush=True)
        print(flush=True)
    figures: dict[str, Any] = {}
    for name, values in walls.items():
        figures[name] = {"seconds": summary(values), "cpu_seconds": summary(cpus[name])}
    base = figures["sequential"]
    for workers in WORKER_COUNTS:
        row = figures[f"workers_{workers}"]
        row["speedup_best"] = ratio(base["seconds"]["best"], row["seconds"]["best"])
        row["speedup_median"] = ratio(base["seconds"]["median"], row["seconds"]["median"])
        row["speedups_per_round"] = [ratio(a, b) for a, b in zip(
            walls["sequential"], walls[f"workers_{workers}"], strict=True)]
        # CPU the framework spends beyond the job's own work: master, RPCs, files, JSON.
        row["cpu_vs_sequential"] = ratio(row["cpu_seconds"]["median"],
                                         base["cpu_seconds"]["median"])
    return figures


def straggler(bench: Bench) -> dict[str, Any]:
    """One of four workers has each ReportTask it sends held; without backups and with,
    beside a no-fault run made just before."""
    no_fault = bench.job(EXPERIMENT_WORKERS)
    delay = round(min(max(1.0, STRAGGLER_DELAY_FACTOR * no_fault["seconds"]),
                      WORKER_RPC_TIMEOUT_SECONDS / 2), 2)

    def slow_one(running: Cluster) -> None:
        running.control("mr-worker-0").AddFaultRule(control_pb2.FaultRule(
            method=REPORT_TASK, action=control_pb2.FaultRule.DELAY,
            direction=control_pb2.FaultRule.OUTBOUND, delay_seconds=delay), timeout=5)

    figures = {"workers": EXPERIMENT_WORKERS, "report_delay_seconds": delay,
               "no_fault": no_fault,
               "without_backups": bench.job(EXPERIMENT_WORKERS, prepare=slow_one,
                                            MR_BACKUP_FRACTION=0),
               "with_backups": bench.job(EXPERIMENT_WORKERS, prepare=slow_one)}
    for case in ("without_backups", "with_backups"):
        figures[case]["vs_no_fault"] = ratio(figures[case]["seconds"], no_fault["seconds"])
        print(f"straggler ({delay} s per report) {case}: {figures[case]['seconds']:.2f} s, "
              f"x{figures[case]['vs_no_fault']} of no-fault "
              f"({no_fault['seconds']:.2f} s)", flush=True)
    return figures


def killed_quarter(bench: Bench) -> dict[str, Any]:
    """A quarter of the workers killed with SIGKILL at KILL_AT of the no-fault time and
    restarted at once (a new process: their map output is gone), beside a no-fault run."""
    no_fault = bench.job(EXPERIMENT_WORKERS)
    kill_at = KILL_AT * no_fault["seconds"]
    killed: list[str] = []

    def kill_a_quarter(running: Cluster, elapsed: float) -> None:
        if killed or elapsed < kill_at:
            return
        for index in range(EXPERIMENT_WORKERS // 4):
            name = f"mr-worker-{index}"
            running.kill_worker(name)
            running.start_worker(name)
            killed.append(name)

    row = bench.job(EXPERIMENT_WORKERS, during=kill_a_quarter)
    row.update(killed=killed, killed_at_seconds=round(kill_at, 2),
               vs_no_fault=ratio(row["seconds"], no_fault["seconds"]))
    print(f"a quarter killed at {KILL_AT:.0%}: {row['seconds']:.2f} s, "
          f"x{row['vs_no_fault']} of no-fault ({no_fault['seconds']:.2f} s)", flush=True)
    return {"workers": EXPERIMENT_WORKERS, "no_fault": no_fault, "killed": row}


def repeated(experiment, bench: Bench, rounds: int, cases: tuple[str, ...]) -> dict[str, Any]:
    """`experiment` run `rounds` times (each with its own no-fault run beside it): every
    round's figures, and per case the median of its ratios to its no-fault run, so one
    burst of load on a shared machine does not make the figure."""
    runs = [experiment(bench) for _ in range(rounds)]
    return {"rounds": runs, "median_vs_no_fault": {case: statistics.median(
        run[case]["vs_no_fault"] for run in runs) for case in cases}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.mapreduce",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=64.0, help="corpus size in MiB")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every comparison (best and median reported)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"benchmark": "mapreduce", "machine": machine_facts(),
                              "load_average_before": _load()}
    with ExitStack() as stack:
        bench = Bench(stack, args.mb)
        report["parameters"] = {
            "job": "wordcount", "corpus_mib": args.mb, "corpus_bytes": bench.corpus_bytes,
            "split_mib": bench.split_mb, "reducers": REDUCERS, "rounds": args.rounds,
            "task_timeout_seconds": TASK_TIMEOUT_SECONDS,
            "job_seconds": "submission to the last commit, as the master saw it",
            "speedup": "sequential seconds / job seconds (best of rounds, and medians)",
            "cpu_seconds": "CPU used by the master and workers during the job; sequential: "
                           "this process"}
        report["scaling"] = scaling(bench, args.rounds)
        report["straggler"] = repeated(straggler, bench, args.rounds,
                                       ("without_backups", "with_backups"))
        report["killed_quarter"] = repeated(killed_quarter, bench, args.rounds, ("killed",))
    report["load_average_after"] = _load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for workers in WORKER_COUNTS:
        row = report["scaling"][f"workers_{workers}"]
        print(f"{workers} worker(s): x{row['speedup_best']} of sequential (best), "
              f"x{row['speedup_median']} (median); CPU x{row['cpu_vs_sequential']}")
    for name in ("straggler", "killed_quarter"):
        print(f"{name}: median x of no-fault {report[name]['median_vs_no_fault']}")
    print(f"load average before {report['load_average_before']}, after "
          f"{report['load_average_after']}; written to {args.out}")
    return report


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


if __name__ == "__main__":
    main()
