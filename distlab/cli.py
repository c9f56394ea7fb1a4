"""The `distlab` command: bring labs up, look at them, break them, heal them, clean up.

Every error is one line saying what was wrong, and one line of hint; the exit
code is 2 for a bad command line and 1 for anything that failed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from distlab.chord.cli import chord, sim_chord
from distlab.errors import DistlabError, UsageError
from distlab.faults.network import SHAPES
from distlab.runtime.base import MachineInfo
from distlab.runtime.compose import read_images_env
from distlab.scenarios.cli import run
from distlab.testbed import GRAFANA_URL, PROMETHEUS_URL, Testbed
from nodes.rpc import control_pb2

# Wide enough for the status table when output is a pipe or a CI log, not a terminal.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, highlight=False)


class DistlabGroup(click.Group):
    """Turns click's usage errors and DistlabError into `distlab: error: ...` + a hint."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "distlab"
            _fail(exc.format_message(), f"{command} --help", 2)
        except click.exceptions.Abort:
            _fail("aborted", "", 1)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except UsageError as exc:
            _fail(str(exc), exc.hint, 2)
        except DistlabError as exc:
            _fail(str(exc), exc.hint, 1)


def _fail(message: str, hint: str, code: int) -> None:
    # soft_wrap: one line each whatever the width, so `2>&1 | grep` and CI logs see it whole.
    errors.print(f"distlab: error: {message}", markup=False, soft_wrap=True)
    if hint:
        errors.print(f"hint: {hint}", markup=False, soft_wrap=True)
    sys.exit(code)


