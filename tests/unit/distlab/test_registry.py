"""A lab plugs in from one file: a toy lab registered here alone gets a workload, a check and a
CLI verb; a scenario for it parses, runs against a FakeRuntime, and reports. No shared module
names the toy lab."""

from __future__ import annotations

import json
import threading
import time
from textwrap import dedent

import click
import pytest
from click.testing import CliRunner

from distlab import testbed as labs  # not `Testbed`: pytest would try to collect it
from distlab.checkers import Verdict
from distlab.cli import build_cli
from distlab.errors import UsageError
from distlab.history import OK, Op
from distlab.registry import (
    CheckKind,
    LabPlugin,
    Registry,
    RegistryError,
    WorkloadKind,
    WorkloadStart,
    load_registry,
)
from distlab.scenarios.model import ScenarioError, Workload
from distlab.scenarios.reader import Field, integer_in
from distlab.scenarios.runner import RunOptions, ScenarioRunner
from distlab.scenarios.spec import parse_scenario
from distlab.workloads.clients import ClientConfig, ClientWorkload

TOY_COMPOSE = """\
name: distlab
x-distlab:
  default-lab: toy
  labs:
    toy: counters that count
services:
  toy:
    image: distlab/node:dev
    profiles: [toy]
    labels: {distlab.lab: toy, distlab.role: toy}
    environment: {TOY_START: "${DISTLAB_TOY_START:-0}"}
    deploy: {replicas: 2}
"""

SCENARIO = dedent("""\
    lab: toy
    duration: 1s
    workloads: [{type: counter, processes: 2, step: 3, max_ops: 40}]
    faults: [{at: 0.2, for: 0.3, kind: kill, target: toy-2}]
    checks: [counted]
    expect: [{availability: {at_least: 1.0, ops: [bump]}}]
    """)


