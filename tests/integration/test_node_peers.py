"""Two nodes as peers on loopback: heartbeats (phi accrual), outbound fault rules, Control.Probe."""

import time

import grpc
import pytest

from nodes.common.peers import HealthChecks, phi_detector
from nodes.rpc import control_pb2
from tests.integration.chain_support import client_channels
from tests.support.ports import free_port

Rule = control_pb2.FaultRule


def peer_view(control) -> dict[str, bool]:
    status = control.Status(control_pb2.StatusRequest(), timeout=5)
    return {peer.name: peer.up for peer in status.peers}


@pytest.fixture
def pair(lab):
    """Node A, and node B that has A as its peer."""
    a = lab.start("kv-a")
    b = lab.start("kv-b", PEERS=lab.address(a))
    return a, b


def test_peer_is_seen_up_then_down_when_it_stops(lab, pair):
    a, b = pair
    control = lab.control(b)
    name = lab.address(a)
    lab.wait_until(lambda: peer_view(control) == {name: True}, what="A up in B's view")
    status = control.Status(control_pb2.StatusRequest(), timeout=5)
    assert [(p.name, p.address) for p in status.peers] == [(name, name)]
    assert lab.scrape(b).value("distlab_peer_up", peer=name) == 1
    assert lab.scrape(b).get("distlab_rpc_client_handled_total",
                             method="/grpc.health.v1.Health/Check", peer=name, code="OK") >= 1

    lab.stop(a)
    lab.wait_until(lambda: peer_view(control) == {name: False}, what="A down in B's view")
    assert lab.scrape(b).value("distlab_peer_up", peer=name) == 0


def test_outbound_error_rule_makes_the_peer_look_down(lab, pair):
    a, b = pair
    control = lab.control(b)
    name = lab.address(a)
    lab.wait_until(lambda: peer_view(control) == {name: True}, what="A up in B's view")
    rule = control.AddFaultRule(Rule(action=Rule.ERROR, direction=Rule.OUTBOUND, peer=name),
                                timeout=5).rule_id
    lab.wait_until(lambda: peer_view(control) == {name: False}, what="A down under the rule")
    assert lab.scrape(b).get("distlab_rpc_client_handled_total",
                             method="/grpc.health.v1.Health/Check", peer=name,
                             code="UNAVAILABLE") >= 1
    # A itself never saw those checks fail: the rule acted inside B.
    assert lab.scrape(a).get("distlab_rpc_server_handled_total",
                             method="/grpc.health.v1.Health/Check", code="UNAVAILABLE") == 0
    control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(rule_ids=[rule]), timeout=5)
    lab.wait_until(lambda: peer_view(control) == {name: True}, what="A up after clearing")


def test_a_silent_peer_is_seen_down_once_phi_suspects_it(lab, pair):
    a, b = pair
    control = lab.control(b)
    name = lab.address(a)
    lab.wait_until(lambda: peer_view(control) == {name: True}, what="A up in B's view")
    lab.control(a).AddFaultRule(Rule(action=Rule.DROP, method="/grpc.health.v1.Health/*"),
                                timeout=5)
    lab.wait_until(lambda: peer_view(control) == {name: False}, what="A down while silent")
    assert lab.scrape(b).get("distlab_rpc_client_handled_total",
                             method="/grpc.health.v1.Health/Check", peer=name,
                             code="DEADLINE_EXCEEDED") >= 1


