"""The foundation lab, for real: machines up and observed, broken on purpose, healed, cleaned.

Every wait is bounded and polls for a state; no fixed sleep decides a test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import docker
import grpc
import pytest

from distlab import credential
from distlab.errors import FaultError
from nodes.rpc import control_pb2, control_pb2_grpc, kv_pb2, kv_pb2_grpc
from tests.e2e.conftest import assert_dashboards_answer, eventually, lab_fixture

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
DISTLAB = [str(Path(sys.executable).parent / "distlab")]
MACHINES = ("kv-1", "kv-2", "kv-3")

testbed = lab_fixture("kv")


def probe(testbed, source: str, target: str, timeout: float = 1.0) -> control_pb2.ProbeReply:
    with testbed.machine(source).control() as control:
        return control.call("Probe", control_pb2.ProbeRequest(
            target=testbed.machine(target).address, timeout_seconds=timeout), timeout=timeout + 5)


def up_value(testbed, machine: str) -> float | None:
    result = testbed.prometheus.query(f'up{{job="nodes",machine="{machine}"}}')
    return float(result[0]["value"][1]) if result else None


def test_every_machine_is_healthy_and_scraped(healed):
    infos = {m.name: m.info for m in healed.machines()}
    for name in MACHINES:
        assert infos[name].state == "running" and infos[name].health == "healthy", infos[name]
    assert infos["prometheus-1"].state == "running"
    eventually(lambda: all(up_value(healed, m) == 1.0 for m in MACHINES), timeout=60,
               what="Prometheus sees every kv machine up")


def test_kv_serves_through_the_published_port(healed):
    with healed.client("kv") as channel:
        stub = kv_pb2_grpc.KVStub(channel)
        version = stub.Put(kv_pb2.PutRequest(key="greeting", value=b"hello"), timeout=5).version
        reply = stub.Get(kv_pb2.GetRequest(key="greeting"), timeout=5)
    assert reply.value == b"hello" and reply.version == version


def test_every_dashboard_query_returns_series(healed):
    assert_dashboards_answer("kv")


def test_killed_machine_is_down_in_status_and_prometheus_then_heals(healed):
    healed.nemesis.kill("kv-3")
    status = subprocess.run([*DISTLAB, "status", "--json"], capture_output=True, text=True,
                            timeout=60, check=True)
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert rows["kv-3"]["state"] == "exited"
    assert rows["kv-1"]["state"] == "running"
    eventually(lambda: up_value(healed, "kv-3") == 0.0, timeout=60,
               what="Prometheus reports kv-3 down (up == 0)")
    healed.nemesis.heal()
    eventually(lambda: healed.machine("kv-3").info.health == "healthy", timeout=90,
               what="kv-3 healthy again")
    eventually(lambda: up_value(healed, "kv-3") == 1.0, timeout=60, what="kv-3 up again")


def test_partition_cuts_two_machines_and_heal_reconnects_them(healed):
    healed.nemesis.partition("halves", ["kv-1", "kv-2"])
    cut = probe(healed, "kv-1", "kv-2")
    assert not cut.ok and cut.code in ("DEADLINE_EXCEEDED", "UNAVAILABLE"), cut
    assert not probe(healed, "kv-2", "kv-1").ok
    assert probe(healed, "kv-1", "kv-3").ok
    assert probe(healed, "kv-2", "kv-3").ok
    healed.nemesis.heal()
    eventually(lambda: probe(healed, "kv-1", "kv-2").ok, timeout=30,
               what="kv-1 reaches kv-2 after heal")


def test_paused_machine_times_out_rather_than_resets(healed):
    healed.nemesis.pause("kv-2")
    reply = probe(healed, "kv-1", "kv-2", timeout=1.0)
    assert not reply.ok and reply.code == "DEADLINE_EXCEEDED", reply
    healed.nemesis.heal()
    assert probe(healed, "kv-1", "kv-2").ok


def test_rpc_delay_shows_in_the_client_latency_histogram(healed):
    healed.nemesis.rpc("kv-2", "delay", method="/grpc.health.v1.Health/Check", peer="kv-1",
                       seconds=0.3)
    median = ('histogram_quantile(0.5, sum by (le) (rate(distlab_rpc_client_latency_seconds_bucket'
              '{machine="kv-1",peer="kv-2",method="/grpc.health.v1.Health/Check"}[15s])))')
    eventually(lambda: any(float(r["value"][1]) > 0.25 for r in healed.prometheus.query(median)),
               timeout=60, interval=2, what="kv-1's p50 latency to kv-2 above 0.25 s")
    # kv-3's calls to kv-2 are not delayed: the rule names its peer.
    other = median.replace('machine="kv-1"', 'machine="kv-3"')
    assert all(float(r["value"][1]) < 0.25 for r in healed.prometheus.query(other))


def test_loss_and_bandwidth_are_applied_inside_the_machine_and_undone(healed):
    machine = healed.machine("kv-1")
    healed.nemesis.loss("kv-1", 0.3)
    healed.nemesis.bandwidth("kv-1", "1mbit")
    rules = machine.exec(["iptables", "-w", "-S", "DISTLAB"]).output
    probability = re.search(r"--probability ([0-9.]+)", rules)
    assert probability and abs(float(probability.group(1)) - 0.3) < 1e-6, rules
    assert "tbf" in machine.exec(["tc", "qdisc", "show", "dev", "eth0"]).output
    healed.nemesis.heal()
    assert "statistic" not in machine.exec(["iptables", "-w", "-S", "DISTLAB"]).output
    assert "tbf" not in machine.exec(["tc", "qdisc", "show", "dev", "eth0"]).output


def test_kernel_delay_works_or_says_it_is_unsupported(healed):
    try:
        healed.nemesis.delay("kv-1", 50)
    except FaultError as exc:
        assert "sch_netem" in str(exc) and "rpc" in exc.hint
    else:
        assert "netem" in healed.machine("kv-1").exec(["tc", "qdisc", "show"]).output


def test_cli_bad_input_is_one_line_and_a_hint(healed):
    for args in (["chaos", "kill", "kv-99"], ["up", "nosuchlab"], ["chaos", "loss", "kv-1", "7"]):
        done = subprocess.run([*DISTLAB, *args], capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (args, done.stderr)
        assert len(lines) == 2, (args, done.stderr)
        assert lines[0].startswith("distlab: error:") and lines[1].startswith("hint:"), lines


def test_control_without_the_lab_credential_is_refused_and_changes_nothing(healed):
    machine = healed.machine("kv-1")
    with grpc.insecure_channel(machine.endpoint()) as channel:
        kv_pb2_grpc.KVStub(channel).Put(kv_pb2.PutRequest(key="kept", value=b"v"), timeout=5)
        control = control_pb2_grpc.ControlStub(channel)
        for call, request in ((control.Restore, control_pb2.RestoreRequest(state=b"")),
                              (control.Status, control_pb2.StatusRequest())):
            with pytest.raises(grpc.RpcError) as raised:
                call(request, timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="kept"),
                                               timeout=5).value == b"v"
    with machine.control() as control:  # what the CLI and the runner use: it presents it
        assert control.status().state is not None
    # The credential is a file in the machine: not in its environment, not in its logs.
    ((_, token),) = credential.read(REPO).metadata()
    attrs = docker.from_env(version="auto").containers.get(machine.container).attrs
    assert token not in json.dumps(attrs["Config"])
    assert token not in machine.logs(tail=10_000)


def test_zz_clean_removes_everything_labelled(testbed):
    subprocess.run([*DISTLAB, "clean"], check=True, timeout=120, capture_output=True)
    client = docker.from_env(version="auto")
    label = {"label": "distlab.lab"}
    assert client.containers.list(all=True, filters=label) == []
    assert client.networks.list(filters=label) == []
    assert client.volumes.list(filters=label) == []
