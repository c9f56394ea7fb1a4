"""Scenario files: YAML parsed and checked, node by node, into frozen dataclasses.

The runner calls `load_scenario` and gets a `Scenario` whose every field is typed, defaulted
and checked against the lab catalogue (compose.yaml); nothing else reads scenario YAML. A bad
file raises one `ScenarioError` listing every problem with its line, so a student fixes them
all in one pass. Pure: reads the file it is given and nothing else. The user-facing reference
is docs/scenario-format.md; the contract with the runner is this module's dataclasses.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import grpc
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from distlab.errors import UsageError
from distlab.faults.network import SHAPES
from distlab.labs import MAX_REPLICAS, Catalogue, Lab
from nodes.common.faults import EXEMPT_PREFIX, MAX_DELAY_SECONDS

FAULT_KINDS = ("kill", "stop", "pause", "restart", "partition", "loss", "bandwidth", "delay",
               "rpc")
PROCESS_KINDS = ("kill", "stop", "pause", "restart")
NEMESIS_KINDS = ("kill", "stop", "pause", "restart", "partition", "loss")
RPC_ACTIONS = ("delay", "error", "drop")
MIGRATION_ACTIONS = ("reconfigure", "scale")
WORKLOAD_TYPES = ("bank", "register")
# The operation names each workload records in the history (expectations may select them).
WORKLOAD_OPS = {"bank": ("transfer", "balance", "audit"), "register": ("read", "write")}
CHECK_NEEDS = {"bank": "bank", "linearizable": "register"}  # check -> workload type it reads
# The labs whose entry point serves each workload's service (distlab.scenarios.context).
WORKLOAD_LABS = {"bank": ("tiers",), "register": ("tiers", "kv")}
EXPECTATION_KINDS = ("availability", "latency")
WINDOWS = ("faults", "calm", "all")
CHAIN_POSITIONS = ("head", "middle", "tail")
REF_PREFIXES = ("role", "chain", "all")
STATUS_CODES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)
# The rates `tc tbf` takes, as distlab.faults.network.bandwidth_plan checks them.
_RATE = re.compile(r"\d+(?:\.\d+)?(?:bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)(?P<unit>ms|s|m)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
DURATION_FORM = "a number of seconds or <number><unit> with unit ms, s or m (500ms, 5s, 1.5m)"

TOP_FIELDS = ("name", "description", "lab", "scale", "seed", "duration", "short_duration",
              "workloads", "faults", "nemesis", "migrations", "checks", "expect")
WORKLOAD_FIELDS = {
    "bank": ("type", "processes", "rate", "timeout", "max_ops", "accounts"),
    "register": ("type", "processes", "rate", "timeout", "max_ops", "keys", "read_share"),
}
FAULT_FIELDS = {
    **{kind: ("at", "for", "kind", "target") for kind in PROCESS_KINDS},
    "partition": ("at", "for", "kind", "shape", "target", "groups", "machines"),
    "loss": ("at", "for", "kind", "target", "probability"),
    "bandwidth": ("at", "for", "kind", "target", "rate"),
    "delay": ("at", "for", "kind", "target", "delay", "jitter"),
    "rpc": ("at", "for", "kind", "target", "action", "probability", "delay", "jitter", "method",
            "code", "outbound"),
}
NEMESIS_FIELDS = ("kinds", "targets", "start", "interval", "for", "probability")
MIGRATION_FIELDS = {"reconfigure": ("at", "action", "target", "settings"),
                    "scale": ("at", "action", "service", "count")}
CHECK_OPTIONS = {"bank": (), "linearizable": ("time_limit", "max_ops_per_key")}
EXPECTATION_FIELDS = {"availability": ("window", "at_least", "ops", "grace"),
                      "latency": ("window", "percentile", "at_most", "ops", "grace")}

_STR, _INT, _FLOAT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_BOOL, _NULL = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"


# -- the dataclasses the runner consumes ---------------------------------------------------


@dataclass(frozen=True)
class MachineRef:
    """A machine as a scenario names it: `app-2`, `role:app`, `chain:tail` or `all:app`."""

    text: str  # as written in the file
    kind: Literal["name", "role", "chain", "all"]
    value: str  # the machine name, the role, or the chain position

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Workload:
    type: str  # bank | register
    processes: int
    rate: float  # operations per second over all processes; 0 = closed loop
    timeout: float  # seconds
    max_ops: int
    accounts: int | None = None  # bank only
    keys: int | None = None  # register only
    read_share: float | None = None  # register only


@dataclass(frozen=True)
class Fault:
    """One timeline entry. Fields the kind does not use keep their default here (None, (),
    0.0 or False); an rpc fault always has method, code and probability set."""

    at: float  # seconds since the workloads started
    for_: float | None  # None: until the end of the run
    kind: str
    target: MachineRef | None = None
    shape: str | None = None  # partition
    groups: tuple[tuple[MachineRef, ...], ...] = ()  # partition shape groups
    machines: tuple[MachineRef, ...] = ()  # partition; (): every running lab machine
    probability: float | None = None  # loss, rpc
    rate: str | None = None  # bandwidth, as tc writes it (1mbit)
    delay: float | None = None  # seconds: delay, rpc delay
    jitter: float = 0.0  # seconds: delay, rpc delay
    action: str | None = None  # rpc: delay | error | drop
    method: str | None = None  # rpc
    code: str | None = None  # rpc error: a grpc.StatusCode name
    outbound: bool = False  # rpc
    line: int = 0


@dataclass(frozen=True)
class Nemesis:
    kinds: tuple[str, ...]
    targets: tuple[MachineRef, ...]
    start: float
    interval: float  # mean seconds between fault starts
    for_: float  # seconds each fault lasts
    probability: float  # of loss faults


@dataclass(frozen=True)
class Migration:
    at: float
    action: str  # reconfigure | scale
    targets: tuple[MachineRef, ...] = ()  # reconfigure
    settings: dict[str, str] | None = field(default=None, hash=False)  # reconfigure
    service: str | None = None  # scale
    count: int | None = None  # scale
    line: int = 0


@dataclass(frozen=True)
class Check:
    name: str  # bank | linearizable
    options: dict[str, Any] = field(default_factory=dict, hash=False)  # defaults filled in


@dataclass(frozen=True)
class Expectation:
    kind: str  # availability | latency
    window: str  # faults | calm | all
    at_least: float | None = None  # availability: share of ok operations, 0..1
    at_most: float | None = None  # latency: seconds
    percentile: float | None = None  # latency
    ops: tuple[str, ...] = ()  # (): every operation
    grace: float = 0.0  # seconds after a fault that still count as "faults"
    line: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    lab: str
    scale: dict[str, int] = field(hash=False)  # as written; machine_names gives the machines
    seed: int
    duration: float
    short_duration: float
    workloads: tuple[Workload, ...]
    faults: tuple[Fault, ...] = ()
    nemesis: Nemesis | None = None
    migrations: tuple[Migration, ...] = ()
    checks: tuple[Check, ...] = ()
    expectations: tuple[Expectation, ...] = ()
    source: str = "<scenario>"

    def with_seed(self, seed: int) -> Scenario:
        """The same scenario under another seed (`distlab run --seed`)."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"a seed is an integer >= 0, got {seed!r}")
        return replace(self, seed=seed)

    def shortened(self) -> Scenario:
        """The `--short` run: duration = short_duration. Events at or after it stay in the
        timeline; the runner drops them."""
        return replace(self, duration=self.short_duration)


