"""The switch in front of kv nodes when one stops, and when Control re-points it.

kv's Get stands for an idempotent method (SWITCH_IDEMPOTENT_METHODS) and Put
for one that is not; every backend is seeded with the key the Gets read, so
any of them can answer.
"""

from __future__ import annotations

import grpc
import pytest

from nodes.rpc import control_pb2, kv_pb2
from nodes.switch.__main__ import SPEC as SWITCH_SPEC

GET = "/distlab.kv.KV/Get"


def start_switch(lab, *backends, **env):
    settings = {"SWITCH_BACKENDS": ",".join(lab.address(b) for b in backends),
                "SWITCH_IDEMPOTENT_METHODS": GET, "SWITCH_HEALTH_INTERVAL_SECONDS": 0.1,
                "SWITCH_HEALTH_FALL": 2}
    settings.update(env)
    return lab.start("switch", spec=SWITCH_SPEC, **settings)


def switch_state(lab, switch) -> dict[str, str]:
    return dict(lab.control(switch).Status(control_pb2.StatusRequest(), timeout=5).state)


def reconfigure(lab, switch, **settings: str) -> dict[str, str]:
    reply = lab.control(switch).Reconfigure(
        control_pb2.ReconfigureRequest(settings=settings), timeout=10)
    return dict(reply.settings)


def has_key(lab, node, key: str) -> bool:
    try:
        lab.kv(node).Get(kv_pb2.GetRequest(key=key), timeout=5)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return False
    return True


@pytest.fixture
def seeded(lab):
    """Two kv nodes that both hold key "seed"."""
    nodes = [lab.start("kv-1"), lab.start("kv-2")]
    for node in nodes:
        lab.kv(node).Put(kv_pb2.PutRequest(key="seed", value=b"v"), timeout=5)
    return nodes


def test_health_checks_take_a_stopped_backend_out(lab, seeded):
    kept, stopped = seeded
    switch = start_switch(lab, *seeded)
    lab.wait_until(lambda: switch_state(lab, switch)["backends"] == "2/2", what="both healthy")
    lab.stop(stopped)
    lab.wait_until(lambda: switch_state(lab, switch)[f"backend.{lab.address(stopped)}"]
                   == "unhealthy", what="the stopped backend unhealthy")
    kv = lab.kv(switch)
    for n in range(10):  # not idempotent, yet none fails: nothing is sent to the stopped one
        kv.Put(kv_pb2.PutRequest(key=f"after-{n}", value=b"v"), timeout=5)
    assert all(has_key(lab, kept, f"after-{n}") for n in range(10))
    assert switch_state(lab, switch)["backends"] == "1/2"
    assert lab.scrape(switch).value("distlab_switch_backend_healthy",
                                    backend=lab.address(stopped)) == 0


def test_idempotent_calls_are_retried_elsewhere_and_other_calls_fail(lab, seeded):
    kept, stopped = seeded
    # Health checks all but off: only the passive mechanisms see the stopped backend.
    switch = start_switch(lab, *seeded, SWITCH_HEALTH_INTERVAL_SECONDS=600)
    lab.stop(stopped)
    kv = lab.kv(switch)
    outcomes = []
    for key in ("put-1", "put-2"):  # round robin: one of two consecutive calls meets it
        try:
            kv.Put(kv_pb2.PutRequest(key=key, value=b"v"), timeout=5)
            outcomes.append("OK")
        except grpc.RpcError as error:
            outcomes.append(error.code().name)
    assert sorted(outcomes) == ["OK", "UNAVAILABLE"]

    for _ in range(20):
        assert kv.Get(kv_pb2.GetRequest(key="seed"), timeout=5).value == b"v"
    scrape = lab.scrape(switch)
    assert scrape.get("distlab_switch_retries_total", backend=lab.address(stopped)) >= 1
    assert scrape.get("distlab_switch_ejections_total", backend=lab.address(stopped)) == 1
    assert scrape.get("distlab_switch_backend_requests_total", backend=lab.address(kept),
                      code="OK") == 21
    assert switch_state(lab, switch)[f"backend.{lab.address(stopped)}"] == "ejected"


