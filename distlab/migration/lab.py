"""The migration lab's registration: `distlab migrate`, `distlab vms` and `distlab task` (code
mobility, distlab.migration.tasks), the scenario action
`migrate` (a vm moved live to another host beside the timeline, recorded with its
downtime) and the `migration` check (every migration done, within the stated limits).

Clients talk to `vm-switch`, which fronts the vm's data plane and its KV as the lab's KV
service: the shared `register` workload and `linearizable` check run against the vm
through it, across every switch-over. `kv-switch` fronts kv-1, a kv guest (the kv
role's store, moved by dirty keys): a workload with `via: kv-switch` runs against it.

    migrations:
      - {at: 10s, action: migrate, target: vm-1, to: host-2, strategy: pre-copy}
    checks:
      - linearizable
      - migration: {downtime_ms: {at_most: 200}}
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from yaml.nodes import Node

from distlab.checkers import Verdict
from distlab.migration.cli import migrate, summary, vms
from distlab.migration.client import (
    STRATEGIES,
    SWITCH_ROLE,
    Hypervisors,
    Limits,
    MigrationError,
)
from distlab.migration.tasks import task
from distlab.registry import MIGRATIONS, CheckKind, LabPlugin, MigrationKind, MigrationRun
from distlab.scenarios.migrations import LIVE_MOVE_FIELDS, parse_live_move
from distlab.scenarios.model import Migration
from distlab.scenarios.reader import Entries, Field, Reader, join

if TYPE_CHECKING:
    from distlab.scenarios.context import ScenarioContext
    from distlab.scenarios.spec import ScenarioParser

VM_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
LIMITS = ("downtime_ms", "total_s", "failures")


# -- the `migrate` action -------------------------------------------------------------------


def _parse_migrate(parser: ScenarioParser, migration: Migration, entries: Entries,
                   node: Node, path: str) -> Migration:
    return parse_live_move(parser, migration, entries, node, path,
                           target=lambda n, p: _vm_name(parser, n, p), strategies=STRATEGIES)


def _vm_name(reader: Reader, node: Node, path: str) -> str | None:
    name = reader.string(node, path)
    if name is not None and not VM_NAME.match(name):
        reader.problem(node, path, f"'{name}' is not a vm name (vm-1)")
        return None
    return name


def _migrate(ctx: ScenarioContext, migration: Migration) -> str:
    hypervisors = Hypervisors.of(ctx.testbed)
    to = ctx.names((migration.to,))[0]
    name = migration.target
    label = f"migrate {name} to {to} by {migration.strategy}"
    start = ctx.now()
    try:
        result = hypervisors.migrate(
            name, to, strategy=migration.strategy,
            limits=Limits(min_rate_mib=migration.rate, max_rate_mib=migration.max_rate,
                          max_rounds=migration.max_rounds))
    except MigrationError as exc:
        ctx.record_migration(MigrationRun(label, start, ctx.now(), error=str(exc)))
        return f"{label}: failed: {exc}"
    ctx.record_migration(MigrationRun(label, start, ctx.now(), figures={
        "downtime_ms": result.downtime_seconds * 1000, "total_s": result.total_seconds,
        "sent_ratio": result.bytes_sent / result.image_bytes if result.image_bytes else 0.0,
        "rounds": len(result.rounds)}))
    return summary(name, to, result)


MIGRATE = MigrationKind("migrate", LIVE_MOVE_FIELDS, _parse_migrate, _migrate, background=True)


# -- the `migration` check --------------------------------------------------------------------


def _at_most(reader: Reader, node: Node, path: str) -> float | None:
    entries = reader.entries(node, path, "a limit, {at_most: N}")
    if entries is None:
        return None
    reader.unknown(entries, path, ("at_most",))
    if "at_most" not in entries:
        reader.problem(node, path, "missing required field 'at_most'")
        return None
    return reader.number(entries["at_most"][1], join(path, "at_most"), lambda x: x >= 0,
                         ">= 0")


def check_migrations(runs: list[MigrationRun], options: dict[str, Any]) -> Verdict:
    """Every migration done (at most `failures` may fail), each within the limits given."""
    if not runs:
        return Verdict("migration", None, ["no migration ran"])
    problems = []
    failed = [run for run in runs if run.error]
    allowed = options.get("failures")
    if failed and len(failed) > (allowed or 0):
        problems += [f"{run.label} at {run.start:.1f} s failed: {run.error}" for run in failed]
    for figure in ("downtime_ms", "total_s"):
        limit = options.get(figure)
        if limit is None:
            continue
        problems += [f"{run.label} at {run.start:.1f} s: {figure} {run.figures[figure]:.1f} "
                     f"over {limit:g}" for run in runs
                     if not run.error and run.figures[figure] > limit]
    done = [run for run in runs if not run.error]
    figures: dict[str, Any] = {"migrations": len(runs), "failed": len(failed)}
    for figure in ("downtime_ms", "total_s", "sent_ratio"):  # those the migrations report
        values = [run.figures[figure] for run in done if figure in run.figures]
        if values:
            figures[f"max_{figure}"] = round(max(values), 3)
    return Verdict("migration", not problems, problems, figures)


MIGRATION_CHECK = CheckKind("migration", MIGRATIONS, check_migrations,
                            tuple(Field(name, _at_most, None) for name in LIMITS))

LAB = LabPlugin("migration", entry_role=SWITCH_ROLE, serves=("register",),
                migrations=(MIGRATE,), checks=(MIGRATION_CHECK,), commands=(migrate, vms, task))
