"""The migration lab's registration: the `migrate` action as a scenario says it (and its
mistakes, with their lines), and the `migration` check's verdicts."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from distlab.labs import load_catalogue
from distlab.migration.cli import rounds_table, summary
from distlab.migration.lab import check_migrations
from distlab.registry import MigrationRun
from distlab.scenarios.model import MachineRef, ScenarioError
from distlab.scenarios.spec import parse_scenario
from nodes.rpc import vm_pb2

COMPOSE = Path(__file__).resolve().parents[3] / "compose.yaml"
HEAD = """\
lab: migration
duration: 30s
workloads: [{type: register}]
"""


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(COMPOSE)


def parse(catalogue, text: str):
    return parse_scenario(dedent(text), catalogue, source="s.yaml")


def problems(catalogue, text: str) -> list[str]:
    with pytest.raises(ScenarioError) as raised:
        parse(catalogue, text)
    return raised.value.lines()


def test_a_migrate_action_reads_its_fields_and_defaults(catalogue):
    scenario = parse(catalogue, HEAD + """\
migrations:
  - {at: 5s, action: migrate, target: vm-1, to: host-2}
  - {at: 15s, action: migrate, target: vm-1, to: host-3, strategy: post-copy, max_rounds: 4,
     rate: 8, max_rate: 16}
checks: [linearizable, {migration: {downtime_ms: {at_most: 200}, failures: {at_most: 1}}}]
""")
    first, second = scenario.migrations
    assert (first.at, first.target, first.to, first.strategy, first.max_rounds, first.rate) == (
        5.0, "vm-1", MachineRef("host-2", "name", "host-2"), "pre-copy", 0, 0.0)
    assert (second.strategy, second.max_rounds, second.rate, second.max_rate) == (
        "post-copy", 4, 8.0, 16.0)
    migration = next(check for check in scenario.checks if check.name == "migration")
    assert migration.options == {"downtime_ms": 200.0, "total_s": None, "failures": 1.0}


def test_a_migrate_action_with_mistakes_says_each_with_its_line(catalogue):
    assert problems(catalogue, HEAD + """\
migrations:
  - {at: 5s, action: migrate, target: VM 1, to: host-9, strategy: teleport, max_rounds: 0}
  - {at: 6s, action: migrate, to: host-2}
checks: [{migration: {downtime_ms: 200}}]
""") == [
        "s.yaml:5: migrations[0].target: 'VM 1' is not a vm name (vm-1)",
        "s.yaml:5: migrations[0].strategy: 'teleport' is not one of pre-copy, stop-and-copy, "
        "post-copy",
        "s.yaml:5: migrations[0].max_rounds: expected an integer 1..1000, got 0 (an integer)",
        "s.yaml:5: migrations[0].to: no machine 'host-9': at this scale host has 3 machines "
        "(host-1..host-3); scale: {host: N} adds more",
        "s.yaml:6: migrations[1]: missing required field 'target'",
        "s.yaml:7: checks[0].migration.downtime_ms: expected a limit, {at_most: N} (a mapping "
        "of field: value), got 200 (an integer)",
    ]


def run(label="migrate vm-1 to host-2 by pre-copy", error="", downtime=3.0, total=2.0):
    figures = {} if error else {"downtime_ms": downtime, "total_s": total, "sent_ratio": 1.2,
                                "rounds": 5}
    return MigrationRun(label, 4.0, 4.0 + total, error=error, figures=figures)


def test_the_migration_check_holds_each_migration_to_its_limits():
    verdict = check_migrations([run(), run(downtime=250.0)], {"downtime_ms": 200.0})
    assert verdict.valid is False
    assert verdict.problems == ["migrate vm-1 to host-2 by pre-copy at 4.0 s: downtime_ms "
                                "250.0 over 200"]
    assert verdict.figures["max_downtime_ms"] == 250.0 and verdict.figures["migrations"] == 2
    assert check_migrations([run()], {"downtime_ms": 200.0, "total_s": 5.0}).valid is True


def test_a_failed_migration_is_invalid_unless_failures_are_allowed():
    runs = [run(), run(error="UNAVAILABLE: the destination went away")]
    assert check_migrations(runs, {}).valid is False
    assert "the destination went away" in check_migrations(runs, {}).problems[0]
    assert check_migrations(runs, {"failures": 1.0}).valid is True


def test_no_migration_is_unknown():
    verdict = check_migrations([], {})
    assert verdict.valid is None and verdict.problems == ["no migration ran"]


def test_a_destination_that_is_no_running_host_is_refused_before_anything_is_asked(
        make_runtime, make_info):
    from distlab.errors import UnknownMachine, UsageError
    from distlab.machine import Machine
    from distlab.migration.client import Hypervisors, MigrationError

    runtime = make_runtime([
        make_info("host-1", lab="migration", grpc_endpoint="127.0.0.1:1"),
        make_info("host-2", lab="migration", state="exited"),
        make_info("vm-switch-1", lab="migration", grpc_endpoint="127.0.0.1:2")])
    hypervisors = Hypervisors([Machine(runtime, info) for info in runtime.machines()])
    assert sorted(hypervisors.hosts) == ["host-1"]
    for to, error, words in [("host-9", UnknownMachine, "no host named 'host-9'"),
                             ("vm-switch-1", UsageError, "vm-switch machine, not a host"),
                             ("host-2", MigrationError, "host host-2 is not running (exited)")]:
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
            hypervisors.migrate("vm-1", to)
    with pytest.raises(UsageError, match="strategy 'warp'"):
        hypervisors.migrate("vm-1", "host-1", strategy="warp")


def test_a_kv_guests_summary_counts_bytes_and_its_rounds_count_slots():
    result = vm_pb2.MigrationResult(
        strategy="pre-copy", guest="kv", downtime_seconds=0.002, total_seconds=0.1,
        bytes_sent=3000, image_bytes=2048, stop_reason="few-pages",
        rounds=[vm_pb2.RoundReport(number=1, live=True, bytes_sent=3000, pages_dirtied=4)])
    assert summary("kv-1", "host-3", result) == (
        "kv-1 moved to host-3 by pre-copy: downtime 2.0 ms, total 0.10 s, sent 1.46x the "
        "2.0 KiB store in 1 rounds, stopped by few-pages")
    table = rounds_table(result)
    assert [column.header for column in table.columns][4] == "dirtied slots"
