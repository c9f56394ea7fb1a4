"""A data replica of the tiers lab moved live into a spare, as the host side asks for it.

The source replica does the work (nodes/data/migration.py): pre-copy of its keys by
dirty hash slots (or stop-and-copy) into a spare replica (`data-spare-N`, started with
DATA_SPARE), a short pause, the commit, and the data master's `Replace`, which puts the
spare at the source's position in the chain; the source is then fenced for good. This
module checks the request before anything starts, runs it, relays its progress, and
then retires the source's machine as a hypervisor ends a migrated vm's source: its
container is removed (its volume directory stays; `distlab up` starts it again as a
new replica, which joins the chain at the tail). It also holds the `migrate-replica`
scenario action.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import grpc
from yaml.nodes import Node

from distlab.errors import DistlabError, MigrationError, UnknownMachine, UsageError
from distlab.machine import Machine
from distlab.registry import MigrationKind, MigrationRun
from distlab.scenarios.migrations import LIVE_MOVE_FIELDS, parse_live_move
from distlab.scenarios.model import Migration
from distlab.scenarios.reader import Entries
from distlab.tiers.chain import DATA_ROLE, POSITIONS, holder
from nodes.rpc import chain_pb2, chain_pb2_grpc

if TYPE_CHECKING:
    from distlab.scenarios.context import ScenarioContext
    from distlab.scenarios.spec import ScenarioParser

STRATEGIES = ("pre-copy", "stop-and-copy")
MIB = 1024 * 1024
MIGRATE_SECONDS = 600.0
SPARE_HINT = "start spares with `distlab up tiers --scale data-spare=1`"


def replica_status(machine: Machine) -> dict[str, str]:
    try:
        with machine.control() as control:
            return dict(control.status().state)
    except DistlabError as exc:
        raise MigrationError(f"{machine.name} did not answer: {exc}") from None


class ReplicaMover:
    """The running data replicas and spares of the tiers lab."""

    def __init__(self, machines: Sequence[Machine]) -> None:
        self.machines = {m.name: m for m in machines}
        self.replicas = {m.name: m for m in machines
                         if m.info.role == DATA_ROLE and m.info.state == "running"}

    def source(self, name: str) -> Machine:
        """`name`, or the holder of `chain:POSITION`: a chain member that may move."""
        if name.startswith("chain:"):
            position = name.removeprefix("chain:")
            if position not in POSITIONS:
                raise UsageError(f"{name!r}: a chain position is one of {', '.join(POSITIONS)}")
            found = holder(list(self.replicas.values()), position)
            if found is None:
                raise MigrationError(f"no data replica is at the chain's {position} now")
            name = found
        machine = self._replica(name)
        state = replica_status(machine)
        if state.get("moved_to"):
            raise UsageError(f"{name} has moved to {state['moved_to']} already: it serves "
                             "nothing", hint=f"move the replica at its place: {self.members()}")
        if state.get("spare") or state.get("position") not in POSITIONS + ("single",):
            raise UsageError(f"{name} is not in the chain ({state.get('position', '?')}): "
                             "only a member moves", hint=f"members: {self.members()}")
        return machine

    def destination(self, name: str) -> Machine:
        machine = self._replica(name)
        state = replica_status(machine)
        if not state.get("spare"):
            raise UsageError(f"{name} is not a spare: a replica moves into an empty spare "
                             "replica only", hint=SPARE_HINT)
        if state.get("migration") in ("live", "paused", "committed"):
            raise UsageError(f"{name} is receiving a migration already")
        return machine

    def members(self) -> str:
        states = {name: replica_status(m) for name, m in self.replicas.items()}
        names = [n for n, s in states.items() if not s.get("spare") and not s.get("moved_to")]
        return ", ".join(sorted(names)) or "none"

    def _replica(self, name: str) -> Machine:
        if name in self.replicas:
            return self.replicas[name]
        machine = self.machines.get(name)
        if machine is not None and machine.info.role == DATA_ROLE:
            raise MigrationError(f"data replica {name} is not running ({machine.info.state})",
                                 hint="distlab heal")
        if machine is not None:
            raise UsageError(f"{name} is a {machine.info.role} machine, not a data replica",
                             hint=f"data replicas: {', '.join(sorted(self.replicas))}")
        raise UnknownMachine(f"no machine named {name!r}",
                             hint=f"data replicas: {', '.join(sorted(self.replicas))}")

    def migrate(self, name: str, to: str, *, strategy: str = "pre-copy",
                min_rate_mib: float = 0.0, max_rate_mib: float = 0.0, max_rounds: int = 0,
                on_progress: Callable[[chain_pb2.ReplicaMigrationProgress], None]
                = lambda p: None) -> chain_pb2.ReplicaMigrationProgress:
        """Move replica `name` (or `chain:POSITION`) into spare `to`; the last progress
        message (phase done), or MigrationError (the source then serves on, unless the
        error says the outcome is unknown)."""
        if strategy not in STRATEGIES:
            raise UsageError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)} "
                             "(a replica has no post-copy: it would serve keys it lacks)")
        source = self.source(name)
        if source.name == to:
            raise UsageError(f"{source.name} cannot move into itself",
                             hint="move it into a spare: data-spare-1")
        target = self.destination(to)
        request = chain_pb2.MigrateReplicaRequest(
            destination=target.address, destination_name=target.name,
            strategy=strategy, min_rate=min_rate_mib * MIB, max_rate=max_rate_mib * MIB,
            max_rounds=max_rounds)
        stub = chain_pb2_grpc.ReplicaStub(source.protected_channel())
        last = None
        try:
            for progress in stub.MigrateOut(request, timeout=MIGRATE_SECONDS):
                on_progress(progress)
                last = progress
        except grpc.RpcError as exc:
            raise MigrationError(f"moving {source.name} into {to}: {exc.code().name}: "
                                 f"{exc.details()}", code=exc.code()) from None
        if last is None or last.phase != "done":
            why = last.error if last is not None and last.error else "no result"
            raise MigrationError(f"moving {source.name} into {to}: "
                                 f"{last.phase if last else 'ended'}: {why}")
        source.remove()  # fenced: it would only ever refuse, and report itself unhealthy
        return last


def summary(source: str, to: str, result: chain_pb2.ReplicaMigrationProgress) -> str:
    why = f", stopped by {result.stop_reason}" if result.stop_reason else ""
    return (f"{source} moved into {to}: downtime {result.downtime_seconds * 1000:.1f} ms, "
            f"total {result.total_seconds:.2f} s, {result.bytes_sent / MIB:.2f} MiB sent in "
            f"{result.round} rounds{why}; {to} holds its place from seq {result.last_seq} "
            f"(epoch {result.epoch})")


# -- the `migrate-replica` scenario action -------------------------------------------------


def parse_action(parser: ScenarioParser, migration: Migration, entries: Entries, node: Node,
                 path: str) -> Migration:
    return parse_live_move(parser, migration, entries, node, path, target=parser.single_ref,
                           strategies=STRATEGIES)


def run_action(ctx: ScenarioContext, migration: Migration) -> str:
    source, to = ctx.names((migration.target, migration.to))
    label = f"migrate-replica {source} into {to} by {migration.strategy}"
    start = ctx.now()
    try:
        result = ReplicaMover(ctx.testbed.machines()).migrate(
            source, to, strategy=migration.strategy, min_rate_mib=migration.rate,
            max_rate_mib=migration.max_rate, max_rounds=migration.max_rounds)
    except DistlabError as exc:
        ctx.record_migration(MigrationRun(label, start, ctx.now(), error=str(exc)))
        return f"{label}: failed: {exc}"
    ctx.record_migration(MigrationRun(label, start, ctx.now(), figures={
        "downtime_ms": result.downtime_seconds * 1000, "total_s": result.total_seconds,
        "rounds": result.round, "sent_mib": result.bytes_sent / MIB}))
    return summary(source, to, result)


MIGRATE_REPLICA = MigrationKind("migrate-replica", LIVE_MOVE_FIELDS, parse_action, run_action,
                                background=True)