class CounterWorkload(ClientWorkload):
    """Each process adds `step` to a shared counter; every bump is one history entry."""

    name = "counter"

    def __init__(self, config: ClientConfig, step: int, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.step = step
        self.total = 0
        self.settled = False
        self._lock = threading.Lock()

    def setup(self) -> None:
        self.total = 0

    def _process(self, process: int, stop: threading.Event, ends: float) -> None:
        while not stop.is_set() and time.monotonic() < ends and self._take_slot():
            invoke = self.history.now()
            with self._lock:
                self.total += self.step
            self.history.add(Op(process, "bump", {"step": self.step}, invoke,
                                self.history.now(), OK))
            time.sleep(0.005)


def build_counter(spec: Workload, start: WorkloadStart) -> CounterWorkload:
    config = ClientConfig(processes=spec.processes, max_ops=spec.max_ops, seconds=start.seconds,
                          timeout=spec.timeout, seed=start.seed, rate=spec.rate)
    return CounterWorkload(config, spec.step, history=start.history, run_id=start.run_id,
                           first_process=start.first_process)


def counted(workload: CounterWorkload, options: dict) -> Verdict:
    bumps = [op for op in workload.history.of("bump") if op.type == OK]
    expected = workload.step * len(bumps)
    valid = workload.settled and workload.total == expected
    return Verdict("counted", valid, [] if valid else [f"total {workload.total} != {expected}"],
                   figures={"bumps": len(bumps)})


@click.command(name="toy-hello")
def toy_hello() -> None:
    """Say hello from the toy lab."""
    click.echo("hello from the toy lab")


TOY = LabPlugin(
    "toy", entry_role="toy", serves=("counter",),
    workloads=(WorkloadKind("counter", ("bump",), (Field("step", integer_in(1, 10), 1),),
                            build_counter,
                            settle=lambda workload, seconds: setattr(workload, "settled", True)),),
    checks=(CheckKind("counted", "counter", counted),),
    commands=(toy_hello,))


@pytest.fixture
def toy(tmp_path, make_runtime, make_info):
    (tmp_path / "compose.yaml").write_text(TOY_COMPOSE)
    runtime = make_runtime([
        make_info(name, lab="toy", role="toy", grpc_endpoint="127.0.0.1:9")
        for name in ("toy-1", "toy-2")])
    registry = Registry.builtin().add(TOY)
    return labs.Testbed(runtime, root=tmp_path, registry=registry), runtime


def test_a_toy_lab_scenario_parses_with_its_own_fields(toy):
    testbed, _ = toy
    scenario = parse_scenario(SCENARIO, testbed.catalogue, registry=testbed.registry)
    assert scenario.workloads == (Workload("counter", 2, 0.0, 2.0, 40, step=3),)
    assert [check.name for check in scenario.checks] == ["counted"]


def test_the_toy_lab_s_fields_are_checked_like_the_shared_ones(toy):
    testbed, _ = toy
    text = SCENARIO.replace("step: 3", "step: 30").replace("[counted]", "[counted, bank]")
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(text, testbed.catalogue, registry=testbed.registry, source="s.yaml")
    assert raised.value.lines() == [
        "s.yaml:3: workloads[0].step: expected an integer 1..10, got 30 (an integer)",
        "s.yaml:5: checks[1]: unknown check 'bank', not one of counted"]


def test_a_toy_lab_scenario_runs_against_a_fake_runtime_and_reports(toy, tmp_path):
    testbed, runtime = toy
    scenario = parse_scenario(SCENARIO, testbed.catalogue, registry=testbed.registry)
    result = ScenarioRunner(testbed, scenario, options=RunOptions(
        reports_root=tmp_path / "reports"), say=lambda line: None).run()
    summary = result.summary
    assert summary.error == ""
    assert [(v.name, v.valid) for v in summary.verdicts] == [("counted", True),
                                                             (summary.verdicts[1].name, True)]
    assert summary.verdicts[0].figures["bumps"] == 40
    assert summary.exit_code == 0
    assert [(w.kind, w.machines) for w in summary.faults] == [("kill", ("toy-2",))]
    assert runtime.state("distlab-toy-2") == "running"  # the kill was healed
    assert json.loads((result.directory / "result.json").read_text())["verdict"] == "valid"
    assert (result.directory / "junit.xml").exists()


def test_a_scenario_s_environment_reaches_the_runtime_at_bring_up(toy, tmp_path):
    testbed, runtime = toy
    for machine in list(runtime.infos):  # not running: the runner brings the lab up
        runtime.infos.pop(machine)
    scenario = parse_scenario(SCENARIO + "environment: {DISTLAB_TOY_START: 7}\n",
                              testbed.catalogue, registry=testbed.registry)
    runner = ScenarioRunner(testbed, scenario, options=RunOptions(
        reports_root=tmp_path / "reports", up_timeout=0.1), say=lambda line: None)
    runner.run()
    assert runtime.environments[0] == {"DISTLAB_TOY_START": "7"}


def test_up_refuses_a_variable_the_lab_does_not_read(toy):
    testbed, runtime = toy
    with pytest.raises(UsageError, match="DISTLAB_TOY_STOP") as raised:
        testbed.up("toy", environment={"DISTLAB_TOY_STOP": "1"})
    assert "DISTLAB_TOY_START" in raised.value.hint and runtime.ups == []


def test_the_toy_lab_adds_its_cli_verb_and_keeps_every_shared_one():
    cli = build_cli(Registry.builtin().add(TOY))
    hello = CliRunner().invoke(cli, ["toy-hello"], standalone_mode=False)
    assert hello.exit_code == 0 and hello.output == "hello from the toy lab\n"
    assert {"up", "run", "chaos", "toy-hello"} <= set(cli.commands)
    assert "kill" in cli.commands["chaos"].commands


def test_two_labs_cannot_claim_one_name():
    registry = Registry.builtin().add(TOY)
    with pytest.raises(RegistryError, match="counter"):
        registry.add(LabPlugin("toy2", workloads=TOY.workloads))
    with pytest.raises(RegistryError, match="kill"):
        Registry.builtin().add(LabPlugin("toy3", faults=(load_registry().faults["kill"],)))


def test_the_installed_labs_register_through_entry_points():
    registry = load_registry()
    assert {"tiers", "kv", "chord", "bittorrent"} <= set(registry.labs)
    assert registry.labs_serving("register", ["tiers", "kv", "chord"]) == [
        "tiers", "kv", "migration"]
    assert registry.entry_role("tiers") == "switch"
    assert "chain" in registry.refs
    assert "bt" in [command.name for command in registry.commands()]


def test_scaling_down_removes_the_machines_numbered_above_the_new_count(toy, make_info):
    """Compose would remove whichever it liked; machines must stay toy-1..N."""
    testbed, runtime = toy
    for name in ("toy-3", "toy-4"):
        runtime.infos[f"distlab-{name}"] = make_info(name, lab="toy", role="toy",
                                                     grpc_endpoint="127.0.0.1:9")
    testbed.up("toy", ["toy=2"], timeout=5)
    assert sorted(info.name for info in runtime.machines()) == ["toy-1", "toy-2"]
    assert runtime.ups[-1][1] == {"toy": 2}
