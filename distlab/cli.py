"""The `distlab` command: bring labs up, look at them, break them, heal them, clean up.

`build_cli(registry)` makes the command from the shared commands here and what the
registered labs add (distlab.registry): their own groups (`distlab tiers`,
`distlab chord`), `distlab sim ...`, and each fault kind's `distlab chaos` verb.
Every error is one line saying what was wrong, and one line of hint; the exit
code is 2 for a bad command line and 1 for anything that failed.
"""

from __future__ import annotations

import json
import sys
import time

import click
from rich.live import Live
from rich.table import Table

from distlab import capacity, credential
from distlab.cluster.cli import cluster
from distlab.console import err, fail, out
from distlab.control import ControlError
from distlab.errors import DistlabError, UsageError
from distlab.registry import Registry, load_registry
from distlab.runtime.base import GRAFANA_PORT, CleanReport, MachineInfo
from distlab.runtime.compose import read_images_env
from distlab.scenarios.cli import run
from distlab.testbed import (
    RUNTIMES,
    Testbed,
    choose_runtime,
    make_runtime,
    project_root,
)
from nodes.rpc import control_pb2


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
            fail(exc.format_message(), f"{command} --help", 2)
        except click.exceptions.Abort:
            fail("aborted", "", 1)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except UsageError as exc:
            fail(str(exc), exc.hint, 2)
        except DistlabError as exc:
            fail(str(exc), exc.hint, 1)


def build_cli(registry: Registry) -> click.Group:
    """The `distlab` command: the shared commands, then what each registered lab adds
    (its commands, its `sim` subcommands, and every fault kind's `chaos` verb)."""

    @click.group(cls=DistlabGroup, context_settings={"help_option_names": ["-h", "--help"]})
    def cli() -> None:
        """distlab: a distributed-systems lab in containers."""

    @cli.group()
    def sim() -> None:
        """Simulate a lab's protocol in one process, running the nodes' own code."""

    @cli.group()
    def chaos() -> None:
        """Inject a fault: process (kill, stop, pause, restart), network, or RPC-level."""

    for command in (labs, up, down, clean, status, logs, heal, doctor, run, cluster):
        cli.add_command(command)
    for kind in registry.faults.values():
        if kind.command is not None:
            chaos.add_command(kind.command)
    for command in (chaos_start, chaos_resume, chaos_list):
        chaos.add_command(command)
    for command in registry.commands():
        cli.add_command(command)
    for command in registry.sim_commands():
        sim.add_command(command)
    return cli


def main() -> None:
    build_cli(load_registry())()


# -- labs ---------------------------------------------------------------------------------


@click.command()
def labs() -> None:
    """List the labs: their services, and the workloads and commands they bring."""
    testbed = Testbed()
    catalogue, registry = testbed.catalogue, testbed.registry
    for lab in catalogue.labs.values():
        default = " (default)" if lab.name == catalogue.default else ""
        out.print(f"[bold]{lab.name}[/]{default}: {lab.description}")
        out.print(f"  services: {', '.join(lab.services)}")
        plugin = registry.labs.get(lab.name)
        if plugin is None:
            continue
        if plugin.serves:
            out.print(f"  workloads: {', '.join(plugin.serves)} (clients talk to "
                      f"{plugin.entry_role})")
        commands = [f"distlab {c.name}" for c in plugin.commands] + \
            [f"distlab sim {c.name}" for c in plugin.sim_commands]
        if commands:
            out.print(f"  commands: {', '.join(commands)}")


@click.command()
@click.argument("lab", required=False)
@click.option("--scale", "scale", multiple=True, metavar="SERVICE=N",
              help="replicas of a service, e.g. --scale kv=5 (repeatable)")
@click.option("--timeout", default=180.0, show_default=True, help="seconds to wait for health")
@click.option("--force", is_flag=True,
              help="start even when the lab at this scale looks too big for the engine")
@click.option("--runtime", "runtime", type=click.Choice(RUNTIMES), default=None,
              help="compose: this machine's engine (the default); swarm: the cluster "
                   "`distlab cluster create` made (docs/cluster.md)")
@click.option("--place", "place", multiple=True, metavar="SERVICE=HOST",
              help="on the swarm, run a service's machines on one host, e.g. "
                   "--place data=host-2 (repeatable; default: spread over the hosts)")
