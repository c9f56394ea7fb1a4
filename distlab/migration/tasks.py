"""Code mobility on the host: `distlab task run | list | show | move | wait`, and the client
they share (`MobileTasks`), which calls each host's Mobility service (nodes.mobility).

Hosts are found, checked and dialled with the lab credential the way `Hypervisors`
finds them for vm migrations. A task keeps its id wherever it goes; a host it left keeps
a forwarding entry ("moved to host-3"), which `show` and `wait` follow to where it runs
now. Refusals become TaskErrors that say what the host answered.

    distlab task run nodes/mobility/programs/primes.asm --on host-2 --arg n=5000
    distlab task move ID --to host-3            # strong: it goes on where it was
    distlab task move ID --to host-1 --mode weak  # weak: it starts over there
    distlab task show ID
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import grpc
from rich.table import Table

from distlab.console import out
from distlab.errors import DistlabError, UsageError
from distlab.migration.client import Hypervisors
from nodes.rpc import mobility_pb2, mobility_pb2_grpc

MODES = ("strong", "weak")
CALL_SECONDS = 10.0
MOVE_SECONDS = 30.0  # a host's hand-over to another waits at most 10 s for its answer
MAX_HOPS = 16  # forwarding entries followed before giving up (a task moved in a loop)
ARG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=([+-]?[0-9]+)$")
FINISHED = ("done", "failed")


class TaskError(DistlabError):
    """A host refused or failed a call about a task; `code` is its gRPC status."""

    def __init__(self, message: str, *, hint: str = "",
                 code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


@dataclass(frozen=True)
class Whereabouts:
    """A task where it is now, and the hosts it went through to get there."""

    info: mobility_pb2.TaskInfo
    path: tuple[str, ...]


def parse_arg(text: str) -> tuple[str, str]:
    """`n=5000` -> ("n", "5000"); UsageError says what it should look like."""
    match = ARG.match(text.strip())
    if not match:
        raise UsageError(f"--arg {text!r} is not NAME=INTEGER", hint="--arg n=5000")
    return match.group(1), match.group(2)


class MobileTasks:
    """Tasks on the lab's running hosts, asked over gRPC."""

    def __init__(self, hypervisors: Hypervisors) -> None:
        self.hypervisors = hypervisors
        self.unreachable: dict[str, str] = {}  # host -> why it did not answer Tasks

    @classmethod
    def of(cls, testbed) -> MobileTasks:
        return cls(Hypervisors.of(testbed))

    def _stub(self, host: str) -> mobility_pb2_grpc.MobilityStub:
        return mobility_pb2_grpc.MobilityStub(self.hypervisors.host(host).protected_channel())

    def _call(self, host: str, method: str, request, what: str, timeout: float = CALL_SECONDS):
        try:
            return getattr(self._stub(host), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise TaskError(f"{what}: {host} answered {exc.code().name}: {exc.details()}",
                            code=exc.code(), hint=_hint(exc.code())) from None

    def run(self, program: str, on: str, args: dict[str, str],
            name: str = "") -> mobility_pb2.TaskInfo:
        """Ship `program` to host `on`, where it starts (weak mobility)."""
        return self._call(on, "Ship", mobility_pb2.ShipRequest(program=program, args=args,
                                                               name=name),
                          f"shipping {name or 'the program'} to {on}")

    def list(self) -> list[mobility_pb2.TaskInfo]:
        """Every host's tasks (forwarding entries included); silent hosts in `unreachable`."""
        found, self.unreachable = [], {}
        for host in sorted(self.hypervisors.hosts):
            try:
                reply = self._stub(host).Tasks(mobility_pb2.TasksRequest(), timeout=CALL_SECONDS)
            except grpc.RpcError as exc:
                self.unreachable[host] = f"{exc.code().name}: {exc.details()}"
                continue
            found.extend(reply.tasks)
        return found

    def locate(self, task_id: str) -> Whereabouts:
        """Task `task_id` where it is now: found on some host, then its forwarding entries
        followed (a host it moved to that does not answer is a TaskError)."""
        held = {info.host: info for info in self.list() if info.id == task_id}
        if not held:
            silent = (f"; {', '.join(sorted(self.unreachable))} did not answer"
                      if self.unreachable else "")
            raise TaskError(f"no task {task_id!r} on any host{silent}",
                            hint="distlab task list", code=grpc.StatusCode.NOT_FOUND)
        live = [info for info in held.values() if info.state != "moved"]
        start = live[0] if live else next(iter(held.values()))
        # The path starts where it was shipped, when that host still remembers it.
        origin = next((info for info in held.values() if info.mode == "shipped"), start)
        info, path = origin, [origin.host]
        while info.state == "moved" and len(path) <= MAX_HOPS:
            info = held.get(info.moved_to) or self._call(
                info.moved_to, "Task", mobility_pb2.TaskRequest(id=task_id),
                f"task {task_id} moved to {info.moved_to}")
            path.append(info.host)
        if info.state == "moved":
            return Whereabouts(start, (start.host,))
        return Whereabouts(self._call(info.host, "Task", mobility_pb2.TaskRequest(id=task_id),
                                      f"task {task_id}"), tuple(path))

    def move(self, task_id: str, to: str, mode: str = "strong") -> mobility_pb2.TaskInfo:
        """Move task `task_id` to host `to`: strong (it goes on where it was) or weak (it
        starts over there). On a TaskError the task runs where it was."""
        if mode not in MODES:
            raise UsageError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        target = self.hypervisors.host(to)
        here = self.locate(task_id).info
        if here.host == to:
            others = ", ".join(h for h in sorted(self.hypervisors.hosts) if h != to)
            raise UsageError(f"task {task_id} is on {to} already: a move goes to another host",
                             hint=f"hosts: {others}")
        return self._call(here.host, "Move", mobility_pb2.MoveRequest(
            id=task_id, to=target.address, mode=mode),
            f"moving task {task_id} from {here.host} to {to}", timeout=MOVE_SECONDS)

    def wait(self, task_id: str, timeout: float, poll: float = 0.5) -> Whereabouts:
        """Task `task_id` once it finished (done or failed), wherever it went meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.locate(task_id)
            if found.info.state in FINISHED:
                return found
            if time.monotonic() > deadline:
                raise TaskError(f"task {task_id} is still {found.info.state} on "
                                f"{found.info.host} after {timeout:g} s",
                                hint=f"distlab task show {task_id}")
            time.sleep(poll)


def _hint(code: grpc.StatusCode) -> str:
    if code == grpc.StatusCode.NOT_FOUND:
        return "distlab task list"
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return "only a running task moves: distlab task show ID"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return "distlab status; distlab heal"
    return ""


# -- the commands ------------------------------------------------------------------------


def _tasks() -> MobileTasks:
    from distlab.testbed import Testbed

    return MobileTasks.of(Testbed())


def describe(found: Whereabouts) -> list[str]:
    info = found.info
    lines = [f"task {info.id} ({info.name}): {info.state} on {info.host} after {info.steps} "
             f"steps", f"path: {' -> '.join(found.path)}" if len(found.path) > 1 else
             f"came {info.mode}" + (f" from {info.arrived_from}" if info.arrived_from else "")]
    if info.output:
        lines.append(f"output: {' '.join(info.output)}")
    if info.error:
        lines.append(f"error: {info.error}")
    return lines


@click.group()
def task() -> None:
    """Code mobility: ship a program to a host, move it mid-run to another (weak or strong)."""


@task.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--on", "on", required=True, help="the host it runs on (host-2)")
@click.option("--arg", "raw_args", multiple=True, help="an argument, NAME=INTEGER (n=5000)")
@click.option("--name", default="", help="shown in listings [default: the file's name]")
def run_task(file: Path, on: str, raw_args: tuple[str, ...], name: str) -> None:
    """Ship FILE (the stack-machine language, nodes/mobility) to host ON, where it starts."""
    args = dict(parse_arg(raw) for raw in raw_args)
    info = _tasks().run(file.read_text(errors="replace"), on, args, name or file.stem)
    out.print(f"task {info.id} ({info.name}) runs on {info.host}", markup=False)


@task.command("list")
def list_tasks() -> None:
    """Every host's tasks, forwarding entries of moved ones included."""
    tasks = _tasks()
    found = tasks.list()
    table = Table("task", "name", "host", "state", "steps", "output values", "came")
    for info in sorted(found, key=lambda i: (i.id, i.host)):
        state = f"moved to {info.moved_to}" if info.state == "moved" else info.state
        came = info.mode + (f" from {info.arrived_from}" if info.arrived_from else "")
        table.add_row(info.id, info.name, info.host, state, str(info.steps),
                      str(info.output_length), came)
    out.print(table)
    for host, why in sorted(tasks.unreachable.items()):
        out.print(f"{host} did not answer: {why}", markup=False)


@task.command("show")
@click.argument("task_id")
def show_task(task_id: str) -> None:
    """Where task TASK_ID is now (its forwarding entries followed), its steps, output, error."""
    for line in describe(_tasks().locate(task_id)):
        out.print(line, markup=False)


@task.command("move")
@click.argument("task_id")
@click.option("--to", "to", required=True, help="the host it moves to (host-3)")
@click.option("--mode", type=click.Choice(MODES), default="strong", show_default=True,
              help="strong: with its execution state, it goes on; weak: code only, it starts "
                   "over")
def move_task(task_id: str, to: str, mode: str) -> None:
    """Move running task TASK_ID to host TO; on failure it runs on where it was."""
    info = _tasks().move(task_id, to, mode)
    out.print(f"task {info.id} moved {mode} to {info.host}: it goes on from step "
              f"{info.steps}" if mode == "strong" else
              f"task {info.id} moved weak to {info.host}: it starts over there", markup=False)


@task.command("wait")
@click.argument("task_id")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=300.0, show_default=True,
              help="seconds")
def wait_task(task_id: str, timeout: float) -> None:
    """Wait until task TASK_ID finished, wherever it goes; exit 1 when it failed."""
    found = _tasks().wait(task_id, timeout)
    for line in describe(found):
        out.print(line, markup=False)
    if found.info.state == "failed":
        sys.exit(1)
