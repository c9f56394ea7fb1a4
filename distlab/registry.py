"""The registry: how a lab plugs into the host side without the shared code naming it.

A lab's host package (`distlab/<lab>/`) declares one `LabPlugin`: the workload kinds
it brings (their fields, operations, builder and settle step), its checks (and the
workload each reads), the machine references it understands (`chain:head` is tiers'),
the role clients talk to, its migration actions and fault kinds if it has its own,
and its CLI commands. It is found through the `distlab.labs` entry-point group
(pyproject.toml), so the scenario parser, the runner and the CLI read every lab from
here. The nemesis's fault kinds (distlab.faults.kinds) and the shared migration
actions (distlab.scenarios.migrations) are entries of the same tables.

Who reads it: `distlab.scenarios.spec` (what a scenario may say), `ScenarioContext`
(how to start, settle and check it), `distlab.cli` (which commands exist). A test
builds its own `Registry` and adds a toy lab to it; nothing here is global but the
cached default that `load_registry` returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from distlab.errors import DistlabError
from distlab.scenarios.reader import Field

if TYPE_CHECKING:
    import click
    import grpc
    from yaml.nodes import Node

    from distlab.checkers import Verdict
    from distlab.faults.nemesis import FaultRecord
    from distlab.faults.nemesis import Nemesis as NemesisDriver
    from distlab.history import History
    from distlab.labs import Lab
    from distlab.machine import Machine
    from distlab.scenarios.context import ScenarioContext
    from distlab.scenarios.model import Fault, MachineRef, Migration, Nemesis, Workload
    from distlab.scenarios.reader import Entries
    from distlab.scenarios.spec import ScenarioParser
    from distlab.workloads.clients import ClientWorkload

ENTRY_POINT_GROUP = "distlab.labs"


class RegistryError(DistlabError):
    """Two plugins claim one name, or an entry point does not load."""


# -- workloads and checks -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadStart:
    """What the runner hands a workload kind's builder."""

    channel: grpc.Channel  # to the lab's entry role (LabPlugin.entry_role)
    seconds: float
    seed: int
    history: History  # shared by every workload of the run
    run_id: str
    first_process: int  # process numbers already taken by earlier workloads
    # A fresh channel to the entry role: a machine that restarts comes back on another
    # published port, and a workload that outlives its entry machine's restart needs it.
    reconnect: Callable[[], grpc.Channel] | None = None
    # The lab's machines as they are now, for a workload whose clients are the lab's own
    # machines (bittorrent's leechers) rather than processes on the host.
    machines: Callable[[], Sequence[Machine]] | None = None


@dataclass(frozen=True)
class WorkloadKind:
    name: str
    ops: tuple[str, ...]  # the operation names it records (expectations may select them)
    options: tuple[Field, ...]  # its fields beyond processes, rate, timeout and max_ops
    build: Callable[[Workload, WorkloadStart], ClientWorkload]
    # After the faults are healed and before the checks: resolve what is still uncertain.
    settle: Callable[[ClientWorkload, float], Any] | None = None


# A check whose `needs` is this reads the run's migrations (MigrationRun), not a workload.
MIGRATIONS = "migrations"


@dataclass(frozen=True)
class CheckKind:
    name: str
    needs: str  # the workload kind whose history it reads, or MIGRATIONS
    run: Callable[[Any, dict[str, Any]], Verdict]  # (the workload or the migrations, options)
    options: tuple[Field, ...] = ()


# -- machine references, faults, migrations ---------------------------------------------------


@dataclass(frozen=True)
class RefKind:
    """`<prefix>:<value>`: a machine found when the fault starts (`chain:tail`)."""

    prefix: str
    values: tuple[str, ...]
    what: str  # "a chain position": for "'x' is not a chain position"
    # Why the lab cannot have such a machine, or None when it can.
    unavailable: Callable[[Lab], str | None]
    # The running machine the value names now, or None.
    resolve: Callable[[Sequence[Machine], str], str | None]


@dataclass(frozen=True)
class Injection:
    """What a fault kind's `inject` is given: the fault, its target resolved, and a way to
    resolve the other references it holds."""

    nemesis: NemesisDriver
    fault: Fault
    target: str | None
    names: Callable[[Iterable[MachineRef]], list[str]]
    seed: int  # for whatever the kind draws at random


@dataclass(frozen=True)
class FaultKind:
    """One fault kind, declared in one place: its YAML fields, how a scenario's entry is
    read, how it is injected (healing is the undo the nemesis journals with it), whether
    the random nemesis may draw it, and its `distlab chaos` verb."""

    name: str
    fields: tuple[str, ...]  # beyond at, for and kind
    parse: Callable[[ScenarioParser, Fault, Entries, Node, str], Fault]
    inject: Callable[[Injection], FaultRecord]
    command: click.Command | None = None
    instant: bool = False  # over as soon as it is done (restart): no `for`
    # The fault's fields when the random nemesis draws it; None: it may not.
    drawn: Callable[[Nemesis], dict[str, Any]] | None = None