def test_a_down_verdict_says_why_refused_or_silent_with_phi(lab, pair):
    """What the peer watcher and the data-master log beside a down verdict."""
    a, b = pair
    detector = phi_detector(interval=0.1, threshold=8, acceptable_pause=0.3, rise=1, fall=1)
    channels = client_channels()
    checks = HealthChecks(channels=channels, detector=detector, timeout=0.08)
    targets = {"a": lab.address(a), "b": lab.address(b)}
    lab.wait_until(lambda: checks.round(targets, wait=0.1) or detector.is_up("a"),
                   what="A up")
    lab.control(a).AddFaultRule(Rule(action=Rule.DROP, method="/grpc.health.v1.Health/*"),
                                timeout=5)
    lab.wait_until(lambda: ("a", False) in checks.round(targets, wait=0.1), what="A down")
    why = checks.why("a")
    assert why.startswith("last check silent (DEADLINE_EXCEEDED)"), why
    assert float(why.rpartition("phi ")[2]) >= 8, why
    lab.stop(b)
    lab.wait_until(lambda: ("b", False) in checks.round(targets, wait=0.1), what="B down")
    assert checks.why("b").startswith("last check refused (UNAVAILABLE)"), checks.why("b")
    channels.close()


def test_a_peer_slow_for_less_than_the_acceptable_pause_stays_up(lab, pair):
    a, b = pair
    control = lab.control(b)
    name = lab.address(a)
    lab.wait_until(lambda: peer_view(control) == {name: True}, what="A up in B's view")
    # Checks every 0.2 s with a 0.16 s deadline, PEER_ACCEPTABLE_PAUSE_SECONDS 2: a second
    # of late answers is forgiven.
    lab.control(a).AddFaultRule(Rule(action=Rule.DELAY, method="/grpc.health.v1.Health/*",
                                     delay_seconds=0.5, duration_seconds=1.0), timeout=5)
    ends = time.monotonic() + 3.0
    while time.monotonic() < ends:
        assert peer_view(control) == {name: True}
        time.sleep(0.05)
    assert lab.scrape(b).get("distlab_rpc_client_handled_total",
                             method="/grpc.health.v1.Health/Check", peer=name,
                             code="DEADLINE_EXCEEDED") >= 1


def test_outbound_rule_for_another_peer_changes_nothing(lab, pair):
    a, b = pair
    control = lab.control(b)
    name = lab.address(a)
    control.AddFaultRule(Rule(action=Rule.ERROR, direction=Rule.OUTBOUND, peer="kv-z"),
                         timeout=5)
    control.AddFaultRule(Rule(action=Rule.ERROR), timeout=5)  # inbound on B: not B's checks
    lab.wait_until(lambda: peer_view(control) == {name: True}, what="A up in B's view")


def test_probe_reports_reachability(lab, pair):
    a, b = pair
    control = lab.control(b)
    reply = control.Probe(control_pb2.ProbeRequest(target=lab.address(a), timeout_seconds=2),
                          timeout=5)
    assert (reply.ok, reply.code) == (True, "OK")
    assert reply.latency_seconds > 0

    closed = control.Probe(control_pb2.ProbeRequest(target=f"127.0.0.1:{free_port()}",
                                                    timeout_seconds=1), timeout=5)
    assert (closed.ok, closed.code) == (False, "UNAVAILABLE")
    assert closed.detail


def test_probe_of_a_peer_that_drops_health_checks_times_out(lab, pair):
    a, b = pair
    lab.control(a).AddFaultRule(Rule(action=Rule.DROP, method="/grpc.health.v1.Health/*"),
                                timeout=5)
    reply = lab.control(b).Probe(control_pb2.ProbeRequest(target=lab.address(a),
                                                          timeout_seconds=0.3), timeout=5)
    assert (reply.ok, reply.code) == (False, "DEADLINE_EXCEEDED")


@pytest.mark.parametrize("target, timeout, fragment", [
    ("not a target", 1, "must be host:port"),
    ("127.0.0.1", 1, "must be host:port"),
    ("", 1, "must be host:port"),
    ("127.0.0.1:50051", 31, "timeout_seconds"),
    ("127.0.0.1:50051", -1, "timeout_seconds"),
])
def test_malformed_probe_is_invalid_argument(shared_lab, shared_node, target, timeout, fragment):
    control = shared_lab.control(shared_node)
    with pytest.raises(grpc.RpcError) as caught:
        control.Probe(control_pb2.ProbeRequest(target=target, timeout_seconds=timeout), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()
