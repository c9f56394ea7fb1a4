"""Unit tests for distlab/scenarios/spec.py: scenario YAML into dataclasses, or every problem
with its line. The catalogue is the repo's real compose.yaml (tiers: switch-1, app-1..app-3,
data-1..data-3, data-master-1; kv: kv-1..kv-3; chord: chord-1..chord-8)."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from types import SimpleNamespace

import pytest

from distlab.errors import DistlabError, UsageError
from distlab.labs import load_catalogue, machine_names
from distlab.registry import load_registry
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
from distlab.scenarios.reader import parse_duration
from distlab.scenarios.runner import load
from distlab.scenarios.spec import load_scenario, parse_scenario

COMPOSE = Path(__file__).resolve().parents[4] / "compose.yaml"

# Three lines every mistake below is appended to: a valid tiers scenario with a bank workload.
HEAD = "lab: tiers\nduration: 60s\nworkloads: [{type: bank}]\n"


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(COMPOSE)


def problems(catalogue, text: str) -> list[str]:
    """The lines of the ScenarioError `text` raises, as `s.yaml:LINE: PATH: REASON`."""
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(dedent(text), catalogue, source="s.yaml")
    return raised.value.lines()


def ref(text: str) -> MachineRef:
    kind, _, value = text.rpartition(":")
    return MachineRef(text, kind or "name", value)  # type: ignore[arg-type]


FULL = """\
name: head-failover
description: kill the chain head under load; transfers stall, then resume
lab: tiers
scale: {app: 2}
seed: 7
duration: 1m
short_duration: 10s
workloads:
  - type: bank
    processes: 8
    rate: 50
    accounts: 4
  - {type: register, keys: 2, read_share: 0.9, timeout: 500ms, max_ops: 1000}