@dataclass(frozen=True)
class MigrationRun:
    """One migration a scenario carried out, as its action recorded it (history seconds)."""

    label: str  # "migrate vm-1 to host-2 by pre-copy"
    start: float
    end: float
    error: str = ""  # why it failed; "" when it was done
    figures: dict[str, float] = field(default_factory=dict)  # downtime_ms, total_s ...


@dataclass(frozen=True)
class MigrationKind:
    name: str
    fields: tuple[str, ...]  # beyond at and action
    parse: Callable[[ScenarioParser, Migration, Entries, Node, str], Migration | None]
    apply: Callable[[ScenarioContext, Migration], str]  # returns what the timeline prints
    # Runs beside the timeline (the runner waits for it before the workloads stop), so
    # faults scheduled during it happen during it.
    background: bool = False


# -- labs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabPlugin:
    name: str  # the Compose profile (compose.yaml)
    entry_role: str | None = None  # the role a workload's clients talk to
    serves: tuple[str, ...] = ()  # workload kinds its entry role serves (maybe another lab's)
    workloads: tuple[WorkloadKind, ...] = ()
    checks: tuple[CheckKind, ...] = ()
    refs: tuple[RefKind, ...] = ()
    faults: tuple[FaultKind, ...] = ()
    migrations: tuple[MigrationKind, ...] = ()
    commands: tuple[click.Command, ...] = ()  # `distlab <command>`
    sim_commands: tuple[click.Command, ...] = ()  # `distlab sim <command>`


class Registry:
    """Every lab plugin, and every kind they and the shared code declare, by name."""

    def __init__(self, plugins: Iterable[LabPlugin] = (), *,
                 faults: Iterable[FaultKind] = (),
                 migrations: Iterable[MigrationKind] = ()) -> None:
        self.labs: dict[str, LabPlugin] = {}
        self.workloads: dict[str, WorkloadKind] = {}
        self.checks: dict[str, CheckKind] = {}
        self.refs: dict[str, RefKind] = {}
        self.faults: dict[str, FaultKind] = {}
        self.migrations: dict[str, MigrationKind] = {}
        self._claim(self.faults, faults, "fault kind", "the nemesis")
        self._claim(self.migrations, migrations, "migration action", "the shared runner")
        for plugin in plugins:
            self.add(plugin)

    @classmethod
    def builtin(cls) -> Registry:
        """The nemesis's fault kinds and the shared migrations, and no lab."""
        from distlab.faults.hosts import HOST_FAULT_KINDS
        from distlab.faults.kinds import FAULT_KINDS
        from distlab.scenarios.migrations import MIGRATION_KINDS

        return cls(faults=FAULT_KINDS + HOST_FAULT_KINDS, migrations=MIGRATION_KINDS)

    def add(self, plugin: LabPlugin) -> Registry:
        if plugin.name in self.labs:
            raise RegistryError(f"lab {plugin.name!r} is registered twice")
        owner = f"lab {plugin.name}"
        self._claim(self.workloads, plugin.workloads, "workload kind", owner)
        self._claim(self.checks, plugin.checks, "check", owner)
        self._claim(self.refs, plugin.refs, "machine reference", owner, key="prefix")
        self._claim(self.faults, plugin.faults, "fault kind", owner)
        self._claim(self.migrations, plugin.migrations, "migration action", owner)
        self.labs[plugin.name] = plugin
        return self

    @staticmethod
    def _claim(table: dict, entries: Iterable, what: str, owner: str, *,
               key: str = "name") -> None:
        for entry in entries:
            name = getattr(entry, key)
            if name in table or (key == "prefix" and name in ("role", "all")):
                raise RegistryError(f"{owner} registers {what} {name!r}, which is taken")
            table[name] = entry

    # -- questions the shared code asks -----------------------------------------------------

    def labs_serving(self, workload: str, order: Sequence[str] = ()) -> list[str]:
        """The labs whose entry role serves `workload`, in `order` (the catalogue's) first."""
        labs = [lab.name for lab in self.labs.values() if workload in lab.serves]
        return sorted(labs, key=lambda name: order.index(name) if name in order else len(order))

    def entry_role(self, lab: str) -> str | None:
        plugin = self.labs.get(lab)
        return plugin.entry_role if plugin else None

    def commands(self) -> list[click.Command]:
        return [command for lab in self.labs.values() for command in lab.commands]

    def sim_commands(self) -> list[click.Command]:
        return [command for lab in self.labs.values() for command in lab.sim_commands]


@functools.cache
def load_registry() -> Registry:
    """The built-in kinds and every lab installed under the `distlab.labs` entry points."""
    registry = Registry.builtin()
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            plugin = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a traceback
            raise RegistryError(f"lab plugin {point.name} ({point.value}) does not load: "
                                f"{type(exc).__name__}: {exc}",
                                hint="pip install -e . again after moving a lab") from None
        if not isinstance(plugin, LabPlugin):
            raise RegistryError(f"entry point {point.name} ({point.value}) is not a LabPlugin")
        registry.add(plugin)
    return registry