def test_reconfigure_re_points_the_switch_and_refuses_bad_settings(lab, seeded):
    first, second = seeded
    switch = start_switch(lab, first)
    kv = lab.kv(switch)
    kv.Put(kv_pb2.PutRequest(key="before", value=b"v"), timeout=5)
    assert has_key(lab, first, "before") and not has_key(lab, second, "before")

    assert reconfigure(lab, switch, backends=lab.address(second)) == {
        "backends": lab.address(second), "policy": "round_robin", "hold": "0.000"}
    kv.Put(kv_pb2.PutRequest(key="after", value=b"v"), timeout=5)
    assert has_key(lab, second, "after") and not has_key(lab, first, "after")
    state = switch_state(lab, switch)
    assert [key for key in state if key.startswith("backend.")] == [
        f"backend.{lab.address(second)}"]
    assert lab.scrape(switch).value("distlab_switch_backend_outstanding",
                                    backend=lab.address(first)) is None

    for settings, complaint in [
        ({"weight": "1"}, "unknown setting 'weight'"),
        ({"policy": "random"}, "policy 'random' is not one of"),
        ({"backends": "kv-1:99999", "policy": "least_outstanding"}, "is not host[:port]"),
        ({"backends": " "}, "at least one backend"),
        ({"hold": "soon"}, "hold 'soon': seconds to hold new calls"),
        ({"hold": "-1"}, "or 0 to release them"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            reconfigure(lab, switch, **settings)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert complaint in caught.value.details()
    assert switch_state(lab, switch)["policy"] == "round_robin"  # nothing changed

    assert reconfigure(lab, switch, policy="consistent_hash") == {
        "backends": lab.address(second), "policy": "consistent_hash", "hold": "0.000"}
    kv.Put(kv_pb2.PutRequest(key="hashed", value=b"v"), metadata=[("x-session-id", "s")],
           timeout=5)
    assert has_key(lab, second, "hashed")


def test_a_held_call_waits_until_the_switch_is_repointed_then_goes_to_the_new_backend(
        lab, seeded):
    first, second = seeded
    switch = start_switch(lab, first)
    kv = lab.kv(switch)
    assert float(reconfigure(lab, switch, hold="5")["hold"]) > 4
    call = kv.Put.future(kv_pb2.PutRequest(key="held", value=b"v"), timeout=10)
    lab.wait_until(lambda: switch_state(lab, switch)["held"] == "1", timeout=5)
    assert not call.done()
    assert not has_key(lab, first, "held")  # held at the switch, not sent
    reconfigure(lab, switch, backends=lab.address(second))
    call.result()
    assert has_key(lab, second, "held") and not has_key(lab, first, "held")
    assert switch_state(lab, switch)["holding"] == "no"


def test_an_outbound_fault_rule_on_the_switch_breaks_its_link_to_one_backend(lab, seeded):
    kept, cut = seeded
    switch = start_switch(lab, *seeded, SWITCH_HEALTH_INTERVAL_SECONDS=600)
    lab.control(switch).AddFaultRule(control_pb2.FaultRule(
        action=control_pb2.FaultRule.ERROR, direction=control_pb2.FaultRule.OUTBOUND,
        peer=lab.address(cut), method=GET), timeout=5)
    kv = lab.kv(switch)
    for _ in range(6):
        assert kv.Get(kv_pb2.GetRequest(key="seed"), timeout=5).value == b"v"
    scrape = lab.scrape(switch)
    assert scrape.get("distlab_switch_backend_requests_total", backend=lab.address(cut),
                      code="UNAVAILABLE") >= 1
    assert scrape.get("distlab_fault_injected_total", method=GET, action="error") >= 1
    # the rule acted inside the switch: the backend never saw those calls
    assert lab.scrape(cut).get("distlab_rpc_server_handled_total", method=GET,
                               code="OK") == 0
