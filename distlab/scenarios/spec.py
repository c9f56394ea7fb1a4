"""The scenario parser: a scenario file into the model (distlab.scenarios.model), or every
problem of it with its line.

The runner calls `load_scenario` and gets a `Scenario` whose every field is typed,
defaulted and checked against the lab catalogue (compose.yaml) and the registry
(distlab.registry): which workload kinds, checks, machine references, fault kinds and
migration actions exist, and what each takes, is what the labs registered, so this
module names no lab. A bad file raises one `ScenarioError` listing every problem with
its line, so a student fixes them all in one pass. Pure: reads the file it is given and
nothing else. The user-facing reference is docs/scenario-format.md.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaml.nodes import Node, ScalarNode, SequenceNode

from distlab.labs import MAX_REPLICAS, Catalogue, Lab, counts_at, names_of, span
from distlab.registry import MIGRATIONS, Registry, load_registry
from distlab.scenarios.model import (
    Check,
    Expectation,
    Fault,
    MachineRef,
    Migration,
    Nemesis,
    Scenario,
    ScenarioError,
    Workload,
)
from distlab.scenarios.reader import (
    NULL,
    Entries,
    Problem,
    Reader,
    all_fields,
    an,
    describe,
    did_you_mean,
    join,
    line_of,
)

EXPECTATION_KINDS = ("availability", "latency")
WINDOWS = ("faults", "calm", "all")
SHARED_PREFIXES = ("role", "all")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")

TOP_FIELDS = ("name", "description", "lab", "scale", "environment", "seed", "duration",
              "short_duration", "workloads", "faults", "nemesis", "migrations", "checks", "expect")
WORKLOAD_FIELDS = ("type", "processes", "rate", "timeout", "max_ops", "via")
FAULT_FIELDS = ("at", "for", "kind")
MIGRATION_FIELDS = ("at", "action")
NEMESIS_FIELDS = ("kinds", "targets", "start", "interval", "for", "probability")
EXPECTATION_FIELDS = {"availability": ("window", "at_least", "ops", "grace"),
                      "latency": ("window", "percentile", "at_most", "ops", "grace")}


# -- public functions ----------------------------------------------------------------------


def load_scenario(path: Path, catalogue: Catalogue, registry: Registry | None = None
                  ) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ScenarioError(str(path), [Problem(0, "", f"cannot read it: {reason}")]) from None
    return parse_scenario(text, catalogue, registry=registry, source=str(path),
                          default_name=path.stem)


def parse_scenario(text: str, catalogue: Catalogue, *, registry: Registry | None = None,
                   source: str = "<scenario>", default_name: str = "scenario") -> Scenario:
    parser = ScenarioParser(catalogue, registry or load_registry())
    scenario = parser.parse(text, source, default_name)
    if parser.problems or scenario is None:
        raise ScenarioError(source, parser.problems)
    return scenario


# -- the parser ----------------------------------------------------------------------------


@dataclass
class _Ref:
    """A machine name to check once every scale (top level and migrations) is known."""

    node: Node
    path: str
    name: str


class ScenarioParser(Reader):
    """Reads one scenario; the registered kinds read their own fields with its methods."""

    def __init__(self, catalogue: Catalogue, registry: Registry) -> None:
        super().__init__()
        self.catalogue = catalogue
        self.registry = registry
        self.lab: Lab | None = None
        self.duration: float | None = None
        self.names: list[_Ref] = []
        self.scale_ups: dict[str, int] = {}  # service -> largest count a migration scales to

    # -- the document ------------------------------------------------------------------

    def parse(self, text: str, source: str, default_name: str) -> Scenario | None:
        root = self.compose(text)
        if root is None and self.problems:
            return None
        if root is None:
            self.problems.append(Problem(1, "", "the file is empty: a scenario needs at least "
                                                "lab, duration and workloads"))
            return None
        top = self.entries(root, "", "a scenario")
        if top is None:
            return None
        self.unknown(top, "", TOP_FIELDS)

        written = self.string(top["name"][1], "name") if "name" in top else None
        if written is not None and not _NAME.fullmatch(written):
            self.problem(top["name"][1], "name", f"'{written}' is not a scenario name: lowercase "
                         "letters, digits and '-', starting with a letter or digit")
        name = written or default_name
        description = self.string(top["description"][1], "description") \
            if "description" in top else ""
        lab_name = self.lab_field(top, root)
        scale = self.scale(top["scale"][1]) if "scale" in top else {}
        environment = self.environment(top["environment"][1]) if "environment" in top else {}
        seed = self.integer(top["seed"][1], "seed", 0, None) if "seed" in top else 0
        self.duration = self.required(top, root, "", "duration", self.positive_duration)
        short_duration = self.duration
        if "short_duration" in top:
            node = top["short_duration"][1]
            short_duration = self.positive_duration(node, "short_duration")
            if None not in (short_duration, self.duration) and short_duration > self.duration:
                self.problem(node, "short_duration", f"{short_duration:g}s is longer than "
                             f"duration ({self.duration:g}s)")
        workloads = self.required(top, root, "", "workloads", self.workloads) or ()
        self.check_workload_labs(top, workloads, lab_name)
        faults = self.items(top, "faults", self.fault)
        nemesis = self.nemesis(*top["nemesis"]) if "nemesis" in top else None
        migrations = self.items(top, "migrations", self.migration)
        types = {w.type for w in workloads}
        checks = self.checks(top["checks"][1], types) if "checks" in top else ()
        expectations = self.items(top, "expect", lambda n, p: self.expectation(n, p, types))
        self.check_names(scale)

        if self.problems:
            return None
        return Scenario(name=name, description=description, lab=lab_name, scale=scale,
                        environment=environment,
                        seed=seed, duration=self.duration, short_duration=short_duration,
                        workloads=workloads, faults=faults, nemesis=nemesis,
                        migrations=migrations, checks=checks, expectations=expectations,
                        source=source)

    def check_workload_labs(self, top: Entries, workloads: tuple[Workload, ...],
                            lab: str) -> None:
        if lab not in self.catalogue.labs or "workloads" not in top:  # an unknown lab is said
            return
        items = top["workloads"][1].value
        order = list(self.catalogue.labs)
        for index, workload in enumerate(workloads):
            labs = self.registry.labs_serving(workload.type, order)
            if lab in labs or index >= len(items):
                continue
            named = " or ".join(filter(None, (", ".join(labs[:-1]), labs[-1]))) if labs else ""
            where = f"the {named} lab" if labs else "no lab yet"
            self.problem(items[index], f"workloads[{index}].type",
                         f"a {workload.type} workload runs against {where}, not {lab}")

    def lab_field(self, top: Entries, root: Node) -> str:
        node = top["lab"][1] if "lab" in top else None
        if node is None:
            self.problem(root, "", "missing required field 'lab' (labs: "
                         f"{', '.join(sorted(self.catalogue.labs))})")
            return ""
        name = self.string(node, "lab")
        if name is None:
            return ""
        if name not in self.catalogue.labs:
            labs = sorted(self.catalogue.labs)
            self.problem(node, "lab", f"unknown lab '{name}', not one of {', '.join(labs)}"
                                      f"{did_you_mean(name, labs)}")
            return name
        self.lab = self.catalogue.labs[name]
        return name

    def scale(self, node: Node) -> dict[str, int]:
        entries = self.entries(node, "scale", "a mapping of service: count")
        scale: dict[str, int] = {}
        for service, (key, value) in (entries or {}).items():
            path = join("scale", service)
            if self.lab is not None and service not in self.lab.services:
                self.problem(key, path, self.no_service(service))
                continue
            count = self.integer(value, path, 0, MAX_REPLICAS)
            if count is not None:
                scale[service] = count
        return scale

    def environment(self, node: Node) -> dict[str, str]:
        """`DISTLAB_X: value` for the variables the lab's services read (compose.yaml), each
        value a single one, kept as written: `131072` stays "131072" for Compose."""
        entries = self.entries(node, "environment", "a mapping of variable: value")
        known = self.lab.variables if self.lab is not None else None
        environment: dict[str, str] = {}
        for variable, (key, value) in (entries or {}).items():
            path = join("environment", variable)
            if known is not None and variable not in known:
                self.problem(key, path, f"the {self.lab.name} lab's services read no variable "
                             f"'{variable}' (they read: {', '.join(known) or 'none'})"
                             f"{did_you_mean(variable, known)}")
            elif isinstance(value, ScalarNode) and value.tag != NULL:
                environment[variable] = value.value
            else:
                self.problem(value, path, f"a variable's value is a single value, got "
                             f"{describe(value)}")
        return environment

    def no_service(self, service: str) -> str:
        assert self.lab is not None
        return (f"lab '{self.lab.name}' has no service '{service}' (its services: "
                f"{', '.join(self.lab.services)}){did_you_mean(service, self.lab.services)}")

    def items(self, top: Entries, name: str, parse: Callable[[Node, str], Any]) -> tuple:
        """An optional list field whose elements `parse` turns into dataclasses."""
        if name not in top:
            return ()
        nodes = self.sequence(top[name][1], name)
        parsed = [parse(node, join(name, index)) for index, node in enumerate(nodes or ())]
        return tuple(item for item in parsed if item is not None)

    # -- workloads ---------------------------------------------------------------------

    def workloads(self, node: Node, path: str) -> tuple[Workload, ...] | None:
        nodes = self.sequence(node, path, minimum=1)
        if nodes is None:
            return None
        parsed = [self.workload(item, join(path, index)) for index, item in enumerate(nodes)]
        return tuple(w for w in parsed if w is not None)

    def workload(self, node: Node, path: str) -> Workload | None:
        kinds = self.registry.workloads
        entries, type_ = self.variant(node, path, "workload", "type", {
            name: WORKLOAD_FIELDS + tuple(o.name for o in kind.options)
            for name, kind in kinds.items()})
        if entries is None:
            return None
        get = self.getter(entries, path)
        common = (get("processes", 4, lambda n, p: self.integer(n, p, 1, 64)),
                  get("rate", 0.0, lambda n, p: self.number(n, p, lambda x: x >= 0, ">= 0")),
                  get("timeout", 2.0, self.positive_duration),
                  get("max_ops", 100_000, lambda n, p: self.integer(n, p, 1, None)))
        via = self.via(entries["via"][1], join(path, "via")) if "via" in entries else None
        if type_ is None:
            return None
        options = self.fields(entries, node, path, kinds[type_].options)
        return Workload(type_, *common, **options, **({"via": via} if via else {}))

    def via(self, node: Node, path: str) -> str | None:
        """The role a workload's clients call instead of the lab's entry role."""
        role = self.string(node, path)
        if role is None or self.lab is None:
            return role
        roles = list(dict.fromkeys(self.lab.roles.values()))
        if role not in roles:
            self.problem(node, path, f"lab '{self.lab.name}' has no role '{role}' (its roles: "
                         f"{', '.join(roles)}){did_you_mean(role, roles)}")
            return None
        return role

    # -- faults ------------------------------------------------------------------------

    def fault(self, node: Node, path: str) -> Fault | None:
        kinds = self.registry.faults
        entries, kind = self.variant(node, path, "fault", "kind", {
            name: FAULT_FIELDS + declared.fields for name, declared in kinds.items()})
        if entries is None:
            return None
        at = self.required(entries, node, path, "at", self.at)
        for_ = None
        if "for" in entries:
            if kind is not None and kinds[kind].instant:
                self.problem(entries["for"][0], path, f"{an(kind)} fault has no 'for': it is "
                             "over when the machine is back")
            else:
                for_ = self.positive_duration(entries["for"][1], join(path, "for"))
        if kind is None:
            return None
        # A bad `at` is already a problem; the fields after it are still checked.
        fault = Fault(at=at, for_=for_, kind=kind, line=line_of(node))
        return kinds[kind].parse(self, fault, entries, node, path)

    # -- nemesis and migrations --------------------------------------------------------

    def nemesis(self, key: Node, node: Node) -> Nemesis | None:
        path = "nemesis"
        entries = self.entries(node, path, "a nemesis")
        if entries is None:
            return None
        node = key  # a missing field is reported on the `nemesis:` line
        self.unknown(entries, path, NEMESIS_FIELDS)
        get = self.getter(entries, path)
        kinds = self.required(entries, node, path, "kinds", self.nemesis_kinds)
        targets = self.required(entries, node, path, "targets",
                                lambda n, p: self.refs(n, p, many=False))
        start = get("start", 5.0, self.duration_value)
        if start is not None and self.duration is not None and start >= self.duration:
            self.problem(entries["start"][1], join(path, "start"), f"{start:g}s is not before "
                         f"the end of the run (duration {self.duration:g}s)")
        values = dict(
            kinds=kinds, targets=targets, start=start,
            interval=self.required(entries, node, path, "interval", self.positive_duration),
            for_=self.required(entries, node, path, "for", self.positive_duration),
            probability=get("probability", 0.3, self.probability))
        if any(value is None for value in values.values()):
            return None
        return Nemesis(**values)

    def nemesis_kinds(self, node: Node, path: str) -> tuple[str, ...] | None:
        nodes = self.sequence(node, path, minimum=1)
        if nodes is None:
            return None
        drawable = [name for name, kind in self.registry.faults.items() if kind.drawn]
        kinds = [self.choice(n, join(path, i), drawable) for i, n in enumerate(nodes)]
        return None if None in kinds else tuple(kinds)  # type: ignore[arg-type]

    def migration(self, node: Node, path: str) -> Migration | None:
        kinds = self.registry.migrations
        entries, action = self.variant(node, path, "migration", "action", {
            name: MIGRATION_FIELDS + declared.fields for name, declared in kinds.items()})
        if entries is None:
            return None
        at = self.required(entries, node, path, "at", self.at)
        if action is None:
            return None
        # A bad `at` is already a problem; the fields after it are still checked.
        return kinds[action].parse(self, Migration(at, action, line=line_of(node)), entries,
                                   node, path)

    def scales_up(self, service: str, count: int) -> None:
        """A migration runs `service` at `count`: its machines up to that count exist."""
        self.scale_ups[service] = max(count, self.scale_ups.get(service, 0))

    def service(self, node: Node, path: str) -> str | None:
        service = self.string(node, path)
        if service is not None and self.lab is not None and service not in self.lab.services:
            self.problem(node, path, self.no_service(service))
            return None
        return service

    # -- checks and expectations -------------------------------------------------------

    def checks(self, node: Node, types: set[str]) -> tuple[Check, ...]:
        checks: list[Check] = []
        for index, item in enumerate(self.sequence(node, "checks") or ()):
            path = join("checks", index)
            check = self.check(item, path, types)
            if check is None:
                continue
            if any(c.name == check.name for c in checks):
                self.problem(item, path, f"check '{check.name}' is listed twice")
            checks.append(check)
        return tuple(checks)

    def check(self, node: Node, path: str, types: set[str]) -> Check | None:
        name_node, options_node = self.one_key(node, path, "a check", "a check name, or a "
                                               "one-key mapping {name: {options}}")
        if name_node is None:
            return None
        name = name_node.value
        kinds = self.registry.checks
        if name not in kinds:
            self.problem(name_node, path, f"unknown check '{name}', not one of "
                         f"{', '.join(kinds)}{did_you_mean(name, kinds)}")
            return None
        kind = kinds[name]
        if types and kind.needs not in types and kind.needs != MIGRATIONS:
            self.problem(name_node, path, f"the {name} check needs a {kind.needs} workload; "
                         f"this scenario has {', '.join(sorted(types))}")
        path = join(path, name)
        entries: Entries = {}
        if options_node is not None and options_node.tag != NULL:
            entries = self.entries(options_node, path, "the check's options") or {}
        if not kind.options:
            for option, (key, _) in entries.items():
                self.problem(key, path, f"unknown option '{option}': the {name} check has none")
            return Check(name, {})
        self.unknown(entries, path, [option.name for option in kind.options])
        return Check(name, self.fields(entries, name_node, path, kind.options))

    def expectation(self, node: Node, path: str, types: set[str]) -> Expectation | None:
        kind_node, body = self.one_key(node, path, "an expectation",
                                       "a one-key mapping {availability: {...}} or "
                                       "{latency: {...}}")
        if kind_node is None:
            return None
        kind = kind_node.value
        if kind not in EXPECTATION_KINDS:
            self.problem(kind_node, path, f"unknown expectation '{kind}', not one of "
                         f"{', '.join(EXPECTATION_KINDS)}{did_you_mean(kind, EXPECTATION_KINDS)}")
            return None
        path = join(path, kind)
        entries: Entries | None = {}
        if body is not None and body.tag != NULL:
            entries = self.entries(body, path, f"the {kind} expectation's fields")
        if entries is None:
            return None
        self.unknown(entries, path, EXPECTATION_FIELDS[kind],
                     known=all_fields(EXPECTATION_FIELDS),
                     used_by=f"{an(kind)} expectation")
        get = self.getter(entries, path)
        anchor = kind_node  # a missing field is reported on the `availability:` line
        ops = get("ops", (), lambda n, p: self.ops(n, p, types))
        common = dict(window=get("window", "all" if kind == "availability" else "calm",
                                 lambda n, p: self.choice(n, p, WINDOWS)),
                      ops=ops, grace=get("grace", 0.0, self.duration_value), line=line_of(node))
        if kind == "availability":
            return Expectation(kind, at_least=self.required(
                entries, anchor, path, "at_least",
                lambda n, p: self.number(n, p, lambda x: 0 <= x <= 1, "0..1")), **common)
        return Expectation(
            kind, at_most=self.required(entries, anchor, path, "at_most",
                                        self.positive_duration),
            percentile=get("percentile", 99.0,
                           lambda n, p: self.number(n, p, lambda x: 0 < x <= 100,
                                                    "with 0 < p <= 100")), **common)

    def ops(self, node: Node, path: str, types: set[str]) -> tuple[str, ...]:
        known = [op for name, kind in self.registry.workloads.items() if name in types
                 for op in kind.ops]
        ops = []
        for index, item in enumerate(self.sequence(node, path, minimum=1) or ()):
            op = self.string(item, join(path, index))
            if op is not None and known and op not in known:
                self.problem(item, join(path, index),
                             f"no workload of this scenario records '{op}' operations "
                             f"(ops: {', '.join(known)}){did_you_mean(op, known)}")
            ops.append(op)
        return tuple(ops)

    # -- machine refs ------------------------------------------------------------------

    def ref(self, node: Node, path: str, *, many: bool) -> MachineRef | None:
        text = self.string(node, path)
        if text is None:
            return None
        registered = self.registry.refs
        form = ", ".join(["write <service>-<n> (app-1)", "role:<role>",
                          *(f"{kind.prefix}:{'|'.join(kind.values)}"
                            for kind in registered.values())])
        form = form + " or all:<role>" if many else form
        prefix, colon, value = text.partition(":")
        if not colon:
            return self.name_ref(node, path, text, form)
        prefixes = (*SHARED_PREFIXES, *registered)
        if prefix not in prefixes:
            close = difflib.get_close_matches(prefix, prefixes, n=1)
            hint = f"; did you mean '{close[0]}:{value}'?" if close else ""
            self.problem(node, path, f"'{text}' is not a machine ref ({form}){hint}")
            return None
        if prefix == "all" and not many:
            self.problem(node, path, f"'{text}' names several machines where one is meant; "
                         f"use role:{value} for one of them")
            return None
        if prefix in registered:
            kind = registered[prefix]
            if value not in kind.values:
                self.problem(node, path, f"'{value}' is not {kind.what}, not one of "
                             f"{', '.join(kind.values)}{did_you_mean(value, kind.values)}")
                return None
            reason = kind.unavailable(self.lab) if self.lab is not None else None
            if reason:
                self.problem(node, path, f"'{text}' {reason}")
                return None
        elif self.lab is not None:
            roles = list(dict.fromkeys(self.lab.roles.values()))
            if value not in roles:
                self.problem(node, path, f"lab '{self.lab.name}' has no role '{value}' (its "
                             f"roles: {', '.join(roles)}){did_you_mean(value, roles)}")
                return None
        return MachineRef(text, prefix, value)

    def single_ref(self, node: Node, path: str) -> MachineRef | None:
        return self.ref(node, path, many=False)

    def name_ref(self, node: Node, path: str, text: str, form: str) -> MachineRef | None:
        service, dash, index = text.rpartition("-")
        if not (dash and service and index.isdigit()):
            hint = f"; did you mean '{text}-1' or 'role:{text}'?" \
                if self.lab is not None and text in self.lab.services else ""
            self.problem(node, path, f"'{text}' is not a machine ref ({form}){hint}")
            return None
        self.names.append(_Ref(node, path, text))
        return MachineRef(text, "name", text)

    def refs(self, node: Node, path: str, *, many: bool = True
             ) -> tuple[MachineRef, ...] | None:
        nodes = self.sequence(node, path, minimum=1)
        if nodes is None:
            return None
        refs = [self.ref(item, join(path, i), many=many) for i, item in enumerate(nodes)]
        return None if None in refs else tuple(refs)  # type: ignore[arg-type]

    def ref_or_refs(self, node: Node, path: str) -> tuple[MachineRef, ...] | None:
        if isinstance(node, SequenceNode):
            return self.refs(node, path)
        ref = self.ref(node, path, many=True)
        return None if ref is None else (ref,)

    def check_names(self, scale: dict[str, int]) -> None:
        """Every `<service>-<n>` must exist at the scale, or at a scale a migration reaches."""
        if self.lab is None:
            return
        counts = counts_at(self.lab, scale)
        for service, count in self.scale_ups.items():
            counts[service] = max(counts.get(service, 0), count)
        existing = {name for service, count in counts.items()
                    for name in names_of(service, count)}
        for ref in self.names:
            if ref.name in existing:
                continue
            service = ref.name.rpartition("-")[0]
            if service in counts:
                reason = (f"no machine '{ref.name}': at this scale {service} has "
                          f"{counts[service]} machine{'s' if counts[service] != 1 else ''} "
                          f"({span(service, counts[service])})")
                if service not in scale and service not in self.scale_ups:
                    reason += f"; scale: {{{service}: N}} adds more"
            else:
                reason = (f"no machine '{ref.name}' in lab '{self.lab.name}' (its machines: "
                          f"{', '.join(span(s, c) for s, c in counts.items() if c)})"
                          f"{did_you_mean(ref.name, sorted(existing))}")
            self.problem(ref.node, ref.path, reason)

    # -- scalars -------------------------------------------------------------------------

    def at(self, node: Node, path: str) -> float | None:
        at = self.duration_value(node, path)
        if at is not None and self.duration is not None and at >= self.duration:
            self.problem(node, path, f"{at:g}s is not before the end of the run "
                                     f"(duration {self.duration:g}s)")
            return None
        return at
