"""distlab/mapreduce: the lab registers through its entry point, and `distlab mr` has its
verbs; job_request ships a module's source or names a built-in; the client reconnects
through the function it is given (a restarted master); the lab's scenarios
(scenarios/mapreduce-*.yaml) parse and fault the lab while `--short` runs."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from distlab.cli import build_cli
from distlab.labs import load_catalogue
from distlab.mapreduce.client import MapReduceClient, MapReduceError, job_request
from distlab.registry import load_registry
from distlab.scenarios.schedule import plan
from distlab.scenarios.spec import load_scenario


def test_the_lab_registers_its_workload_check_and_verbs():
    registry = load_registry()
    assert registry.labs["mapreduce"].entry_role == "mapreduce-master"
    assert registry.workloads["mapreduce"].ops == ("job",)
    assert registry.checks["output"].needs == "mapreduce"
    result = CliRunner().invoke(build_cli(registry), ["mr", "--help"])
    assert result.exit_code == 0
    assert all(verb in result.output for verb in ("submit", "status", "result"))


def test_a_job_is_a_builtin_name_or_a_module_file(tmp_path):
    assert job_request("wordcount") == {"builtin": "wordcount"}
    module = tmp_path / "mine.py"
    module.write_text("def map(k, v): return []\ndef reduce(k, vs): return 0\n")
    assert job_request(str(module)) == {"module_source": module.read_text(), "name": "mine"}
    with pytest.raises(MapReduceError, match="no job module"):
        job_request(str(tmp_path / "missing.py"))


SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"


@pytest.mark.parametrize("name, kind, target", [
    ("mapreduce-kill-worker", "kill", "role:mapreduce-worker"),
    ("mapreduce-restart-master", "restart", "mapreduce-master-1"),
    ("mapreduce-slow-worker", "rpc", "mapreduce-worker-2"),
])
def test_the_mapreduce_scenarios_parse_and_fault_the_lab_within_the_short_run(name, kind,
                                                                              target):
    registry = load_registry()
    scenario = load_scenario(SCENARIOS / f"{name}.yaml",
                             load_catalogue(SCENARIOS.parent / "compose.yaml"), registry)
    assert (scenario.name, scenario.lab) == (name, "mapreduce")
    assert [w.type for w in scenario.workloads] == ["mapreduce"]
    assert [c.name for c in scenario.checks] == ["output"]
    assert scenario.description
    # `distlab run --short` (CI) plays the fault, and heals it, before its run ends.
    short = scenario.shortened()
    events = plan(short, registry)
    (fault,) = [e.fault for e in events if e.action == "fault"]
    assert (fault.kind, fault.target.text) == (kind, target)
    assert all(e.at < short.duration for e in events)
    assert fault.kind == "restart" or any(e.action == "heal" for e in events)
    assert short.duration - fault.at >= 15, "time for the jobs caught by it to finish"


def test_the_client_reconnects_only_when_it_can_and_keeps_the_new_channel():
    asked = []

    def reconnect():
        asked.append(True)
        if len(asked) == 1:  # the master is still restarting
            raise MapReduceError("no mapreduce master is running")
        return grpc.insecure_channel("127.0.0.1:9")

    assert MapReduceClient(grpc.insecure_channel("127.0.0.1:9")).reconnect() is False
    client = MapReduceClient(grpc.insecure_channel("127.0.0.1:9"), reconnect=reconnect)
    first_stub = client.stub
    assert client.reconnect() is False and client.stub is first_stub
    assert client.reconnect() is True and client.stub is not first_stub
    client.close()