# -- errors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 when it is about the file as a whole (unreadable)
    path: str  # where in the document: "faults[1].kind"; "" for the top level
    reason: str

    def text(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class ScenarioError(UsageError):
    """Every problem of one scenario file. A UsageError (so a DistlabError): exit code 2."""

    hint = "the scenario format is in docs/scenario-format.md"

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: p.line)
        lines = self.lines()
        if len(lines) == 1:
            message = lines[0]
        else:
            message = "\n".join([f"{source}: {len(lines)} problems", *lines])
        super().__init__(message)

    def lines(self) -> list[str]:
        return [problem.text(self.source) for problem in self.problems]


# -- public functions ----------------------------------------------------------------------


def load_scenario(path: Path, catalogue: Catalogue) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ScenarioError(str(path), [Problem(0, "", f"cannot read it: {reason}")]) from None
    return parse_scenario(text, catalogue, source=str(path), default_name=path.stem)


def parse_scenario(text: str, catalogue: Catalogue, *, source: str = "<scenario>",
                   default_name: str = "scenario") -> Scenario:
    parser = _Parser(catalogue)
    scenario = parser.parse(text, source, default_name)
    if parser.problems or scenario is None:
        raise ScenarioError(source, parser.problems)
    return scenario


def parse_duration(value: object) -> float:
    """`5` -> 5.0, `"500ms"` -> 0.5, `"2m"` -> 120.0; ValueError saying the form otherwise."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if not match:
            raise ValueError(f"{value!r} is not a duration: write {DURATION_FORM}")
        return float(match["number"]) * _UNITS[match["unit"]]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a duration: write {DURATION_FORM}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a duration must be a finite number >= 0, got {value!r}")
    return float(value)


def machine_names(catalogue: Catalogue, lab: Lab | str, scale: Mapping[str, int] | None = None
                  ) -> list[str]:
    """The machines the lab will have at this scale: `<service>-<i>`, i in 1..count, where
    count is the scale, else compose's `deploy.replicas`, else 1."""
    if isinstance(lab, str):
        lab = catalogue.lab(lab)
    return [name for service, count in _counts(lab, scale or {}).items()
            for name in _names_of(service, count)]