def up(lab: str | None, scale: tuple[str, ...], timeout: float, force: bool,
       runtime: str | None, place: tuple[str, ...]) -> None:
    """Bring LAB up (default lab if omitted) and wait until every machine is healthy.

    First it estimates what the lab at this scale needs against what the Docker engine
    has: past a comfortable size it says so, and where the lab would not come up at all
    it refuses unless --force."""
    testbed = Testbed(make_runtime(project_root(), runtime)) if runtime else Testbed()
    chosen = testbed.catalogue.lab(lab)
    testbed.catalogue.parse_scale(chosen, list(scale))  # fail before starting anything
    placement = _placement(testbed, chosen, place)
    _check_capacity(testbed.capacity(chosen.name, list(scale)), chosen.name, force)
    if runtime:
        choose_runtime(testbed.root, runtime)
    started = time.monotonic()
    state = {"line": "starting Compose ...", "machines": []}

    def render() -> Table:
        table = Table(title=f"bringing up {chosen.name} — {state['line']}", title_justify="left")
        for column in ("machine", "state", "health"):
            table.add_column(column)
        for info in state["machines"]:
            table.add_row(info.name, info.state, _health_cell(info))
        return table

    with Live(render(), console=out, refresh_per_second=4, transient=True) as live:
        def on_line(line: str) -> None:
            state["line"] = line.strip()[:70]
            live.update(render())

        def on_wait(infos: list[MachineInfo]) -> None:
            ready = sum(1 for i in infos if i.health in ("healthy", "-") and
                        i.state == "running")
            state["line"] = f"{ready}/{len(infos)} healthy"
            state["machines"] = infos
            live.update(render())

        testbed.up(chosen.name, list(scale), timeout=timeout, on_line=on_line, on_wait=on_wait,
                   placement=placement)
    out.print(f"[green]lab {chosen.name} is up[/] in {time.monotonic() - started:.1f} s")
    _print_status(testbed)
    out.print(f"\nPrometheus  {testbed.prometheus.url}")
    if testbed.grafana_image():
        grafana = testbed.runtime.web_url("grafana", GRAFANA_PORT)
        out.print(f"Grafana     {grafana}  (dashboards in folder 'distlab'; user admin, "
                  f"password in {credential.GRAFANA_PASSWORD_PATH})")
    else:
        out.print("Grafana     skipped: its image cannot be pulled on this machine "
                      "(dashboards are verified against Prometheus by `make test`)")
    out.print("Next        distlab status · distlab chaos --help · distlab heal · "
                  "distlab down")


def _placement(testbed: Testbed, lab, place: tuple[str, ...]) -> dict[str, str]:
    if not place:
        return {}
    hosts = testbed.runtime.hosts()
    if not hosts:
        raise UsageError("--place needs several hosts: this engine is one",
                         hint="add --runtime swarm, on a cluster (docs/cluster.md)")
    from distlab.runtime.swarm import placement_of

    return placement_of(place, lab.services, hosts)


def _check_capacity(estimate: capacity.Estimate | None, lab: str, force: bool) -> None:
    """Say what the lab needs when it is past comfortable; refuse what would drown the
    engine, unless forced."""
    if estimate is None or estimate.verdict is capacity.Verdict.OK:
        return
    if estimate.verdict is capacity.Verdict.REFUSE and not force:
        raise DistlabError(f"lab {lab} at this scale would not come up on this engine: "
                           f"{'; '.join(estimate.reasons)}. {estimate.summary()}",
                           hint="ask for a smaller --scale, or add --force to start it anyway")
    err.print(f"warning: {'; '.join(estimate.reasons)}", markup=False, soft_wrap=True)
    err.print(f"warning: {estimate.summary()}", markup=False, soft_wrap=True)


@click.command()
def down() -> None:
    """Stop and remove every lab's machines (volumes are kept; `clean` removes them)."""
    testbed = Testbed()
    report = testbed.down()
    _print_sweep(report, "down")
    choose_runtime(testbed.root, "compose")  # the next `up` is on this machine unless asked
    out.print("every lab is down")


@click.command()
def clean() -> None:
    """Remove every container, network and volume labelled distlab.lab, even after a crash."""
    testbed = Testbed()
    report = testbed.clean()
    _print_sweep(report, "clean")
    choose_runtime(testbed.root, "compose")
    out.print(f"removed {report.containers} containers, {report.networks} networks, "
              f"{report.volumes} volumes")


