"""What a scenario is, as the runner consumes it: frozen dataclasses, every field typed.

`distlab.scenarios.spec` makes them from a file; a Python scenario's `run(ctx)` and the
runner read them. The fields every workload (or migration) has are attributes; the
fields of one kind, declared by the lab that registers it (distlab.registry), are kept
in `options` (`params`) and read as attributes too: `workload.accounts`. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from distlab.errors import UsageError
from distlab.scenarios.reader import Problem


class _KindFields:
    """Reads the fields of one kind, kept in a mapping, as attributes."""

    _mapping = "options"

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get(self._mapping, {})
        if name in fields:
            return fields[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class MachineRef:
    """A machine as a scenario names it: `app-2`, `role:app`, `all:app`, or a reference a lab
    registers (`chain:tail`)."""

    text: str  # as written in the file
    kind: str  # name | role | all | the prefix a lab registered (chain)
    value: str  # the machine name, the role, or what the registered reference names

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, init=False)
class Workload(_KindFields):
    """A workload of a registered kind: what every workload has, plus its kind's options
    (`Workload("bank", 4, 0.0, 2.0, 1000, accounts=6).accounts == 6`)."""

    type: str  # a registered workload kind: bank, register ...
    processes: int
    rate: float  # operations per second over all processes; 0 = closed loop
    timeout: float  # seconds
    max_ops: int
    options: dict[str, Any] = field(hash=False)

    def __init__(self, type: str, processes: int, rate: float, timeout: float, max_ops: int,
                 options: dict[str, Any] | None = None, **more: Any) -> None:
        self._set(type=type, processes=processes, rate=rate, timeout=timeout, max_ops=max_ops,
                  options={**(options or {}), **more})


@dataclass(frozen=True)
class Fault:
    """One timeline entry. The fields below are the parameters of the nemesis's own kinds
    (distlab.faults.kinds); those a kind does not use keep their default (None, (), 0.0 or
    False), and an rpc fault always has method, code and probability set. A fault kind a
    lab registers keeps its own fields in `params`."""

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
    params: dict[str, Any] = field(default_factory=dict, hash=False)  # a registered kind's


@dataclass(frozen=True)
class Nemesis:
    kinds: tuple[str, ...]
    targets: tuple[MachineRef, ...]
    start: float
    interval: float  # mean seconds between fault starts
    for_: float  # seconds each fault lasts
    probability: float  # of loss faults


@dataclass(frozen=True, init=False)
class Migration(_KindFields):
    """A migration of a registered action, with that action's fields
    (`Migration(40.0, "scale", service="app", count=3).count == 3`)."""

    _mapping = "params"

    at: float
    action: str  # reconfigure | scale | an action a lab registers
    line: int
    params: dict[str, Any] = field(hash=False)

    def __init__(self, at: float, action: str, *, line: int = 0,
                 params: dict[str, Any] | None = None, **more: Any) -> None:
        self._set(at=at, action=action, line=line, params={**(params or {}), **more})


@dataclass(frozen=True)
class Check:
    name: str  # a registered check: bank, linearizable ...
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
    # Compose variables the lab's services read, set at bring-up (`DISTLAB_SEEDER_UPLOAD_RATE`)
    environment: dict[str, str] = field(hash=False)
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
