"""The shared migration actions, declared as registry entries: reconfigure and scale.

- `reconfigure`: change a role's run-time settings through each target's Control
  service (`settings` as written, strings for the node); the runner puts the old
  values back at the end of the run.
- `scale`: run a service at another count, as `distlab up --scale` does.

A lab adds an action of its own with a `MigrationKind` in its plugin (distlab.registry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from yaml.nodes import Node, ScalarNode

from distlab.labs import MAX_REPLICAS
from distlab.registry import MigrationKind
from distlab.scenarios.model import Migration
from distlab.scenarios.reader import NULL, Entries, describe, join

if TYPE_CHECKING:
    from distlab.scenarios.context import ScenarioContext
    from distlab.scenarios.spec import ScenarioParser


LIVE_MOVE_FIELDS = ("target", "to", "strategy", "max_rounds", "rate", "max_rate")


def parse_live_move(parser: ScenarioParser, migration: Migration, entries: Entries,
                    node: Node, path: str, *, target, strategies: tuple[str, ...]) -> Migration:
    """A live migration as the labs' actions write it (`migrate`, `migrate-replica`):
    `target` (read by the lab's `target` reader), `to`, `strategy` and pre-copy's limits
    (`max_rounds`, `rate` and `max_rate` in MiB/s; 0 keeps the machine's settings)."""
    get = parser.getter(entries, path)
    return Migration(
        migration.at, migration.action, line=migration.line,
        target=parser.required(entries, node, path, "target", target),
        to=parser.required(entries, node, path, "to", parser.single_ref),
        strategy=get("strategy", "pre-copy", lambda n, p: parser.choice(n, p, strategies)),
        max_rounds=get("max_rounds", 0, lambda n, p: parser.integer(n, p, 1, 1000)),
        rate=get("rate", 0.0, lambda n, p: parser.number(n, p, lambda x: x > 0, "> 0 MiB/s")),
        max_rate=get("max_rate", 0.0,
                     lambda n, p: parser.number(n, p, lambda x: x > 0, "> 0 MiB/s")))


def _parse_reconfigure(parser: ScenarioParser, migration: Migration, entries: Entries,
                       node: Node, path: str) -> Migration:
    return Migration(migration.at, migration.action, line=migration.line,
                     targets=parser.required(entries, node, path, "target",
                                             parser.ref_or_refs) or (),
                     settings=parser.required(entries, node, path, "settings",
                                              lambda n, p: _settings(parser, n, p)))


def _settings(parser: ScenarioParser, node: Node, path: str) -> dict[str, str] | None:
    entries = parser.entries(node, path, "a mapping of setting: value")
    if entries is None:
        return None
    settings: dict[str, str] = {}
    for name, (_, value) in entries.items():
        # The text as written: `0.5` stays "0.5" and `true` stays "true" for the node.
        if isinstance(value, ScalarNode) and value.tag != NULL:
            settings[name] = value.value
        else:
            parser.problem(value, join(path, name),
                           f"a setting is a single value, got {describe(value)}")
    return settings


def _reconfigure(ctx: ScenarioContext, migration: Migration) -> str:
    names = ctx.names(migration.targets)
    for name in names:
        before = ctx.reconfigure(name, {})  # no change: what the settings are now
        ctx.on_revert(lambda name=name, old={k: before[k] for k in migration.settings
                                             if k in before}: ctx.reconfigure(name, old))
        ctx.reconfigure(name, migration.settings)
    return f"reconfigure {','.join(names)}"


def _parse_scale(parser: ScenarioParser, migration: Migration, entries: Entries, node: Node,
                 path: str) -> Migration:
    service = parser.required(entries, node, path, "service", parser.service)
    count = parser.required(entries, node, path, "count",
                            lambda n, p: parser.integer(n, p, 0, MAX_REPLICAS))
    if service is not None and count is not None:
        parser.scales_up(service, count)
    return Migration(migration.at, migration.action, line=migration.line, service=service,
                     count=count)


def _scale(ctx: ScenarioContext, migration: Migration) -> str:
    # Every count again: Compose puts a service it is not told about back to its default.
    ctx.scale[migration.service] = migration.count
    ctx.testbed.up(ctx.lab, [f"{s}={n}" for s, n in ctx.scale.items()],
                   environment=ctx.environment)
    return f"scale {migration.service}={migration.count}"


MIGRATION_KINDS = (
    MigrationKind("reconfigure", ("target", "settings"), _parse_reconfigure, _reconfigure),
    MigrationKind("scale", ("service", "count"), _parse_scale, _scale),
)