def _counts(lab: Lab, scale: Mapping[str, int]) -> dict[str, int]:
    return {s: scale.get(s, lab.replicas.get(s, 1)) for s in lab.services}


def _names_of(service: str, count: int) -> list[str]:
    return [f"{service}-{index}" for index in range(1, count + 1)]


def _span(service: str, count: int) -> str:
    """`app-1..app-3`: machines listed short in messages."""
    if count <= 0:
        return f"no {service} machine"
    return f"{service}-1" if count == 1 else f"{service}-1..{service}-{count}"


# -- the parser ----------------------------------------------------------------------------


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _all(fields_by_kind: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Every field any kind takes, in order of first appearance."""
    return tuple(dict.fromkeys(f for fields in fields_by_kind.values() for f in fields))


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _describe(node: Node) -> str:
    """What the user wrote, for "expected X, got Y" messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kinds = {_NULL: "nothing", _BOOL: "a boolean", _INT: "an integer", _FLOAT: "a number",
             _STR: "a string"}
    if node.tag == _NULL:
        return "nothing (null)"
    if node.tag == _STR:
        return f"'{node.value}' (a string)"
    return f"{node.value} ({kinds.get(node.tag, 'a ' + node.tag.rsplit(':', 1)[-1])})"


def _an(what: str) -> str:
    return f"an {what}" if what[0] in "aeiou" else f"a {what}"


Entries = dict[str, tuple[Node, Node]]  # field name -> (key node, value node)


@dataclass
class _Ref:
    """A machine name to check once every scale (top level and migrations) is known."""

    node: Node
    path: str
    name: str


class _Parser:
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.problems: list[Problem] = []
        self.lab: Lab | None = None
        self.duration: float | None = None
        self.names: list[_Ref] = []
        self.scale_ups: dict[str, int] = {}  # service -> largest count a migration scales to
        self.constructor = yaml.constructor.SafeConstructor()

    def problem(self, node: Node, path: str, reason: str) -> None:
        self.problems.append(Problem(_line(node), path, reason))

    # -- the document ------------------------------------------------------------------

    def parse(self, text: str, source: str, default_name: str) -> Scenario | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            reason = ", ".join(filter(None, [exc.context, exc.problem]))
            self.problems.append(Problem(mark.line + 1 if mark else 1, "",
                                         f"invalid YAML: {reason}"))
            return None
        except yaml.YAMLError as exc:
            self.problems.append(Problem(1, "", f"invalid YAML: {exc}"))
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
                        seed=seed, duration=self.duration, short_duration=short_duration,
                        workloads=workloads, faults=faults, nemesis=nemesis,
                        migrations=migrations, checks=checks, expectations=expectations,
                        source=source)

    def check_workload_labs(self, top: Entries, workloads: tuple[Workload, ...],
                            lab: str) -> None:
        if lab not in self.catalogue.labs or "workloads" not in top:  # an unknown lab is said
            return
        items = top["workloads"][1].value
        for index, workload in enumerate(workloads):
            labs = WORKLOAD_LABS.get(workload.type, ())
            if lab not in labs and index < len(items):
                self.problem(items[index], f"workloads[{index}].type",
                             f"a {workload.type} workload runs against the "
                             f"{' or '.join(labs)} lab, not {lab}")

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
                                      f"{_did_you_mean(name, labs)}")
            return name
        self.lab = self.catalogue.labs[name]
        return name

    def scale(self, node: Node) -> dict[str, int]:
        entries = self.entries(node, "scale", "a mapping of service: count")
        scale: dict[str, int] = {}
        for service, (key, value) in (entries or {}).items():
            path = _join("scale", service)
            if self.lab is not None and service not in self.lab.services:
                self.problem(key, path, self.no_service(service))
                continue
            count = self.integer(value, path, 0, MAX_REPLICAS)
            if count is not None:
                scale[service] = count
        return scale

    def no_service(self, service: str) -> str:
        assert self.lab is not None
        return (f"lab '{self.lab.name}' has no service '{service}' (its services: "
                f"{', '.join(self.lab.services)}){_did_you_mean(service, self.lab.services)}")

    def items(self, top: Entries, name: str, parse: Callable[[Node, str], Any]) -> tuple:
        """An optional list field whose elements `parse` turns into dataclasses."""
        if name not in top:
            return ()
        nodes = self.sequence(top[name][1], name)
        parsed = [parse(node, _join(name, index)) for index, node in enumerate(nodes or ())]
        return tuple(item for item in parsed if item is not None)

    # -- workloads ---------------------------------------------------------------------

    def workloads(self, node: Node, path: str) -> tuple[Workload, ...] | None:
        nodes = self.sequence(node, path, minimum=1)
        if nodes is None:
            return None
        parsed = [self.workload(item, _join(path, index)) for index, item in enumerate(nodes)]
        return tuple(w for w in parsed if w is not None)

    def workload(self, node: Node, path: str) -> Workload | None:
        entries, type_ = self.variant(node, path, "workload", "type", WORKLOAD_FIELDS)
        if entries is None:
            return None
        get = self.getter(entries, path)
        workload = Workload(
            type=type_ or "",
            processes=get("processes", 4, lambda n, p: self.integer(n, p, 1, 64)),
            rate=get("rate", 0.0, lambda n, p: self.number(n, p, lambda x: x >= 0, ">= 0")),
            timeout=get("timeout", 2.0, self.positive_duration),
            max_ops=get("max_ops", 100_000, lambda n, p: self.integer(n, p, 1, None)))
        if type_ == "bank":
            return replace(workload, accounts=get("accounts", 6,
                                                  lambda n, p: self.integer(n, p, 2, 1000)))
        if type_ == "register":
            return replace(
                workload, keys=get("keys", 3, lambda n, p: self.integer(n, p, 1, 100)),
                read_share=get("read_share", 0.5,
                               lambda n, p: self.number(n, p, lambda x: 0 <= x <= 1, "0..1")))
        return None

    # -- faults ------------------------------------------------------------------------

    def fault(self, node: Node, path: str) -> Fault | None:
        entries, kind = self.variant(node, path, "fault", "kind", FAULT_FIELDS)
        if entries is None:
            return None
        at = self.required(entries, node, path, "at", self.at)
        for_ = None
        if "for" in entries:
            if kind == "restart":
                self.problem(entries["for"][0], path, "a restart fault has no 'for': it is "
                             "over when the machine is back")
            else:
                for_ = self.positive_duration(entries["for"][1], _join(path, "for"))
        if kind is None:
            return None
        # A bad `at` is already a problem; the fields after it are still checked.
        fault = Fault(at=at, for_=for_, kind=kind, line=_line(node))
        get = self.getter(entries, path)
        if kind == "partition":
            return self.partition(fault, entries, node, path)
        fault = replace(fault, target=self.required(entries, node, path, "target",
                                                    self.single_ref))
        if kind == "loss":
            return replace(fault, probability=self.required(
                entries, node, path, "probability", self.probability))
        if kind == "bandwidth":
            return replace(fault, rate=self.required(entries, node, path, "rate", self.rate))
        if kind == "delay":
            return replace(fault, delay=self.required(entries, node, path, "delay",
                                                      self.positive_duration),
                           jitter=get("jitter", 0.0, self.duration_value))
        if kind == "rpc":
            return self.rpc(fault, entries, node, path)
        return fault

    def partition(self, fault: Fault, entries: Entries, node: Node, path: str) -> Fault:
        shape = self.required(entries, node, path, "shape", lambda n, p: self.choice(n, p, SHAPES))
        if shape is None:
            return fault
        # network.partition takes a target only for isolate and groups only for groups.
        for name, wanted in (("target", "isolate"), ("groups", "groups")):
            if name in entries and shape != wanted:
                self.problem(entries[name][0], path,
                             f"field '{name}' is not used by a partition of shape '{shape}'")
        fault = replace(fault, shape=shape)
        if shape == "isolate":
            fault = replace(fault, target=self.required(entries, node, path, "target",
                                                        self.single_ref))
        if shape == "groups":
            fault = replace(fault, groups=self.required(entries, node, path, "groups",
                                                        self.groups) or ())
        if "machines" in entries:
            fault = replace(fault, machines=self.refs(entries["machines"][1],
                                                      _join(path, "machines")) or ())
        return fault

    def groups(self, node: Node, path: str) -> tuple[tuple[MachineRef, ...], ...] | None:
        nodes = self.sequence(node, path, minimum=1)
        if nodes is None:
            return None
        groups = tuple(self.refs(group, _join(path, index)) for index, group in enumerate(nodes))
        seen: dict[str, int] = {}
        for index, group in enumerate(groups):
            for ref in group or ():
                if ref.kind == "name" and seen.setdefault(ref.value, index) != index:
                    self.problem(nodes[index], _join(path, index), f"machine '{ref}' is also "
                                 f"in group {seen[ref.value]}; groups must be disjoint")
        if any(group is None for group in groups):
            return None
        return groups  # type: ignore[return-value]

    def rpc(self, fault: Fault, entries: Entries, node: Node, path: str) -> Fault:
        get = self.getter(entries, path)
        action = self.required(entries, node, path, "action",
                               lambda n, p: self.choice(n, p, RPC_ACTIONS))
        # Defaults for every action, so the runner can pass them all to Nemesis.rpc.
        fault = replace(fault, action=action, method=get("method", "*", self.method),
                        probability=get("probability", 1.0, self.probability),
                        outbound=get("outbound", False, self.boolean), code="UNAVAILABLE")
        unused = {"delay": ("code",), "error": ("delay", "jitter"),
                  "drop": ("delay", "jitter", "code")}.get(action or "", ())
        for name in unused:
            if name in entries:
                self.problem(entries[name][0], path,
                             f"field '{name}' is not used by an rpc fault with action '{action}'")
        if action == "delay":
            delay = self.required(entries, node, path, "delay", self.positive_duration)
            jitter = get("jitter", 0.0, self.duration_value)
            if delay is not None and jitter is not None and delay + jitter > MAX_DELAY_SECONDS:
                self.problem(entries["delay"][1], _join(path, "delay"),
                             f"delay + jitter must be at most {MAX_DELAY_SECONDS:g}s")
            return replace(fault, delay=delay, jitter=jitter)
        if action == "error":
            return replace(fault, code=get("code", "UNAVAILABLE",
                                           lambda n, p: self.choice(n, p, STATUS_CODES)))
        return fault

    def method(self, node: Node, path: str) -> str | None:
        method = self.string(node, path)
        if method is None or method == "*":
            return method
        if not (method.startswith("/") and method.count("/") == 2 and len(method) > 3):
            self.problem(node, path, f"'{method}' is not a method: write '*', "
                                     "'/pkg.Service/*' or '/pkg.Service/Method'")
            return None
        if method.startswith(EXEMPT_PREFIX):
            self.problem(node, path, "the Control service is exempt from RPC faults")
            return None
        return method

    def rate(self, node: Node, path: str) -> str | None:
        rate = self.string(node, path)
        if rate is not None and not _RATE.fullmatch(rate):
            self.problem(node, path, f"'{rate}' is not a rate: a number and one of bit kbit mbit "
                                     "gbit bps kbps mbps gbps, e.g. 1mbit, 500kbit")
            return None
        return rate

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
            self.problem(entries["start"][1], _join(path, "start"), f"{start:g}s is not before "
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
        kinds = [self.choice(n, _join(path, i), NEMESIS_KINDS) for i, n in enumerate(nodes)]
        return None if None in kinds else tuple(kinds)  # type: ignore[arg-type]

    def migration(self, node: Node, path: str) -> Migration | None:
        entries, action = self.variant(node, path, "migration", "action", MIGRATION_FIELDS)
        if entries is None:
            return None
        at = self.required(entries, node, path, "at", self.at)
        if action is None:
            return None
        # A bad `at` is already a problem; the fields after it are still checked.
        migration = Migration(at=at, action=action, line=_line(node))
        if action == "reconfigure":
            return replace(
                migration,
                targets=self.required(entries, node, path, "target", self.ref_or_refs) or (),
                settings=self.required(entries, node, path, "settings", self.settings))
        service = self.required(entries, node, path, "service", self.service)
        count = self.required(entries, node, path, "count",
                              lambda n, p: self.integer(n, p, 0, MAX_REPLICAS))
        if service is not None and count is not None:
            self.scale_ups[service] = max(count, self.scale_ups.get(service, 0))
        return replace(migration, service=service, count=count)

    def service(self, node: Node, path: str) -> str | None:
        service = self.string(node, path)
        if service is not None and self.lab is not None and service not in self.lab.services:
            self.problem(node, path, self.no_service(service))
            return None
        return service

    def settings(self, node: Node, path: str) -> dict[str, str] | None:
        entries = self.entries(node, path, "a mapping of setting: value")
        if entries is None:
            return None
        settings: dict[str, str] = {}
        for name, (_, value) in entries.items():
            # The text as written: `0.5` stays "0.5" and `true` stays "true" for the node.
            if isinstance(value, ScalarNode) and value.tag != _NULL:
                settings[name] = value.value
            else:
                self.problem(value, _join(path, name),
                             f"a setting is a single value, got {_describe(value)}")
        return settings

    # -- checks and expectations -------------------------------------------------------

    def checks(self, node: Node, types: set[str]) -> tuple[Check, ...]:
        checks: list[Check] = []
        for index, item in enumerate(self.sequence(node, "checks") or ()):
            path = _join("checks", index)
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
        if name not in CHECK_NEEDS:
            self.problem(name_node, path, f"unknown check '{name}', not one of "
                         f"{', '.join(CHECK_NEEDS)}{_did_you_mean(name, CHECK_NEEDS)}")
            return None
        needs = CHECK_NEEDS[name]
        if types and needs not in types:
            self.problem(name_node, path, f"the {name} check needs a {needs} workload; "
                         f"this scenario has {', '.join(sorted(types))}")
        path = _join(path, name)
        entries: Entries = {}
        if options_node is not None and options_node.tag != _NULL:
            entries = self.entries(options_node, path, "the check's options") or {}
        if name == "bank":
            for option, (key, _) in entries.items():
                self.problem(key, path, f"unknown option '{option}': the bank check has none")
            return Check(name, {})
        self.unknown(entries, path, CHECK_OPTIONS[name])
        get = self.getter(entries, path)
        return Check(name, {
            "time_limit": get("time_limit", 10.0, self.positive_duration),
            "max_ops_per_key": get("max_ops_per_key", 2000,
                                   lambda n, p: self.integer(n, p, 1, None))})

    def expectation(self, node: Node, path: str, types: set[str]) -> Expectation | None:
        kind_node, body = self.one_key(node, path, "an expectation",
                                       "a one-key mapping {availability: {...}} or "
                                       "{latency: {...}}")
        if kind_node is None:
            return None
        kind = kind_node.value
        if kind not in EXPECTATION_KINDS:
            self.problem(kind_node, path, f"unknown expectation '{kind}', not one of "
                         f"{', '.join(EXPECTATION_KINDS)}{_did_you_mean(kind, EXPECTATION_KINDS)}")
            return None
        path = _join(path, kind)
        entries: Entries | None = {}
        if body is not None and body.tag != _NULL:
            entries = self.entries(body, path, f"the {kind} expectation's fields")
        if entries is None:
            return None
        self.unknown(entries, path, EXPECTATION_FIELDS[kind],
                     known=_all(EXPECTATION_FIELDS),
                     used_by=f"{_an(kind)} expectation")
        get = self.getter(entries, path)
        anchor = kind_node  # a missing field is reported on the `availability:` line
        ops = get("ops", (), lambda n, p: self.ops(n, p, types))
        common = dict(window=get("window", "all" if kind == "availability" else "calm",
                                 lambda n, p: self.choice(n, p, WINDOWS)),
                      ops=ops, grace=get("grace", 0.0, self.duration_value), line=_line(node))
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
        known = [op for type_ in WORKLOAD_TYPES if type_ in types for op in WORKLOAD_OPS[type_]]
        ops = []
        for index, item in enumerate(self.sequence(node, path, minimum=1) or ()):
            op = self.string(item, _join(path, index))
            if op is not None and known and op not in known:
                self.problem(item, _join(path, index),
                             f"no workload of this scenario records '{op}' operations "
                             f"(ops: {', '.join(known)}){_did_you_mean(op, known)}")
            ops.append(op)
        return tuple(ops)

    def one_key(self, node: Node, path: str, what: str, form: str
                ) -> tuple[ScalarNode | None, Node | None]:
        """A `name` or `{name: value}` element: the name's node and the value's (or None)."""
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return node, None
        if isinstance(node, MappingNode) and len(node.value) == 1:
            key, value = node.value[0]
            if isinstance(key, ScalarNode) and key.tag == _STR:
                return key, value
        self.problem(node, path, f"{what} is {form}, got {_describe(node)}")
        return None, None

    # -- machine refs ------------------------------------------------------------------

    def ref(self, node: Node, path: str, *, many: bool) -> MachineRef | None:
        text = self.string(node, path)
        if text is None:
            return None
        form = ("write <service>-<n> (app-1), role:<role>, chain:head|middle|tail"
                + (" or all:<role>" if many else ""))
        prefix, colon, value = text.partition(":")
        if not colon:
            return self.name_ref(node, path, text, form)
        if prefix not in REF_PREFIXES:
            close = difflib.get_close_matches(prefix, REF_PREFIXES, n=1)
            hint = f"; did you mean '{close[0]}:{value}'?" if close else ""
            self.problem(node, path, f"'{text}' is not a machine ref ({form}){hint}")
            return None
        if prefix == "all" and not many:
            self.problem(node, path, f"'{text}' names several machines where one is meant; "
                         f"use role:{value} for one of them")
            return None
        if prefix == "chain":
            if value not in CHAIN_POSITIONS:
                self.problem(node, path, f"'{value}' is not a chain position, not one of "
                             f"{', '.join(CHAIN_POSITIONS)}{_did_you_mean(value, CHAIN_POSITIONS)}")
                return None
            if self.lab is not None and "data" not in self.lab.services:
                self.problem(node, path, f"'{text}' needs a lab with a chain-replicated data "
                             f"service; lab '{self.lab.name}' has none")
                return None
        elif self.lab is not None:
            roles = list(dict.fromkeys(self.lab.roles.values()))
            if value not in roles:
                self.problem(node, path, f"lab '{self.lab.name}' has no role '{value}' (its "
                             f"roles: {', '.join(roles)}){_did_you_mean(value, roles)}")
                return None
        return MachineRef(text, prefix, value)  # type: ignore[arg-type]

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
        refs = [self.ref(item, _join(path, i), many=many) for i, item in enumerate(nodes)]
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
        counts = _counts(self.lab, scale)
        for service, count in self.scale_ups.items():
            counts[service] = max(counts.get(service, 0), count)
        existing = {name for service, count in counts.items()
                    for name in _names_of(service, count)}
        for ref in self.names:
            if ref.name in existing:
                continue
            service = ref.name.rpartition("-")[0]
            if service in counts:
                reason = (f"no machine '{ref.name}': at this scale {service} has "
                          f"{counts[service]} machine{'s' if counts[service] != 1 else ''} "
                          f"({_span(service, counts[service])})")
                if service not in scale and service not in self.scale_ups:
                    reason += f"; scale: {{{service}: N}} adds more"
            else:
                reason = (f"no machine '{ref.name}' in lab '{self.lab.name}' (its machines: "
                          f"{', '.join(_span(s, c) for s, c in counts.items() if c)})"
                          f"{_did_you_mean(ref.name, sorted(existing))}")
            self.problem(ref.node, ref.path, reason)

    # -- scalars -----------------------------------------------------------------------

    def at(self, node: Node, path: str) -> float | None:
        at = self.duration_value(node, path)
        if at is not None and self.duration is not None and at >= self.duration:
            self.problem(node, path, f"{at:g}s is not before the end of the run "
                                     f"(duration {self.duration:g}s)")
            return None
        return at

    def duration_value(self, node: Node, path: str) -> float | None:
        if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT, _STR):
            value = self.scalar(node) if node.tag != _STR else node.value
            try:
                return parse_duration(value)
            except ValueError as exc:
                self.problem(node, path, str(exc))
                return None
        self.problem(node, path, f"expected a duration ({DURATION_FORM}), got {_describe(node)}")
        return None

    def positive_duration(self, node: Node, path: str) -> float | None:
        value = self.duration_value(node, path)
        if value is not None and value <= 0:
            self.problem(node, path, f"must be more than 0, got {node.value}")
            return None
        return value

    def probability(self, node: Node, path: str) -> float | None:
        return self.number(node, path, lambda x: 0 < x <= 1, "with 0 < p <= 1")

    def number(self, node: Node, path: str, ok: Callable[[float], bool], within: str
               ) -> float | None:
        if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT):
            value = float(self.scalar(node))
            if math.isfinite(value) and ok(value):
                return value
        self.problem(node, path, f"expected a number {within}, got {_describe(node)}")
        return None

    def integer(self, node: Node, path: str, low: int, high: int | None) -> int | None:
        if isinstance(node, ScalarNode) and node.tag == _INT:
            value = self.scalar(node)
            if low <= value and (high is None or value <= high):
                return value
        within = f"{low}..{high}" if high is not None else f">= {low}"
        self.problem(node, path, f"expected an integer {within}, got {_describe(node)}")
        return None

    def boolean(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return self.scalar(node)
        self.problem(node, path, f"expected true or false, got {_describe(node)}")
        return None

    def string(self, node: Node, path: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return node.value
        self.problem(node, path, f"expected a string, got {_describe(node)}")
        return None

    def choice(self, node: Node, path: str, choices: Collection[str]) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _STR:
            if node.value in choices:
                return node.value
            self.problem(node, path, f"'{node.value}' is not one of {', '.join(choices)}"
                                     f"{_did_you_mean(node.value, choices)}")
            return None
        self.problem(node, path, f"expected one of {', '.join(choices)}, got {_describe(node)}")
        return None

    def scalar(self, node: ScalarNode) -> Any:
        return self.constructor.construct_object(node)

    # -- structure ---------------------------------------------------------------------

    def variant(self, node: Node, path: str, what: str, tag: str,
                fields_by_variant: Mapping[str, tuple[str, ...]]
                ) -> tuple[Entries | None, str | None]:
        """A mapping whose `tag` field (a fault's kind, ...) says which fields it may have:
        its entries and tag, every field the tag does not use being a problem."""
        entries = self.entries(node, path, _an(what))
        if entries is None:
            return None, None
        variant = self.required(entries, node, path, tag,
                                lambda n, p: self.choice(n, p, tuple(fields_by_variant)))
        self.unknown(entries, path, fields_by_variant.get(variant, ()),
                     known=_all(fields_by_variant),
                     used_by=f"{_an(variant)} {what}" if variant else None)
        return entries, variant

    def entries(self, node: Node, path: str, what: str) -> Entries | None:
        """A mapping's fields by name; duplicate and non-string keys are problems."""
        if not isinstance(node, MappingNode):
            form = "" if "mapping" in what else " (a mapping of field: value)"
            self.problem(node, path, f"expected {what}{form}, got {_describe(node)}")
            return None
        entries: Entries = {}
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and key.tag == _STR):
                reason = ("merge keys (<<) are not supported: repeat the fields"
                          if key.tag == "tag:yaml.org,2002:merge"
                          else f"a field name is a string, got {_describe(key)}")
                self.problem(key, path, reason)
            elif key.value in entries:
                self.problem(key, path, f"duplicate field '{key.value}' (first on line "
                                        f"{_line(entries[key.value][0])})")
            else:
                entries[key.value] = (key, value)
        return entries

    def unknown(self, entries: Entries, path: str, allowed: Collection[str], *,
                known: Collection[str] = (), used_by: str | None = None) -> None:
        """Fields not in `allowed`: "not used by X" when `known` has them, else unknown.
        With no `used_by` (the kind itself is missing or wrong) only unknown names count."""
        for name, (key, _) in entries.items():
            if name in allowed or (used_by is None and name in known):
                continue
            if name in known:
                self.problem(key, path, f"field '{name}' is not used by {used_by}")
                continue
            choices = allowed or known
            self.problem(key, path, f"unknown field '{name}' (fields: {', '.join(choices)})"
                                    f"{_did_you_mean(name, choices)}")

    def required(self, entries: Entries, node: Node, path: str, name: str,
                 parse: Callable[[Node, str], Any]) -> Any:
        if name not in entries:
            self.problem(node, path, f"missing required field '{name}'")
            return None
        return parse(entries[name][1], _join(path, name))

    def getter(self, entries: Entries, path: str) -> Callable[..., Any]:
        """get(name, default, parse): the parsed field, or its default when absent."""
        def get(name: str, default: Any, parse: Callable[[Node, str], Any]) -> Any:
            if name not in entries:
                return default
            return parse(entries[name][1], _join(path, name))
        return get

    def sequence(self, node: Node, path: str, *, minimum: int = 0) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.problem(node, path, f"expected a list, got {_describe(node)}")
            return None
        if len(node.value) < minimum:
            self.problem(node, path, f"needs at least {minimum} "
                                     f"entr{'y' if minimum == 1 else 'ies'}")
            return None
        return list(node.value)