faults:
  - {at: 5s, for: 10s, kind: kill, target: chain:head}
  - {at: 10, kind: partition, shape: isolate, target: role:app, machines: [all:app, data-1]}
  - {at: 11, kind: partition, shape: groups, groups: [[app-1, app-2], [data-1]]}
  - {at: 12s, kind: rpc, target: app-2, action: delay, delay: 200ms, jitter: 50ms}
  - {at: 13s, kind: rpc, target: app-1, action: error, code: ABORTED, method: /bank.Bank/*}
  - {at: 14s, kind: loss, target: data-2, probability: 0.2}
  - {at: 15s, kind: bandwidth, target: data-3, rate: 1mbit, for: 5s}
  - {at: 16s, kind: delay, target: data-3, delay: 100ms}
  - {at: 17s, kind: restart, target: switch-1}
nemesis: {kinds: [kill, loss], targets: [role:data, chain:tail], interval: 10s, for: 3s}
migrations:
  - {at: 40s, action: scale, service: app, count: 3}
  - {at: 41s, action: reconfigure, target: all:app, settings: {batch: 0.5, sync: true}}
checks: [bank, {linearizable: {time_limit: 5s}}]
expect:
  - availability: {at_least: 0.9, window: faults, ops: [transfer], grace: 2s}
  - latency: {at_most: 500ms}
"""


def test_a_full_scenario_parses_into_the_dataclasses_with_defaults_filled(catalogue):
    scenario = parse_scenario(FULL, catalogue, source="scenarios/head-failover.yaml")
    assert scenario == Scenario(
        name="head-failover",
        description="kill the chain head under load; transfers stall, then resume",
        lab="tiers", scale={"app": 2}, environment={}, seed=7, duration=60.0,
        short_duration=10.0,
        workloads=(
            Workload("bank", processes=8, rate=50.0, timeout=2.0, max_ops=100_000, accounts=4),
            Workload("register", processes=4, rate=0.0, timeout=0.5, max_ops=1000, keys=2,
                     read_share=0.9)),
        faults=(
            Fault(5.0, 10.0, "kill", target=ref("chain:head"), line=15),
            Fault(10.0, None, "partition", target=ref("role:app"), shape="isolate",
                  machines=(ref("all:app"), ref("data-1")), line=16),
            Fault(11.0, None, "partition", shape="groups",
                  groups=((ref("app-1"), ref("app-2")), (ref("data-1"),)), line=17),
            Fault(12.0, None, "rpc", target=ref("app-2"), action="delay", delay=0.2,
                  jitter=0.05, method="*", code="UNAVAILABLE", probability=1.0, line=18),
            Fault(13.0, None, "rpc", target=ref("app-1"), action="error", code="ABORTED",
                  method="/bank.Bank/*", probability=1.0, line=19),
            Fault(14.0, None, "loss", target=ref("data-2"), probability=0.2, line=20),
            Fault(15.0, 5.0, "bandwidth", target=ref("data-3"), rate="1mbit", line=21),
            Fault(16.0, None, "delay", target=ref("data-3"), delay=0.1, jitter=0.0, line=22),
            Fault(17.0, None, "restart", target=ref("switch-1"), line=23)),
        nemesis=Nemesis(kinds=("kill", "loss"), targets=(ref("role:data"), ref("chain:tail")),
                        start=5.0, interval=10.0, for_=3.0, probability=0.3),
        migrations=(
            Migration(40.0, "scale", service="app", count=3, line=26),
            # Settings keep the text as written, for the node's Reconfigure.
            Migration(41.0, "reconfigure", targets=(ref("all:app"),),
                      settings={"batch": "0.5", "sync": "true"}, line=27)),
        checks=(Check("bank", {}),
                Check("linearizable", {"time_limit": 5.0, "max_ops_per_key": 2000})),
        expectations=(
            Expectation("availability", "faults", at_least=0.9, ops=("transfer",), grace=2.0,
                        line=30),
            Expectation("latency", "calm", at_most=0.5, percentile=99.0, line=31)),
        source="scenarios/head-failover.yaml")
    assert str(scenario.faults[0].target) == "chain:head"


def test_the_smallest_scenario_takes_every_default(catalogue):
    scenario = parse_scenario(HEAD, catalogue, default_name="calm")
    assert (scenario.name, scenario.description, scenario.scale, scenario.seed) == \
        ("calm", "", {}, 0)
    assert scenario.short_duration == scenario.duration == 60.0
    assert scenario.workloads == (Workload("bank", 4, 0.0, 2.0, 100_000, accounts=6),)
    assert (scenario.faults, scenario.nemesis, scenario.migrations, scenario.checks,
            scenario.expectations) == ((), None, (), (), ())


def test_with_seed_and_shortened_are_copies(catalogue):
    scenario = parse_scenario(FULL, catalogue)
    assert scenario.with_seed(42).seed == 42 and scenario.seed == 7
    short = scenario.shortened()
    assert (short.duration, short.short_duration, scenario.duration) == (10.0, 10.0, 60.0)
    assert short.faults == scenario.faults  # dropping late events is the runner's job
    with pytest.raises(ValueError):
        scenario.with_seed(-1)


def test_load_scenario_names_it_after_the_file_and_reports_the_path(catalogue, tmp_path):
    path = tmp_path / "calm-kv.yaml"
    path.write_text("lab: kv\nduration: 5\nworkloads: [{type: register}]\n")
    scenario = load_scenario(path, catalogue)
    assert (scenario.name, scenario.lab, scenario.source) == ("calm-kv", "kv", str(path))
    path.write_text("lab: kv\nduration: 5\nworkloads: [{type: registr}]\n")
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path, catalogue)
    assert str(raised.value).startswith(f"{path}:3: workloads[0].type: 'registr' is not one of")


def test_a_missing_file_is_a_scenario_error_without_a_line(catalogue, tmp_path):
    with pytest.raises(ScenarioError) as raised:
        load_scenario(tmp_path / "nosuch.yaml", catalogue)
    assert str(raised.value) == f"{tmp_path / 'nosuch.yaml'}: cannot read it: No such file " \
                                "or directory"


# -- one test per kind of mistake -------------------------------------------------------------


def test_a_misspelt_field_is_reported_with_a_suggestion(catalogue):
    assert problems(catalogue, HEAD + "faults:\n  - {at: 5s, kind: kill, targt: app-1}\n") == [
        "s.yaml:5: faults[0]: unknown field 'targt' (fields: at, for, kind, target); "
        "did you mean 'target'?",
        "s.yaml:5: faults[0]: missing required field 'target'"]


def test_a_misspelt_top_level_field_suggests_the_right_one(catalogue):
    assert problems(catalogue, HEAD + "expectations: []\n") == [
        "s.yaml:4: unknown field 'expectations' (fields: name, description, lab, scale, "
        "environment, seed, duration, short_duration, workloads, faults, nemesis, migrations, "
        "checks, expect); "
        "did you mean 'expect'?"]


def test_a_misspelt_enum_value_suggests_the_right_one(catalogue):
    assert problems(catalogue, HEAD + "faults:\n  - {at: 5s, kind: kil, target: app-1}\n") == [
        "s.yaml:5: faults[0].kind: 'kil' is not one of kill, stop, pause, restart, partition, "
        "loss, bandwidth, delay, rpc, host-stop, host-partition, host-slow; did you mean "
        "'kill'?"]


def test_a_value_of_the_wrong_type_says_what_was_expected_and_what_was_found(catalogue):
    text = ("lab: tiers\nduration: 60s\nworkloads:\n  - type: bank\n    processes: many\n"
            "    accounts: [1]\nseed: -1\n")
    assert problems(catalogue, text) == [
        "s.yaml:5: workloads[0].processes: expected an integer 1..64, got 'many' (a string)",
        "s.yaml:6: workloads[0].accounts: expected an integer 2..1000, got a list",
        "s.yaml:7: seed: expected an integer >= 0, got -1 (an integer)"]


def test_a_machine_beyond_the_scale_names_the_machines_there_are(catalogue):
    text = "lab: tiers\nscale: {app: 3}\n" + HEAD[len("lab: tiers\n"):] + \
        "faults:\n  - {at: 1, kind: kill, target: app-9}\n"
    assert problems(catalogue, text) == [
        "s.yaml:6: faults[0].target: no machine 'app-9': at this scale app has 3 machines "
        "(app-1..app-3)"]


def test_a_machine_of_a_default_count_says_how_to_add_more(catalogue):
    lines = problems(catalogue, HEAD + "faults:\n  - {at: 1, kind: stop, target: switch-2}\n")
    assert lines == ["s.yaml:5: faults[0].target: no machine 'switch-2': at this scale switch "
                     "has 1 machine (switch-1); scale: {switch: N} adds more"]


def test_a_machine_of_another_lab_lists_this_labs_machines(catalogue):
    assert problems(catalogue, HEAD + "faults:\n  - {at: 1, kind: kill, target: kv-1}\n") == [
        "s.yaml:5: faults[0].target: no machine 'kv-1' in lab 'tiers' (its machines: switch-1, "
        "app-1..app-3, data-1..data-3, data-master-1)"]


def test_a_machine_a_scale_migration_adds_may_be_a_target(catalogue):
    text = HEAD + ("migrations: [{at: 5s, action: scale, service: app, count: 5}]\n"
                   "faults: [{at: 10s, kind: kill, target: app-5}]\n")
    assert parse_scenario(text, catalogue).faults[0].target == ref("app-5")


def test_an_unknown_lab_lists_the_labs_and_suggests_one(catalogue):
    assert problems(catalogue, "lab: tier\nduration: 5\nworkloads: [{type: bank}]\n") == [
        "s.yaml:1: lab: unknown lab 'tier', not one of bittorrent, chord, kv, mapreduce, "
        "migration, serverless, tiers; "
        "did you mean 'tiers'?"]


def test_a_duration_with_a_spelled_out_unit_shows_the_form(catalogue):
    assert problems(catalogue, "lab: kv\nduration: 5 sec\nworkloads: [{type: register}]\n") == [
        "s.yaml:2: duration: '5 sec' is not a duration: write a number of seconds or "
        "<number><unit> with unit ms, s or m (500ms, 5s, 1.5m)"]


def test_an_event_at_or_after_the_end_is_reported(catalogue):
    text = HEAD + ("faults:\n  - {at: 1m, kind: kill, target: app-1}\n"
                   "migrations:\n  - {at: 90s, action: scale, service: app, count: 2}\n")
    assert problems(catalogue, text) == [
        "s.yaml:5: faults[0].at: 60s is not before the end of the run (duration 60s)",
        "s.yaml:7: migrations[0].at: 90s is not before the end of the run (duration 60s)"]


def test_a_check_without_its_workload_names_the_workload_it_needs(catalogue):
    assert problems(catalogue, HEAD + "checks: [linearizable]\n") == [
        "s.yaml:4: checks[0]: the linearizable check needs a register workload; this scenario "
        "has bank"]


def test_an_unknown_check_lists_the_checks(catalogue):
    assert problems(catalogue, HEAD + "checks: [linearisable, {bank: {strict: true}}]\n") == [
        "s.yaml:4: checks[0]: unknown check 'linearisable', not one of pieces, output, "
        "migration, invocations, bank, linearizable; "
        "did you mean 'linearizable'?",
        "s.yaml:4: checks[1].bank: unknown option 'strict': the bank check has none"]


def test_an_unknown_expectation_lists_the_expectations(catalogue):
    assert problems(catalogue, HEAD + "expect:\n  - throughput: {at_least: 10}\n") == [
        "s.yaml:5: expect[0]: unknown expectation 'throughput', not one of availability, "
        "latency"]


def test_a_field_the_kind_does_not_use_is_an_error(catalogue):
    text = HEAD + ("faults:\n"
                   "  - {at: 1, kind: kill, target: app-1, rate: 1mbit}\n"
                   "  - {at: 2, kind: rpc, target: app-1, action: drop, code: ABORTED}\n"
                   "  - {at: 3, kind: partition, shape: halves, target: app-1}\n"
                   "workloads: [{type: bank, keys: 3}]\n")
    lines = problems(catalogue, text.replace("workloads: [{type: bank}]\n", "", 1))
    assert lines == [
        "s.yaml:4: faults[0]: field 'rate' is not used by a kill fault",
        "s.yaml:5: faults[1]: field 'code' is not used by an rpc fault with action 'drop'",
        "s.yaml:6: faults[2]: field 'target' is not used by a partition of shape 'halves'",
        "s.yaml:7: workloads[0]: field 'keys' is not used by a bank workload"]


def test_restart_takes_no_for(catalogue):
    assert problems(catalogue, HEAD + "faults: [{at: 1, for: 5s, kind: restart, "
                                      "target: app-1}]\n") == [
        "s.yaml:4: faults[0]: a restart fault has no 'for': it is over when the machine is back"]


def test_a_required_field_of_the_kind_is_named(catalogue):
    text = HEAD + ("faults:\n  - {at: 1, kind: loss, target: app-1}\n"
                   "  - {at: 1, kind: partition, shape: groups}\n"
                   "  - {at: 1, kind: rpc, target: app-1, action: delay}\n")
    assert problems(catalogue, text) == [
        "s.yaml:5: faults[0]: missing required field 'probability'",
        "s.yaml:6: faults[1]: missing required field 'groups'",
        "s.yaml:7: faults[2]: missing required field 'delay'"]


def test_a_duplicate_key_is_reported_at_the_second_one(catalogue):
    text = HEAD + "faults:\n  - at: 1\n    kind: kill\n    target: app-1\n    at: 2\n"
    assert problems(catalogue, text) == [
        "s.yaml:8: faults[0]: duplicate field 'at' (first on line 5)"]


def test_a_yaml_syntax_error_has_its_line(catalogue):
    text = HEAD + "faults:\n  - {at: 1, kind: kill\n  - {at: 2}\n"
    (line,) = problems(catalogue, text)
    assert line.startswith("s.yaml:6: invalid YAML: ")


def test_a_tab_indent_is_a_yaml_syntax_error_with_its_line(catalogue):
    (line,) = problems(catalogue, "lab: kv\nduration: 5\n\tworkloads: []\n")
    assert line.startswith("s.yaml:3: invalid YAML: ")
    assert "'\\t'" in line


def test_an_empty_file_says_what_a_scenario_needs(catalogue):
    assert problems(catalogue, "# nothing yet\n") == [
        "s.yaml:1: the file is empty: a scenario needs at least lab, duration and workloads"]


def test_every_problem_of_the_file_is_reported_together_in_line_order(catalogue):
    text = """\
        lab: tiers
        duration: 30s
        workloads:
          - type: bank
            procesess: 4
        faults:
          - {at: 40s, kind: kill, target: app-9}
          - {at: 5s, kind: partition, shape: triangle}
        nemesis: {kinds: [kill], targets: [all:app], interval: 5s}
        checks: [linearizable]
        """
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(dedent(text), catalogue, source="s.yaml")
    error = raised.value
    assert [(p.line, p.path) for p in error.problems] == [
        (5, "workloads[0]"), (7, "faults[0].at"), (7, "faults[0].target"),
        (8, "faults[1].shape"), (9, "nemesis.targets[0]"), (9, "nemesis"), (10, "checks[0]")]
    assert str(error).splitlines()[0] == "s.yaml: 7 problems"
    assert error.hint == "the scenario format is in docs/scenario-format.md"
    assert isinstance(error, UsageError) and isinstance(error, DistlabError)


# -- machine refs -----------------------------------------------------------------------------


def test_chain_refs_need_a_lab_with_a_data_service(catalogue):
    text = "lab: kv\nduration: 10\nworkloads: [{type: register}]\n" \
        "faults: [{at: 1, kind: kill, target: chain:head}]\n"
    assert problems(catalogue, text) == [
        "s.yaml:4: faults[0].target: 'chain:head' needs a lab with a chain-replicated data "
        "service; lab 'kv' has none"]


def test_roles_must_be_roles_of_the_lab(catalogue):
    assert problems(catalogue, HEAD + "faults: [{at: 1, kind: kill, target: role:ap}]\n") == [
        "s.yaml:4: faults[0].target: lab 'tiers' has no role 'ap' (its roles: switch, app, "
        "data, data-master); did you mean 'app'?"]


def test_all_is_refused_as_a_single_target_and_taken_where_a_list_is_meant(catalogue):
    assert problems(catalogue, HEAD + "faults: [{at: 1, kind: pause, target: all:app}]\n") == [
        "s.yaml:4: faults[0].target: 'all:app' names several machines where one is meant; use "
        "role:app for one of them"]
    text = HEAD + "migrations: [{at: 1, action: reconfigure, target: [all:data, app-1], " \
        "settings: {k: v}}]\n"
    assert parse_scenario(text, catalogue).migrations[0].targets == (ref("all:data"),
                                                                     ref("app-1"))


def test_a_bare_service_name_is_not_a_ref_and_suggests_the_forms(catalogue):
    assert problems(catalogue, HEAD + "faults: [{at: 1, kind: kill, target: app}]\n") == [
        "s.yaml:4: faults[0].target: 'app' is not a machine ref (write <service>-<n> (app-1), "
        "role:<role>, instance:busy, chain:head|middle|tail); did you mean 'app-1' or 'role:app'?"]


def test_machine_names_follow_the_scale_then_compose_replicas_then_one(catalogue):
    assert machine_names(catalogue, "tiers", {"app": 2, "data": 0}) == [
        "switch-1", "app-1", "app-2", "data-master-1"]
    assert machine_names(catalogue, catalogue.lab("kv")) == ["kv-1", "kv-2", "kv-3"]
    assert len(machine_names(catalogue, "chord", {})) == 8


# -- the rest of the format -------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    (5, 5.0), (0, 0.0), (1.5, 1.5), ("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), ("1.5s", 1.5),
    (" 10s ", 10.0)])
def test_parse_duration_reads_numbers_and_units(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5 sec", "5", "5h", "-1s", "s", -1, True, None, [5],
                                   float("nan")])
def test_parse_duration_refuses_anything_else_with_a_message(value):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_the_short_duration_may_not_exceed_the_duration(catalogue):
    assert problems(catalogue, HEAD + "short_duration: 2m\n") == [
        "s.yaml:4: short_duration: 120s is longer than duration (60s)"]


def test_scale_services_must_be_in_the_lab_and_counts_in_range(catalogue):
    assert problems(catalogue, HEAD + "scale: {ap: 2, data: 257}\n") == [
        "s.yaml:4: scale.ap: lab 'tiers' has no service 'ap' (its services: switch, app, data, "
        "data-spare, data-master); did you mean 'app'?",
        "s.yaml:4: scale.data: expected an integer 0..256, got 257 (an integer)"]


def test_a_scenario_name_must_be_usable_as_a_directory(catalogue):
    assert problems(catalogue, HEAD + "name: My Scenario\n") == [
        "s.yaml:4: name: 'My Scenario' is not a scenario name: lowercase letters, digits and "
        "'-', starting with a letter or digit"]


def test_rpc_values_are_checked_like_the_node_checks_them(catalogue):
    text = HEAD + ("faults:\n"
                   "  - {at: 1, kind: rpc, target: app-1, action: error, code: UNAVALABLE}\n"
                   "  - {at: 1, kind: rpc, target: app-1, action: drop, method: Transfer}\n"
                   "  - {at: 1, kind: rpc, target: app-1, action: delay, delay: 10m}\n"
                   "  - {at: 1, kind: rpc, target: app-1, action: drop, probability: 0}\n")
    lines = problems(catalogue, text)
    assert lines[0].startswith("s.yaml:5: faults[0].code: 'UNAVALABLE' is not one of CANCELLED,")
    assert lines[0].endswith("did you mean 'UNAVAILABLE'?")
    assert lines[1:] == [
        "s.yaml:6: faults[1].method: 'Transfer' is not a method: write '*', '/pkg.Service/*' or "
        "'/pkg.Service/Method'",
        "s.yaml:7: faults[2].delay: delay + jitter must be at most 300s",
        "s.yaml:8: faults[3].probability: expected a number with 0 < p <= 1, got 0 (an integer)"]


def test_a_bandwidth_rate_must_be_one_tc_reads(catalogue):
    assert problems(catalogue, HEAD + "faults: [{at: 1, kind: bandwidth, target: app-1, "
                                      "rate: 1 MB/s}]\n") == [
        "s.yaml:4: faults[0].rate: '1 MB/s' is not a rate: a number and one of bit kbit mbit "
        "gbit bps kbps mbps gbps, e.g. 1mbit, 500kbit"]


def test_partition_groups_must_be_disjoint(catalogue):
    text = HEAD + "faults: [{at: 1, kind: partition, shape: groups, " \
        "groups: [[app-1, app-2], [app-2]]}]\n"
    assert problems(catalogue, text) == [
        "s.yaml:4: faults[0].groups[1]: machine 'app-2' is also in group 0; groups must be "
        "disjoint"]


def test_a_partition_without_machines_means_every_running_machine(catalogue):
    text = HEAD + "faults: [{at: 1, for: 5s, kind: partition, shape: majorities-ring}]\n"
    (fault,) = parse_scenario(text, catalogue).faults
    assert (fault.shape, fault.target, fault.machines, fault.groups, fault.for_) == \
        ("majorities-ring", None, (), (), 5.0)


def test_expectation_ops_must_be_ops_of_the_workloads(catalogue):
    assert problems(catalogue, HEAD + "expect: [{availability: {at_least: 0.9, "
                                      "ops: [write]}}]\n") == [
        "s.yaml:4: expect[0].availability.ops[0]: no workload of this scenario records 'write' "
        "operations (ops: transfer, balance, audit)"]


def test_nemesis_fields_are_required_and_checked(catalogue):
    text = HEAD + "nemesis:\n  kinds: [kill, bandwidth]\n  targets: [app-1]\n  start: 2m\n"
    assert problems(catalogue, text) == [
        "s.yaml:4: nemesis: missing required field 'interval'",
        "s.yaml:4: nemesis: missing required field 'for'",
        "s.yaml:5: nemesis.kinds[1]: 'bandwidth' is not one of kill, stop, pause, restart, "
        "partition, loss",
        "s.yaml:7: nemesis.start: 120s is not before the end of the run (duration 60s)"]


def test_settings_are_single_values(catalogue):
    text = HEAD + "migrations: [{at: 1, action: reconfigure, target: app-1, " \
        "settings: {peers: [a, b]}}]\n"
    assert problems(catalogue, text) == [
        "s.yaml:4: migrations[0].settings.peers: a setting is a single value, got a list"]


def test_merge_keys_are_refused_with_a_way_out(catalogue):
    text = HEAD + "faults:\n  - &kill {at: 1, kind: kill, target: app-1}\n  - {<<: *kill, at: 2}\n"
    assert problems(catalogue, text)[0] == \
        "s.yaml:6: faults[1]: merge keys (<<) are not supported: repeat the fields"


def test_environment_sets_the_variables_the_labs_services_read(catalogue):
    scenario = parse_scenario(dedent("""\
        lab: bittorrent
        duration: 30s
        environment: {DISTLAB_SEEDER_UPLOAD_RATE: 131072, DISTLAB_LEECHER_UPLOAD_RATE: "65536"}
        workloads: [{type: download}]
        """), catalogue)
    assert scenario.environment == {"DISTLAB_SEEDER_UPLOAD_RATE": "131072",
                                    "DISTLAB_LEECHER_UPLOAD_RATE": "65536"}


def test_environment_refuses_what_the_lab_does_not_read_and_values_that_are_not_one(catalogue):
    read = ", ".join(catalogue.lab("bittorrent").variables)
    assert problems(catalogue, """\
        lab: bittorrent
        duration: 30s
        environment:
          DISTLAB_SEEDER_UPLOAD_RAT: 1
          PATH: /tmp
          DISTLAB_LEECHER_UPLOAD_RATE: [1, 2]
          DISTLAB_SEEDER_UPLOAD_RATE:
        workloads: [{type: download}]
        """) == [
        "s.yaml:4: environment.DISTLAB_SEEDER_UPLOAD_RAT: the bittorrent lab's services read "
        f"no variable 'DISTLAB_SEEDER_UPLOAD_RAT' (they read: {read}); did you mean "
        "'DISTLAB_SEEDER_UPLOAD_RATE'?",
        f"s.yaml:5: environment.PATH: the bittorrent lab's services read no variable 'PATH' "
        f"(they read: {read})",
        "s.yaml:6: environment.DISTLAB_LEECHER_UPLOAD_RATE: a variable's value is a single "
        "value, got a list",
        "s.yaml:7: environment.DISTLAB_SEEDER_UPLOAD_RATE: a variable's value is a single "
        "value, got nothing (null)"]


# -- the files that ship ----------------------------------------------------------------------

ROOT = COMPOSE.parent


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")), ids=str)
def test_every_shipped_scenario_parses(catalogue, path):
    scenario = load_scenario(path, catalogue)
    assert scenario.name == path.stem


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.py")), ids=str)
def test_every_shipped_python_scenario_loads_with_its_script(catalogue, path):
    scenario, script = load(path, SimpleNamespace(catalogue=catalogue, registry=load_registry()))
    assert scenario.name == path.stem and scenario.description and callable(script)


def test_every_example_of_the_format_reference_parses(catalogue):
    document = (ROOT / "docs" / "scenario-format.md").read_text()
    examples = [block.split("```")[0] for block in document.split("```yaml\n")[1:]]
    assert len(examples) >= 10
    for example in examples:
        if "lab:" not in example:  # a fragment: complete it into a scenario with both workloads
            head = "lab: tiers\nduration: 60s\n"
            if "workloads:" not in example:
                head += "workloads: [{type: bank}, {type: register}]\n"
            example = head + example
        parse_scenario(example, catalogue)


def test_a_workload_the_lab_cannot_serve_is_refused_before_anything_starts(catalogue):
    assert problems(catalogue, "lab: chord\nduration: 10s\nworkloads:\n  - type: register\n") == [
        "s.yaml:4: workloads[0].type: a register workload runs against the tiers, kv or "
        "migration lab, not chord"]
    assert problems(catalogue, "lab: kv\nduration: 10s\nworkloads:\n  - type: bank\n") == [
        "s.yaml:4: workloads[0].type: a bank workload runs against the tiers lab, not kv"]


def test_a_workload_may_call_another_role_of_its_lab(catalogue):
    text = "lab: migration\nduration: 10s\nworkloads:\n  - {type: register, via: kv-switch}\n"
    scenario = parse_scenario(text, catalogue)
    assert scenario.workloads[0].via == "kv-switch"
    assert problems(catalogue, text.replace("kv-switch", "kv-swich")) == [
        "s.yaml:4: workloads[0].via: lab 'migration' has no role 'kv-swich' (its roles: "
        "vm-switch, kv-switch, host); did you mean 'kv-switch'?"]


def test_host_faults_name_hosts_and_a_rate(catalogue):
    scenario = parse_scenario(HEAD + dedent("""\
        faults:
          - {at: 5s, for: 10s, kind: host-stop, host: host-2}
          - {at: 20s, for: 10s, kind: host-slow, host: host-1, other: host-3, rate: 1mbit}
        """), catalogue)
    assert [f.params for f in scenario.faults] == [
        {"host": "host-2"}, {"host": "host-1", "other": "host-3", "rate": "1mbit"}]
    assert "is not a rate" in problems(catalogue, HEAD + "faults:\n  - {at: 5s, kind: "
                                       "host-slow, host: a, other: b, rate: fast}\n")[0]
