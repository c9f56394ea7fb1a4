"""The plan of a scenario's events: the timeline in order, a seeded random nemesis."""

from __future__ import annotations

from pathlib import Path

import pytest

from distlab.labs import load_catalogue
from distlab.scenarios.schedule import nemesis_faults, pick_rng, plan
from distlab.scenarios.spec import load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[4]
CATALOGUE = load_catalogue(REPO / "compose.yaml")

NEMESIS = """
lab: tiers
seed: {seed}
duration: 5m
workloads: [{{type: bank}}]
nemesis:
  kinds: [kill, pause, partition, restart]
  targets: [role:app, role:data, switch-1]
  start: 5s
  interval: 20s
  for: 6s
"""


def nemesis_plan(seed: int):
    return plan(parse_scenario(NEMESIS.format(seed=seed), CATALOGUE))


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    assert nemesis_plan(7) == nemesis_plan(7)
    assert nemesis_plan(7) != nemesis_plan(8)
    assert [e.index for e in nemesis_plan(7)] == [e.index for e in nemesis_plan(7)]


def test_random_faults_come_one_at_a_time_within_the_run_and_average_the_interval():
    scenario = parse_scenario(NEMESIS.format(seed=3), CATALOGUE)
    faults = nemesis_faults(scenario.nemesis, seed=3, duration=3600)
    assert faults[0].at == 5.0
    for before, after in zip(faults, faults[1:], strict=False):
        assert after.at >= before.at + (before.for_ or 0), "two random faults overlap"
    mean_gap = (faults[-1].at - faults[0].at) / (len(faults) - 1)
    assert 15 < mean_gap < 25  # interval 20 s on average (restarts are instant)
    assert {f.kind for f in faults} == {"kill", "pause", "partition", "restart"}
    assert all(f.shape == "isolate" for f in faults if f.kind == "partition")
    assert all(f.for_ is None for f in faults if f.kind == "restart")


def test_the_plan_orders_faults_heals_and_migrations_in_time():
    scenario = parse_scenario("""
lab: tiers
duration: 30s
workloads: [{type: bank}]
faults:
  - {at: 10s, for: 5s, kind: pause, target: app-1}
  - {at: 2s, for: 8s, kind: kill, target: app-2}
  - {at: 20s, kind: kill, target: app-3}
  - {at: 25s, for: 10s, kind: pause, target: app-1}
migrations:
  - {at: 10s, action: reconfigure, target: switch-1, settings: {policy: round_robin}}
""", CATALOGUE)
    events = [(e.at, e.action, e.label) for e in plan(scenario)]
    assert events == [
        (2.0, "fault", "kill app-2"),
        (10.0, "heal", "end of fault #1"),       # the kill's heal first ...
        (10.0, "migrate", "reconfigure"),        # ... then what starts at 10 s
        (10.0, "fault", "pause app-1"),
        (15.0, "heal", "end of fault #2"),
        (20.0, "fault", "kill app-3"),            # no `for`: lasts until the end
        (25.0, "fault", "pause app-1"),           # its heal would be after the end
    ]


def test_a_shortened_scenario_drops_what_comes_after_its_end():
    scenario = parse_scenario("""
lab: tiers
duration: 60s
short_duration: 12s
workloads: [{type: bank}]
faults:
  - {at: 5s, for: 10s, kind: kill, target: app-1}
  - {at: 30s, for: 5s, kind: kill, target: app-2}
""", CATALOGUE).shortened()
    assert [(e.at, e.action) for e in plan(scenario)] == [(5.0, "fault")]


def test_picks_are_seeded_per_fault():
    choices = ["app-1", "app-2", "app-3"]
    first = [pick_rng(1, index).choice(choices) for index in range(20)]
    assert first == [pick_rng(1, index).choice(choices) for index in range(20)]
    assert len(set(first)) > 1


@pytest.mark.parametrize("path", sorted((REPO / "scenarios").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_library_scenario_is_valid_and_plans_at_full_and_short_length(path):
    scenario = load_scenario(path, CATALOGUE)
    assert scenario.description, "a library scenario says what to expect"
    assert plan(scenario), "a library scenario does something"
    assert plan(scenario.shortened()), "and still does under --short"
