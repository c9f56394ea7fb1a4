"""`python -m nodes.mapreduce.master` and `.worker` as real processes: --help, a worker
killed with SIGKILL mid-job (its map output gone with it), SIGTERM exiting 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from nodes.mapreduce.jobs import builtin_source
from tests.integration.mapreduce_support import mr, write_corpus  # noqa: F401 - the fixture
from tests.integration.test_mapreduce_failures import HOLD_REDUCE

WORDCOUNT_SOURCE = builtin_source("wordcount")


def worker_process(mr, name: str, tmp_path) -> subprocess.Popen:  # noqa: F811
    env = {**os.environ, "NODE_NAME": name, "GRPC_PORT": "0", "METRICS_PORT": "0",
           "DATA_DIR": str(tmp_path / name), "CREDENTIAL_FILE": mr.lab.credential_file,
           "MR_JOBS_DIR": str(mr.jobs_dir), "MR_MASTER": mr.lab.address(mr.master),
           "MR_ADVERTISE_HOST": "127.0.0.1", "MR_HEARTBEAT_SECONDS": "0.2",
           "GRACE_SECONDS": "5"}
    process = subprocess.Popen([sys.executable, "-m", "nodes.mapreduce.worker"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:
        if json.loads(line)["event"] == "mr_worker_started":
            return process
    raise AssertionError(f"{name} did not start: {process.stderr.read()}")


def test_help_lists_the_settings_of_both_roles():
    for role, names in (("master", ("MR_JOBS_DIR", "MR_TASK_TIMEOUT_SECONDS", "MR_SPLIT_MB",
                                    "MR_WORKER_TIMEOUT_SECONDS", "GRPC_PORT")),
                        ("worker", ("MR_MASTER", "MR_JOBS_DIR", "MR_HEARTBEAT_SECONDS"))):
        done = subprocess.run([sys.executable, "-m", f"nodes.mapreduce.{role}", "--help"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and f"python -m nodes.mapreduce.{role}" in done.stdout
        assert all(name in done.stdout for name in names)


def test_a_worker_killed_mid_job_loses_its_map_output_and_the_job_still_finishes(
        mr, tmp_path):  # noqa: F811
    inputs = write_corpus(mr.input_dir)
    hold = tmp_path / "hold"
    hold.touch()
    mr.start_master(MR_WORKER_TIMEOUT_SECONDS=1)
    doomed = worker_process(mr, "mr-worker-doomed", tmp_path)
    try:
        job_id = mr.submit(source=HOLD_REDUCE, inputs=inputs, hold=str(hold))
        # Every map ran on the doomed worker; it now holds a reduce task.
        mr.lab.wait_until(lambda: mr.status(job_id).reduce.in_progress == 1, what="a reduce")
        maps = mr.status(job_id).map.completed
        doomed.kill()
        doomed.wait(timeout=10)
    finally:
        doomed.kill()
    hold.unlink()
    survivor = worker_process(mr, "mr-worker-survivor", tmp_path)
    try:
        status = mr.wait(job_id)
        assert mr.output(status) == mr.sequential("wordcount", inputs)
        # Its map output died with it: every map task ran a second time, on the survivor.
        assert all(status.attempts[f"m{m}"] == 2 for m in range(maps))
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(timeout=20) == 0
        events = [json.loads(line)["event"] for line in survivor.stdout.read().splitlines()]
        assert events[-1] == "node_stopped"
        assert "Traceback" not in survivor.stderr.read()
    finally:
        survivor.kill()
        survivor.wait()


#: MIT 6.5840's crash test as a job: now and then a map or reduce call ends the worker
#: process (os._exit, no cleanup) or stalls it past the task timeout, a third of the time
#: each.
CRASHY = WORDCOUNT_SOURCE.replace("def map(key, value):", '''import os
import random
import time

params = {}


def _misbehave():
    try:  # the first misbehaviour of the job is a crash: at least one, whatever the dice say
        os.close(os.open(params["first_crash"], os.O_CREAT | os.O_EXCL))
        os._exit(1)
    except FileExistsError:
        pass
    roll = random.random()
    if roll < float(params["crash"]):
        os._exit(1)
    if roll < 2 * float(params["crash"]):
        time.sleep(random.uniform(0, 1.5))


def map(key, value):
    if random.random() < 0.004:  # a split has about 300 lines: about 70 % of map tasks
        _misbehave()''').replace("def reduce(key, values):", '''def reduce(key, values):
    if random.random() < 0.05:  # about 10 keys each: about 40 % of reduce tasks
        _misbehave()''')


def test_workers_that_crash_and_stall_at_random_still_finish_the_job_right(mr, tmp_path):  # noqa: F811
    inputs = write_corpus(mr.input_dir)
    mr.start_master(MR_TASK_TIMEOUT_SECONDS=1, MR_WORKER_TIMEOUT_SECONDS=1,
                    MR_MAX_TASK_FAILURES=100)
    names = [f"mr-worker-{i}" for i in range(3)]
    workers = {name: worker_process(mr, name, tmp_path) for name in names}
    restarts = 0
    try:
        job_id = mr.submit(source=CRASHY, inputs=inputs, crash="0.33",
                           first_crash=str(tmp_path / "crashed-once"))
        deadline = time.monotonic() + 120
        while (status := mr.status(job_id)).state not in ("done", "failed"):
            assert time.monotonic() < deadline, f"not finished: {status}"
            for name, process in workers.items():
                if process.poll() is not None:  # crashed: restarted, as a supervisor would
                    workers[name] = worker_process(mr, name, tmp_path)
                    restarts += 1
            time.sleep(0.1)
        assert mr.output(status) == mr.sequential("wordcount", inputs)
        assert restarts >= 1 and sum(status.attempts.values()) > len(status.attempts)
    finally:
        for process in workers.values():
            process.kill()
            process.wait()


def test_the_master_exits_0_on_sigterm_and_resumes_its_jobs_after(mr, tmp_path):  # noqa: F811
    inputs = write_corpus(mr.input_dir, files=1, lines=50)
    env = {**os.environ, "NODE_NAME": "mr-master", "GRPC_PORT": "0", "METRICS_PORT": "0",
           "DATA_DIR": str(tmp_path / "master"), "CREDENTIAL_FILE": mr.lab.credential_file,
           "MR_JOBS_DIR": str(mr.jobs_dir)}
    process = subprocess.Popen([sys.executable, "-m", "nodes.mapreduce.master"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        started = next(line for line in map(json.loads, process.stdout)
                       if line["event"] == "node_started")
        mr.master = f"127.0.0.1:{started['grpc_port']}"
        job_id = mr.submit("wordcount", inputs=inputs)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()
    # No worker ran it yet: the job is still there, queued for the next master.
    mr.master_data = str(tmp_path / "master")
    mr.start_master()
    assert mr.status(job_id).state == "map"