@click.group(cls=DistlabGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """distlab: a distributed-systems lab in containers."""


def main() -> None:
    cli()


@cli.group()
def sim() -> None:
    """Simulate a lab's protocol in one process, running the nodes' own code."""


cli.add_command(chord)
cli.add_command(run)
sim.add_command(sim_chord)


# -- labs ---------------------------------------------------------------------------------


@cli.command()
def labs() -> None:
    """List the labs and their services."""
    catalogue = Testbed().catalogue
    for lab in catalogue.labs.values():
        default = " (default)" if lab.name == catalogue.default else ""
        console.print(f"[bold]{lab.name}[/]{default}: {lab.description}")
        console.print(f"  services: {', '.join(lab.services)}")


@cli.command()
@click.argument("lab", required=False)
@click.option("--scale", "scale", multiple=True, metavar="SERVICE=N",
              help="replicas of a service, e.g. --scale kv=5 (repeatable)")
@click.option("--timeout", default=180.0, show_default=True, help="seconds to wait for health")
def up(lab: str | None, scale: tuple[str, ...], timeout: float) -> None:
    """Bring LAB up (default lab if omitted) and wait until every machine is healthy."""
    testbed = Testbed()
    chosen = testbed.catalogue.lab(lab)
    testbed.catalogue.parse_scale(chosen, list(scale))  # fail before starting anything
    started = time.monotonic()
    state = {"line": "starting Compose ...", "machines": []}

    def render() -> Table:
        table = Table(title=f"bringing up {chosen.name} — {state['line']}", title_justify="left")
        for column in ("machine", "state", "health"):
            table.add_column(column)
        for info in state["machines"]:
            table.add_row(info.name, info.state, _health_cell(info))
        return table

    with Live(render(), console=console, refresh_per_second=4, transient=True) as live:
        def on_line(line: str) -> None:
            state["line"] = line.strip()[:70]
            live.update(render())

        def on_wait(infos: list[MachineInfo]) -> None:
            ready = sum(1 for i in infos if i.health in ("healthy", "-") and
                        i.state == "running")
            state["line"] = f"{ready}/{len(infos)} healthy"
            state["machines"] = infos
            live.update(render())

        testbed.up(chosen.name, list(scale), timeout=timeout, on_line=on_line, on_wait=on_wait)
    console.print(f"[green]lab {chosen.name} is up[/] in {time.monotonic() - started:.1f} s")
    _print_status(testbed)
    console.print(f"\nPrometheus  {PROMETHEUS_URL}")
    if testbed.grafana_image():
        console.print(f"Grafana     {GRAFANA_URL}  (dashboards in folder 'distlab')")
    else:
        console.print("Grafana     skipped: its image cannot be pulled on this machine "
                      "(dashboards are verified against Prometheus by `make test`)")
    console.print("Next        distlab status · distlab chaos --help · distlab heal · "
                  "distlab down")


@cli.command()
def down() -> None:
    """Stop and remove every lab's machines (volumes are kept; `clean` removes them)."""
    Testbed().down()
    console.print("every lab is down")


@cli.command()
def clean() -> None:
    """Remove every container, network and volume labelled distlab.lab, even after a crash."""
    report = Testbed().clean()
    console.print(f"removed {report.containers} containers, {report.networks} networks, "
                  f"{report.volumes} volumes")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """A table of every machine: role, state, health, address, and what it says of itself."""
    testbed = Testbed()
    if as_json:
        rows = [dict(vars(m.info), detail=_render(_status(m))) for m in testbed.machines()]
        click.echo(json.dumps(rows, indent=1))
        return
    _print_status(testbed)


def _print_status(testbed: Testbed) -> None:
    machines = testbed.machines()
    if not machines:
        console.print("no machines: bring a lab up with `distlab up`")
        return
    testbed.sync_targets()
    active = testbed.nemesis.active()
    table = Table()
    for column in ("machine", "lab", "role", "state", "health", "address", "faults", "detail"):
        table.add_column(column)
    statuses = {machine.name: _status(machine) for machine in machines}
    balancer_view = _balancer_view(statuses)
    for machine in machines:
        info = machine.info
        faults = ", ".join(r.kind for r in active if info.name in r.machines)
        detail = " ".join(part for part in (balancer_view.get(info.name, ""),
                                            _render(statuses[info.name])) if part)
        table.add_row(info.name, info.lab, info.role, info.state, _health_cell(info),
                      ", ".join(info.addresses) or "-", faults or "-", detail)
    console.print(table)


def _balancer_view(statuses: dict[str, control_pb2.StatusReply | str]) -> dict[str, str]:
    """{backend machine: "switch: ejected"}: what a switch says of each of its backends
    ("backend.app-2" = "ejected" in its state), shown on the backend's own row."""
    view = {}
    for status in statuses.values():
        if isinstance(status, control_pb2.StatusReply):
            for key, value in status.state.items():
                if key.startswith("backend.") and value:
                    view[key.removeprefix("backend.")] = f"switch: {value.split(',')[0]}"
    return view


def _health_cell(info: MachineInfo) -> str:
    colour = {"healthy": "green", "unhealthy": "red", "starting": "yellow"}.get(info.health)
    return f"[{colour}]{info.health}[/]" if colour else info.health


def _status(machine) -> control_pb2.StatusReply | str:
    """What the node says of itself through Control.Status, or why it cannot ("" when it
    has no gRPC endpoint: stopped, or not a node)."""
    if machine.info.lab == "common" or machine.info.grpc_endpoint is None:
        return ""
    try:
        channel, control = machine.control()
    except DistlabError:
        return ""
    try:
        return control.Status(control_pb2.StatusRequest(), timeout=1.0)
    except grpc.RpcError as exc:
        return f"no answer ({exc.code().name})"
    finally:
        channel.close()


def _render(status: control_pb2.StatusReply | str) -> str:
    if isinstance(status, str):
        return status
    parts = [f"{k}={v}" for k, v in sorted(status.state.items())]
    if status.peers:
        parts.append(f"peers up {sum(p.up for p in status.peers)}/{len(status.peers)}")
    return " ".join(parts)


@cli.command()
@click.argument("machine")
@click.option("--tail", default=50, show_default=True)
def logs(machine: str, tail: int) -> None:
    """The last log lines of MACHINE."""
    click.echo(Testbed().machine(machine).logs(tail=tail), nl=False)


# -- faults -------------------------------------------------------------------------------


@cli.group()
def chaos() -> None:
    """Inject a fault: process (kill, stop, pause, restart), network, or RPC-level."""


def _done(record) -> None:
    console.print(f"fault {record.id}: {record.kind} on {', '.join(record.machines)} "
                  f"{record.params or ''}".rstrip())


for _verb, _help in (("kill", "kill -9 MACHINE (heal starts it again)"),
                     ("stop", "stop MACHINE gracefully (SIGTERM, then SIGKILL after 10 s)"),
                     ("pause", "freeze MACHINE (callers see timeouts, not resets)"),
                     ("restart", "restart MACHINE")):
    def _process_fault(machine: str, _verb: str = _verb) -> None:
        _done(getattr(Testbed().nemesis, _verb)(machine))

    chaos.command(name=_verb, help=_help)(click.argument("machine")(_process_fault))


@chaos.command(name="start")
@click.argument("machine")
def chaos_start(machine: str) -> None:
    """Start a killed or stopped MACHINE again."""
    Testbed().nemesis.start(machine)
    console.print(f"{machine} started")


@chaos.command(name="resume")
@click.argument("machine")
def chaos_resume(machine: str) -> None:
    """Resume a paused MACHINE."""
    Testbed().nemesis.resume(machine)
    console.print(f"{machine} resumed")


@chaos.command()
@click.argument("shape", type=click.Choice(SHAPES))
@click.option("--machines", default="", help="comma-separated machines (default: every lab "
              "machine)")
@click.option("--target", default=None, help="the machine to isolate (isolate)")
@click.option("--group", "groups", multiple=True, help="a,b  one group (groups; repeatable)")
@click.option("--seed", type=int, default=None, help="shuffle machines with this seed")
def partition(shape: str, machines: str, target: str | None, groups: tuple[str, ...],
              seed: int | None) -> None:
    """Cut the network into SHAPE: isolate, halves, majorities-ring, bridge, groups."""
    names = [n for n in machines.split(",") if n]
    parsed = [[n for n in g.split(",") if n] for g in groups] or None
    _done(Testbed().nemesis.partition(shape, names, target=target, groups=parsed, seed=seed))


@chaos.command()
@click.argument("machine")
@click.argument("probability", type=float)
def loss(machine: str, probability: float) -> None:
    """Drop each packet MACHINE receives with PROBABILITY (0 < p <= 1)."""
    _done(Testbed().nemesis.loss(machine, probability))


@chaos.command()
@click.argument("machine")
@click.argument("rate")
def bandwidth(machine: str, rate: str) -> None:
    """Cap what MACHINE sends to RATE (tc tbf), e.g. 1mbit."""
    _done(Testbed().nemesis.bandwidth(machine, rate))


@chaos.command()
@click.argument("machine")
@click.argument("milliseconds", type=float)
@click.option("--jitter", type=float, default=0.0, help="milliseconds of uniform jitter")
def delay(machine: str, milliseconds: float, jitter: float) -> None:
    """Delay what MACHINE sends (tc netem; needs a kernel with sch_netem)."""
    _done(Testbed().nemesis.delay(machine, milliseconds, jitter))


@chaos.command()
@click.argument("machine")
@click.argument("action", type=click.Choice(["delay", "error", "drop"]))
@click.option("--method", default="*", show_default=True,
              help="'*', '/pkg.Service/*' or '/pkg.Service/Method'")
@click.option("--peer", default="", help="only calls from (or, with --outbound, to) this machine")
@click.option("--seconds", type=float, default=0.0, help="delay")
@click.option("--jitter", type=float, default=0.0, help="extra uniform delay, seconds")
@click.option("--code", type=int, default=14, show_default=True,
              help="gRPC status code for error (14 = UNAVAILABLE)")
@click.option("--probability", type=float, default=1.0, show_default=True)
@click.option("--duration", type=float, default=0.0, help="seconds until it expires (0: never)")
@click.option("--outbound", is_flag=True, help="act on calls MACHINE makes, not serves")
def rpc(machine: str, action: str, method: str, peer: str, seconds: float, jitter: float,
        code: int, probability: float, duration: float, outbound: bool) -> None:
    """RPC-level fault on MACHINE through its Control service (works on every kernel)."""
    _done(Testbed().nemesis.rpc(machine, action, method=method, peer=peer, seconds=seconds,
                                jitter=jitter, code=code, probability=probability,
                                duration=duration, outbound=outbound))


@chaos.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="ended faults too")
def chaos_list(show_all: bool) -> None:
    """The faults distlab applied, with start and end times."""
    testbed = Testbed()
    records = testbed.nemesis.records() if show_all else testbed.nemesis.active()
    table = Table()
    for column in ("id", "kind", "machines", "started", "ended", "params"):
        table.add_column(column)
    for r in records:
        table.add_row(r.id, r.kind, ", ".join(r.machines), _clock(r.started),
                      _clock(r.ended) if r.ended else "active", json.dumps(r.params))
    console.print(table)


