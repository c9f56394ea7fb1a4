"""`distlab fn deploy | invoke [--async] | result | list | logs | rm`: the serverless lab.

Registered by `distlab.serverless.lab`. Talks to the runner through
`distlab.serverless.client` with the lab credential. Errors are DistlabErrors (one line
and a hint); `invoke` exits 1 when the function failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from distlab.capacity import parse_bytes
from distlab.console import out
from distlab.errors import UsageError
from distlab.serverless.client import FunctionsClient, runner_channel


def _client() -> FunctionsClient:
    from distlab.testbed import Testbed

    return FunctionsClient(runner_channel(Testbed()))


def _seconds(value: str, option: str, *, zero: bool = False) -> float:
    """`5`, `5s`, `500ms`, `2m` -> seconds (0 only where `zero` allows it)."""
    text = value.strip().lower()
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            text, scale = text[:-len(suffix)], factor
            break
    else:
        scale = 1.0
    try:
        seconds = float(text) * scale
    except ValueError:
        raise UsageError(f"{option} {value!r} is not a duration", hint="5s, 500ms, 2m") from None
    if seconds < 0 or (seconds == 0 and not zero):
        raise UsageError(f"{option} {value!r} must be positive")
    return seconds


@click.group()
def fn() -> None:
    """The serverless lab: deploy functions, invoke them, watch their instances."""


@fn.command()
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--memory", default="", help="memory of an instance (128m) [default: 128m]")
@click.option("--timeout", default="", help="longest run (5s, 500ms) [default: 5s]")
@click.option("--max-instances", default=0, help="at most this many instances [default: 4]")
@click.option("--min-instances", default=0, show_default=True,
              help="always kept (0: scales to zero)")
@click.option("--queue-limit", type=click.IntRange(0, 10_000), default=None,
              help="requests that may wait; past it 'too many requests' [default: 100]")
@click.option("--keep-alive", default="",
              help="an idle instance goes after this; 0s: at once [default: 60s]")
def deploy(name: str, file: Path, memory: str, timeout: str, max_instances: int,
           min_instances: int, queue_limit: int | None, keep_alive: str) -> None:
    """Deploy FILE (Python with handle(event, context)) as function NAME, or replace it."""
    try:
        memory_bytes = parse_bytes(memory) if memory else 0
    except ValueError:
        raise UsageError(f"--memory {memory!r} is not a size", hint="128m, 256M, 1g") from None
    info = _client().deploy(
        name, file, memory_bytes=memory_bytes,
        timeout=_seconds(timeout, "--timeout") if timeout else 0.0,
        max_instances=max_instances, min_instances=min_instances, queue_limit=queue_limit,
        keep_alive=_seconds(keep_alive, "--keep-alive", zero=True) if keep_alive else None)
    spec = info.function
    out.print(f"deployed {spec.name}: memory {spec.memory_bytes // (1024 * 1024)} MiB, timeout "
              f"{spec.timeout_seconds:g} s, instances {spec.min_instances}..{spec.max_instances}, "
              f"keep-alive {spec.keep_alive_seconds:g} s", markup=False)


@fn.command()
@click.argument("name")
@click.option("--data", default="", help="the event, as JSON ('{\"text\": \"hi\"}')")
@click.option("--async", "later", is_flag=True,
              help="have the runner keep it and run it later; prints its id (distlab fn result)")
def invoke(name: str, data: str, later: bool) -> None:
    """Run NAME once and print its result (its logs and error when it fails)."""
    if data:
        try:
            json.loads(data)
        except ValueError as exc:
            raise UsageError(f"--data is not JSON: {exc}", hint="--data '{\"n\": 3}'") from None
    if later:
        invocation = _client().invoke_async(name, data)
        out.print(f"accepted {invocation} (distlab fn result {invocation})", markup=False)
        return
    reply = _client().invoke(name, data)
    for line in reply.logs:
        out.print(f"[log] {line}", markup=False)
    how = (f"({reply.path} start on {reply.instance}, queued {reply.queued_seconds * 1000:.0f} "
           f"ms, ran {reply.run_seconds * 1000:.1f} ms)")
    if reply.ok:
        out.print(reply.result, markup=False)
        out.print(how, markup=False, style="dim")
        return
    out.print(f"error: {reply.error}", markup=False)
    out.print(how, markup=False, style="dim")
    sys.exit(1)


@fn.command()
@click.argument("invocation_id")
def result(invocation_id: str) -> None:
    """The outcome of an asynchronous invocation, or that it still waits."""
    reply = _client().result(invocation_id)
    tries = f"after {reply.attempts} attempt(s)"
    if not reply.done:
        out.print(f"{reply.function}: waiting ({tries} so far)", markup=False)
    elif reply.ok:
        out.print(f"{reply.function}: {reply.result} ({tries})", markup=False)
    else:
        out.print(f"{reply.function}: error: {reply.error} ({tries})", markup=False)
        sys.exit(1)


@fn.command("list")
def list_functions() -> None:
    """Deployed functions: their instances by state, starts by path, invocations."""
    functions = _client().list()
    if not functions:
        out.print("no function deployed (distlab fn deploy NAME FILE)")
    for info in functions:
        spec = info.function
        states = " ".join(f"{k} {v}" for k, v in sorted(info.instances.items())) or "none"
        starts = " ".join(f"{k} {v}" for k, v in sorted(info.cold_starts.items())) or "none"
        calls = " ".join(f"{k} {v}" for k, v in sorted(info.invocations.items())) or "none"
        out.print(f"{spec.name}: instances {states}; starts {starts}; invocations {calls}; "
                  f"waiting {info.waiting}", markup=False)


@fn.command()
@click.argument("name")
@click.option("--limit", default=100, show_default=True, help="the last this many lines")
def logs(name: str, limit: int) -> None:
    """The last log lines of NAME's invocations (each prefixed by its invocation id)."""
    for line in _client().logs(name, limit):
        out.print(line, markup=False)


@fn.command("rm")
@click.argument("name")
def remove(name: str) -> None:
    """Remove NAME and its instances."""
    if not _client().remove(name):
        raise UsageError(f"no function {name!r}", hint="distlab fn list")
    out.print(f"removed {name}")