def _print_sweep(report: CleanReport, verb: str) -> None:
    """Notes as warnings; leftovers one line each, then the error that makes the exit 1."""
    for note in report.notes:
        err.print(f"warning: {note}", markup=False, soft_wrap=True)
    if report.complete:
        return
    out.print(f"removed {report.containers} containers, {report.networks} networks, "
              f"{report.volumes} volumes")
    for leftover in report.leftovers:
        err.print(f"not removed: {leftover}", markup=False, soft_wrap=True)
    raise DistlabError(f"{len(report.leftovers)} labelled thing(s) could not be removed",
                       hint=f"run `distlab {verb}` again once the engine is less busy; "
                            "`docker ps -a --filter label=distlab.lab` lists what is left")


@click.command()
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
        out.print("no machines: bring a lab up with `distlab up`")
        return
    testbed.sync_targets()
    active = testbed.nemesis.active()
    table = Table()
    on_hosts = any(m.info.host for m in machines)  # the swarm: which host runs each
    for column in ("machine", "lab", "role", "state", "health") + \
            (("host",) if on_hosts else ()) + ("address", "faults", "detail"):
        table.add_column(column)
    statuses = {machine.name: _status(machine) for machine in machines}
    balancer_view = _balancer_view(statuses, {m.name: m.info.role for m in machines})
    for machine in machines:
        info = machine.info
        faults = ", ".join(r.kind for r in active if info.name in r.machines)
        detail = " ".join(part for part in (balancer_view.get(info.name, ""),
                                            _render(statuses[info.name])) if part)
        table.add_row(info.name, info.lab, info.role, info.state, _health_cell(info),
                      *((info.host or "-",) if on_hosts else ()),
                      ", ".join(info.addresses) or "-", faults or "-", detail)
    out.print(table)


def _balancer_view(statuses: dict[str, control_pb2.StatusReply | str],
                   roles: dict[str, str]) -> dict[str, str]:
    """{backend machine: "switch: ejected"}: what a balancing machine says of each of its
    backends ("backend.app-2" = "ejected" in its state), shown on the backend's own row."""
    view = {}
    for name, status in statuses.items():
        if isinstance(status, control_pb2.StatusReply):
            for key, value in status.state.items():
                if key.startswith("backend.") and value:
                    view[key.removeprefix("backend.")] = f"{roles[name]}: {value.split(',')[0]}"
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
        with machine.control() as control:
            return control.status()
    except ControlError as exc:
        return f"no answer ({exc.code.name})"
    except DistlabError:
        return ""


def _render(status: control_pb2.StatusReply | str) -> str:
    if isinstance(status, str):
        return status
    parts = [f"{k}={v}" for k, v in sorted(status.state.items())]
    if status.peers:
        parts.append(f"peers up {sum(p.up for p in status.peers)}/{len(status.peers)}")
    return " ".join(parts)


@click.command()
@click.argument("machine")
@click.option("--tail", default=50, show_default=True)
def logs(machine: str, tail: int) -> None:
    """The last log lines of MACHINE."""
    click.echo(Testbed().machine(machine).logs(tail=tail), nl=False)


# -- faults -------------------------------------------------------------------------------


@click.command(name="start")
@click.argument("machine")
def chaos_start(machine: str) -> None:
    """Start a killed or stopped MACHINE again."""
    Testbed().nemesis.start(machine)
    out.print(f"{machine} started")


@click.command(name="resume")
@click.argument("machine")
def chaos_resume(machine: str) -> None:
    """Resume a paused MACHINE."""
    Testbed().nemesis.resume(machine)
    out.print(f"{machine} resumed")


@click.command(name="list")
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
    out.print(table)


def _clock(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp))


@click.command()
def heal() -> None:
    """Undo every fault: restart killed machines, resume paused ones, clear network and RPC
    faults."""
    problems = Testbed().nemesis.heal()
    for problem in problems:
        err.print(f"could not heal: {problem}", markup=False)
    if problems:
        raise DistlabError(f"{len(problems)} fault(s) could not be undone",
                           hint="distlab clean removes every machine")
    out.print("healed: no fault is active")


@click.command()
def doctor() -> None:
    """Check this host can run labs: engine, Compose v2, images, NET_ADMIN, tbf, netem."""
    from distlab.doctor import run_checks

    failed = False
    for check in run_checks(images_env=read_images_env(Testbed().root)):
        mark = {"ok": "[green]ok[/]", "unsupported": "[yellow]unsupported[/]"}.get(
            check.status, "[red]missing[/]")
        out.print(f"{check.name:<10} {mark:<24} {check.detail}")
        if check.fix and check.status != "ok":
            out.print(f"{'':<10} fix: {check.fix}")
        failed |= check.status == "missing"
    if failed:
        sys.exit(1)