def _clock(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp))


@cli.command()
def heal() -> None:
    """Undo every fault: restart killed machines, resume paused ones, clear network and RPC
    faults."""
    problems = Testbed().nemesis.heal()
    for problem in problems:
        errors.print(f"could not heal: {problem}", markup=False)
    if problems:
        raise DistlabError(f"{len(problems)} fault(s) could not be undone",
                           hint="distlab clean removes every machine")
    console.print("healed: no fault is active")


@cli.command()
def doctor() -> None:
    """Check this host can run labs: engine, Compose v2, images, NET_ADMIN, tbf, netem."""
    from distlab.doctor import run_checks

    failed = False
    for check in run_checks(images_env=read_images_env(Testbed().root)):
        mark = {"ok": "[green]ok[/]", "unsupported": "[yellow]unsupported[/]"}.get(
            check.status, "[red]missing[/]")
        console.print(f"{check.name:<10} {mark:<24} {check.detail}")
        if check.fix and check.status != "ok":
            console.print(f"{'':<10} fix: {check.fix}")
        failed |= check.status == "missing"
    if failed:
        sys.exit(1)


# -- workloads ----------------------------------------------------------------------------


@cli.command()
@click.option("--seconds", default=20.0, show_default=True, help="how long the clients run")
@click.option("--ops", default=5000, show_default=True, help="at most this many operations")
@click.option("--processes", default=4, show_default=True, help="concurrent clients")
@click.option("--accounts", default=8, show_default=True, help="accounts to transfer between")
@click.option("--seed", default=0, show_default=True, help="same seed, same operations")
@click.option("--history", "history_path", type=click.Path(dir_okay=False), default=None,
              help="write every operation to this history.jsonl")
