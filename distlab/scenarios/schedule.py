"""A scenario's events in time order: its fault timeline, its random nemesis, its migrations.

Pure: `plan(scenario, registry)` turns the file's declarations into `Event`s at seconds
since the workloads started. The random nemesis is drawn here, before the run,
from an RNG seeded by the scenario's seed alone, so the same seed gives the
same schedule whatever the cluster does; which machine a `role:` reference
names is drawn at the event from `pick_rng(seed, index)`, among the machines
that exist then, so it too is the same for the same seed and the same lab.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from distlab.registry import Registry, load_registry
from distlab.scenarios.model import Fault, Migration, Nemesis, Scenario


@dataclass(frozen=True)
class Event:
    at: float
    action: str               # "fault", "heal" (end of the fault `ref`), "migrate"
    index: int                # position in the plan: names the fault ("f3") and seeds its picks
    fault: Fault | None = None
    migration: Migration | None = None
    ref: int | None = None    # for "heal": the index of the fault it ends
    source: str = "timeline"  # timeline | nemesis | migration

    @property
    def label(self) -> str:
        if self.fault is not None:
            return f"{self.fault.kind} {self.fault.target or self.fault.shape}"
        if self.migration is not None:
            return f"{self.migration.action} {self.migration.params.get('service', '')}".strip()
        return f"end of fault #{self.ref}"


def nemesis_faults(nemesis: Nemesis, seed: int, duration: float,
                   registry: Registry | None = None) -> list[Fault]:
    """Random faults, one at a time: each lasts `for_`; the next starts after an exponential
    pause chosen so that starts are `interval` apart on average (at least `for_`). Each
    kind's fields are what its registry entry draws (a partition isolates its target)."""
    kinds = (registry or load_registry()).faults
    rng = random.Random(f"{seed}-nemesis")
    gap_mean = max(nemesis.interval - nemesis.for_, 0.001)
    faults: list[Fault] = []
    t = nemesis.start
    while t < duration:
        kind = kinds[rng.choice(nemesis.kinds)]
        target = rng.choice(nemesis.targets)
        faults.append(Fault(at=t, for_=None if kind.instant else nemesis.for_, kind=kind.name,
                            target=target, **kind.drawn(nemesis)))
        t += (0.0 if kind.instant else nemesis.for_) + rng.expovariate(1.0 / gap_mean)
    return faults


def plan(scenario: Scenario, registry: Registry | None = None) -> list[Event]:
    """Every event of the run, by time; a fault's heal comes before what starts at that time."""
    duration = scenario.duration
    faults = [(f, "timeline") for f in scenario.faults if f.at < duration]
    if scenario.nemesis is not None:
        faults += [(f, "nemesis") for f in nemesis_faults(scenario.nemesis, scenario.seed,
                                                          duration, registry)]
    faults.sort(key=lambda pair: pair[0].at)
    events: list[Event] = []
    for index, (fault, source) in enumerate(faults, start=1):
        events.append(Event(fault.at, "fault", index, fault=fault, source=source))
        if fault.for_ is not None and fault.at + fault.for_ < duration:
            events.append(Event(fault.at + fault.for_, "heal", index, ref=index, source=source))
    first_migration = len(faults) + 1
    for offset, migration in enumerate(m for m in scenario.migrations if m.at < duration):
        events.append(Event(migration.at, "migrate", first_migration + offset,
                            migration=migration, source="migration"))
    order = {"heal": 0, "migrate": 1, "fault": 2}
    return sorted(events, key=lambda e: (e.at, order[e.action], e.index))


def pick_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}-pick-{index}")

