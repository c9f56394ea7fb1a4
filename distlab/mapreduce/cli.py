"""`distlab mr submit | status | result`: run a MapReduce job on the lab and follow it.

Registered by `distlab.mapreduce.lab`. Talks to the master through
`distlab.mapreduce.client` with the lab credential; inputs that are local
paths are uploaded first. Errors are DistlabErrors (one line and a hint);
`submit` exits 1 when the job fails.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from distlab.console import out
from distlab.errors import UsageError
from distlab.mapreduce.client import MapReduceClient, master_channel


def _client() -> MapReduceClient:
    from distlab.testbed import Testbed

    testbed = Testbed()
    # Followed through a restart of the master, which comes back on another port.
    return MapReduceClient(master_channel(testbed), reconnect=lambda: master_channel(testbed))


def _progress(status) -> str:
    return (f"{status.job_id} {status.state:<7} map {status.map.completed}/"
            f"{status.map.idle + status.map.in_progress + status.map.completed} "
            f"(running {status.map.in_progress})  reduce {status.reduce.completed}/"
            f"{status.reduce.idle + status.reduce.in_progress + status.reduce.completed} "
            f"(running {status.reduce.in_progress})  re-executions "
            f"{sum(n - 1 for n in status.attempts.values() if n > 1)}")


@click.group()
def mr() -> None:
    """The MapReduce lab: submit jobs to its master and read their results."""


@mr.command()
@click.argument("job")
@click.option("--input", "inputs", multiple=True, required=True, metavar="PATH|NAME",
              help="a local file or directory (uploaded), or a name already in the master's "
                   "input directory; repeatable")
@click.option("--reducers", "-R", default=3, show_default=True, help="reduce tasks (R)")
@click.option("--split-mb", default=0, help="split size in MiB [default: the master's, 16]")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="handed to the job as params (grep: pattern=REGEX)")
@click.option("--timeout", default=3600.0, show_default=True, help="seconds to follow it")
@click.option("--no-follow", is_flag=True, help="print the job id and return")
def submit(job: str, inputs: tuple[str, ...], reducers: int, split_mb: int,
           params: tuple[str, ...], timeout: float, no_follow: bool) -> None:
    """Submit JOB (wordcount, indexer, grep, sort, or a job module's .py file) and follow
    it until it ends."""
    pairs = dict(param.partition("=")[::2] for param in params)
    if any("=" not in param for param in params):
        raise UsageError("--param takes KEY=VALUE", hint="--param pattern=omega")
    client = _client()
    local = [Path(name) for name in inputs if Path(name).exists()]
    names = [name for name in inputs if not Path(name).exists()]
    if local:
        names += client.upload_inputs(local, f"upload-{time.strftime('%Y%m%dT%H%M%S')}")
    reply = client.submit(job, names, reducers, split_mb=split_mb, params=pairs)
    out.print(f"{reply.job_id}: {reply.map_tasks} map tasks, {reply.reduce_tasks} reduce tasks")
    if no_follow:
        return
    last = [""]

    def show(status) -> None:
        line = _progress(status)
        if line != last[0]:
            out.print(line, markup=False)
            last[0] = line

    status = client.wait(reply.job_id, timeout=timeout, on_status=show)
    _result(status)
    if status.state != "done":
        sys.exit(1)


@mr.command()
@click.argument("job_id", required=False)
def status(job_id: str | None) -> None:
    """Every job the master remembers, or one job."""
    client = _client()
    for job in ([client.status(job_id)] if job_id else client.jobs()):
        out.print(_progress(job) + (f"  {job.error}" if job.error else ""), markup=False)


@mr.command()
@click.argument("job_id")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="copy mr-out-* into this directory")
def result(job_id: str, out_dir: Path | None) -> None:
    """Where a job's output is, its counters and attempts; --out copies the output here."""
    client = _client()
    status = client.status(job_id)
    _result(status)
    if out_dir is not None and status.state == "done":
        out_dir.mkdir(parents=True, exist_ok=True)
        for partition in range(len(status.outputs)):
            (out_dir / f"mr-out-{partition}").write_bytes(
                client.read_output(status.job_id, partition))
        out.print(f"copied {len(status.outputs)} file(s) to {out_dir}")


def _result(status) -> None:
    out.print(f"{status.job_id} ({status.name}): {status.state}", markup=False)
    if status.error:
        out.print(f"  error: {status.error}", markup=False)
    if status.outputs:
        out.print(f"  output: {', '.join(status.outputs)} under the output directory "
                  f"(/data/jobs/output in the lab)", markup=False)
    for name, value in sorted(status.counters.items()):
        out.print(f"  {name} {value}", markup=False)
    again = {task: n for task, n in status.attempts.items() if n > 1}
    if again:
        out.print(f"  tasks run more than once: {again}", markup=False)