def bank(seconds: float, ops: int, processes: int, accounts: int, seed: int,
         history_path: str | None) -> None:
    """Run the bank workload through the switch and check the bank invariants.

    Random transfers, balance reads and audits over fresh accounts; then every
    indefinite transfer is resolved by replaying its idempotency key and the
    final balances are compared with every applied transfer. Exit 0 when the
    invariants hold, 1 when they do not or cannot be decided.
    """
    from distlab.workloads.bank import BankConfig, BankWorkload

    if seconds <= 0 or ops <= 0 or processes <= 0 or accounts < 2:
        raise UsageError("--seconds, --ops and --processes must be > 0 and --accounts >= 2",
                         hint="distlab bank --help")
    testbed = Testbed()
    workload = BankWorkload(testbed.client("switch"), BankConfig(
        accounts=accounts, processes=processes, max_ops=ops, seconds=seconds, seed=seed))
    try:
        workload.setup(deadline_seconds=30)
    except grpc.RpcError as exc:
        raise DistlabError(f"cannot open accounts through the switch: {exc.code().name}: "
                           f"{exc.details()}", hint="distlab status") from None
    console.print(f"running {processes} clients for up to {seconds:g} s / {ops} operations ...")
    workload.run()
    verdict = workload.check()
    if history_path:
        workload.history.write(Path(history_path))
    table = Table(title=f"bank: {verdict.outcome}", title_justify="left")
    for column in ("operation", "ok", "fail", "info (indefinite)"):
        table.add_column(column)
    for name, row in sorted(workload.history.counts().items()):
        table.add_row(name, str(row["ok"]), str(row["fail"]), str(row["info"]))
    console.print(table)
    for problem in verdict.problems:
        console.print(f"  {problem}", markup=False)
    if verdict.valid is not True:
        sys.exit(1)
