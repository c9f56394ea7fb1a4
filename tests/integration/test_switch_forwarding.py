"""The switch on loopback in front of real nodes: what a caller sees through it.

Backends are "echo" nodes, a test-only role serving the KV service: Get
answers with who served it and the metadata it saw; Put with a key
"fail:<CODE>" fails with that status code.
"""

from __future__ import annotations

import json
from collections import Counter

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nodes.common.role import NodeContext, RoleNode, RoleSpec
from nodes.rpc import control_pb2, kv_pb2, kv_pb2_grpc
from nodes.switch.__main__ import SPEC as SWITCH_SPEC

KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name
Rule = control_pb2.FaultRule


class EchoNode(RoleNode, kv_pb2_grpc.KVServicer):
    service_names = (KV_SERVICE,)

    def __init__(self, ctx: NodeContext) -> None:
        self._name = ctx.name

    def register(self, server: grpc.Server) -> None:
        kv_pb2_grpc.add_KVServicer_to_server(self, server)

    def Get(self, request, context):
        seen = {key: value for key, value in context.invocation_metadata()
                if isinstance(value, str)}
        context.set_trailing_metadata((("x-served-by", self._name),))
        return kv_pb2.GetReply(value=json.dumps({"node": self._name, "metadata": seen}).encode())

    def Put(self, request, context):
        if request.key.startswith("fail:"):
            context.set_trailing_metadata((("x-served-by", self._name),))
            context.abort(grpc.StatusCode[request.key.removeprefix("fail:")],
                          f"echo refuses {request.key}")
        return kv_pb2.PutReply(version=1)


ECHO_SPEC = RoleSpec(name="echo", summary="test-only: says who served a call and what it saw",
                     settings=(), build=EchoNode)


def start_switch(lab, *backends, **env):
    settings = {"SWITCH_BACKENDS": ",".join(lab.address(b) for b in backends),
                "SWITCH_HEALTH_INTERVAL_SECONDS": 0.1, "SWITCH_HEALTH_FALL": 2}
    settings.update(env)
    return lab.start("switch", spec=SWITCH_SPEC, **settings)


def switch_state(lab, switch) -> dict[str, str]:
    return dict(lab.control(switch).Status(control_pb2.StatusRequest(), timeout=5).state)


def wait_all_healthy(lab, switch, count: int) -> None:
    lab.wait_until(lambda: switch_state(lab, switch)["backends"] == f"{count}/{count}",
                   what=f"{count} healthy backends")


def echo(kv, session: str | None = None, **metadata: str) -> dict:
    pairs = [(key.replace("_", "-"), value) for key, value in metadata.items()]
    if session is not None:
        pairs.append(("x-session-id", session))
    reply = kv.Get(kv_pb2.GetRequest(key="k"), metadata=pairs, timeout=5)
    return json.loads(reply.value)


@pytest.fixture
def pair(lab):
    """Two echo backends and a round-robin switch in front of them."""
    backends = [lab.start("echo-1", spec=ECHO_SPEC), lab.start("echo-2", spec=ECHO_SPEC)]
    return start_switch(lab, *backends), backends


def test_a_unary_call_gets_the_backend_answer_with_the_callers_metadata(lab, pair):
    switch, _ = pair
    kv = lab.kv(switch)
    reply, call = kv.Get.with_call(kv_pb2.GetRequest(key="k"), timeout=5, metadata=[
        ("x-session-id", "alice"), ("x-distlab-node", "impostor"),
        ("x-distlab-credential", "0" * 64)])
    seen = json.loads(reply.value)
    assert seen["node"] in ("echo-1", "echo-2")
    assert seen["metadata"]["x-session-id"] == "alice"
    assert seen["metadata"]["x-distlab-node"] == "switch"  # replaced: the backend's caller
    assert "x-distlab-credential" not in seen["metadata"]  # a forwarded call is never privileged
    assert ("x-served-by", seen["node"]) in tuple(call.trailing_metadata())
    # The switch answers Control and health itself
    assert lab.control(switch).Status(control_pb2.StatusRequest(), timeout=5).role == "switch"


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION",
                                  "ALREADY_EXISTS", "RESOURCE_EXHAUSTED"])
def test_application_errors_pass_through_unchanged_and_eject_nobody(lab, pair, code):
    switch, _ = pair
    kv = lab.kv(switch)
    for _ in range(6):
        with pytest.raises(grpc.RpcError) as caught:
            kv.Put(kv_pb2.PutRequest(key=f"fail:{code}"), timeout=5)
        assert caught.value.code().name == code
        assert caught.value.details() == f"echo refuses fail:{code}"
        assert dict(caught.value.trailing_metadata())["x-served-by"] in ("echo-1", "echo-2")
    state = switch_state(lab, switch)
    assert "ejected" not in [state[key] for key in state if key.startswith("backend.")]


def test_an_unknown_method_is_unimplemented_as_the_backend_says(lab, pair):
    switch, _ = pair
    with pytest.raises(grpc.RpcError) as caught:
        lab.kv(switch).Delete(kv_pb2.DeleteRequest(key="k"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_round_robin_spreads_calls_and_metrics_count_them_per_backend(lab, pair):
    switch, backends = pair
    wait_all_healthy(lab, switch, 2)
    kv = lab.kv(switch)
    served = Counter(echo(kv)["node"] for _ in range(20))
    assert served == {"echo-1": 10, "echo-2": 10}
    scrape = lab.scrape(switch)
    for backend in backends:
        name = lab.address(backend)
        assert scrape.get("distlab_switch_backend_requests_total", backend=name, code="OK") == 10
        assert scrape.get("distlab_switch_backend_latency_seconds_count", backend=name) == 10
        assert scrape.value("distlab_switch_backend_healthy", backend=name) == 1
        assert scrape.value("distlab_switch_backend_ejected", backend=name) == 0
        assert scrape.value("distlab_switch_backend_outstanding", backend=name) == 0
    state = switch_state(lab, switch)
    assert state["policy"] == "round_robin"
    assert {key: state[key] for key in state if key.startswith("backend.")} == {
        f"backend.{lab.address(b)}": "healthy" for b in backends}


def test_consistent_hash_keeps_sessions_and_moves_only_those_of_a_stopped_backend(lab):
    backends = [lab.start(f"echo-{n}", spec=ECHO_SPEC) for n in (1, 2, 3)]
    switch = start_switch(lab, *backends, SWITCH_POLICY="consistent_hash")
    wait_all_healthy(lab, switch, 3)
    kv = lab.kv(switch)
    sessions = [f"session-{n}" for n in range(30)]
    placed = {}
    for session in sessions:
        nodes = {echo(kv, session)["node"] for _ in range(3)}
        assert len(nodes) == 1, f"{session} was served by {nodes}"
        placed[session] = nodes.pop()
    busiest, _ = Counter(placed.values()).most_common(1)[0]
    assert len(set(placed.values())) >= 2

    stopped = next(b for b in backends if b.name == busiest)
    lab.stop(stopped)
    lab.wait_until(lambda: switch_state(lab, switch)[f"backend.{lab.address(stopped)}"]
                   == "unhealthy", what=f"{busiest} unhealthy")
    moved = {session for session in sessions if echo(kv, session)["node"] != placed[session]}
    assert moved == {session for session in sessions if placed[session] == busiest}


def test_reflection_through_the_switch_lists_the_services_it_forwards(lab, pair):
    switch, _ = pair
    stub = reflection_pb2_grpc.ServerReflectionStub(lab.channel(switch))
    replies = list(stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    listed = {service.name for service in replies[0].list_services_response.service}
    assert KV_SERVICE in listed
    # grpcurl asks v1 first and falls back to v1alpha on UNIMPLEMENTED (the switch's own).
    v1 = lab.channel(switch).stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    with pytest.raises(grpc.RpcError) as caught:
        list(v1(iter([reflection_pb2.ServerReflectionRequest(
            list_services="").SerializeToString()]), timeout=5))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_callers_deadline_bounds_the_backends_attempt(lab):
    backend = lab.start("echo-1", spec=ECHO_SPEC)
    lab.control(backend).AddFaultRule(
        Rule(action=Rule.DELAY, method="/distlab.kv.KV/Get", delay_seconds=60), timeout=5)
    switch = start_switch(lab, backend, SWITCH_PER_TRY_TIMEOUT_SECONDS=120)
    with pytest.raises(grpc.RpcError) as caught:
        lab.kv(switch).Get(kv_pb2.GetRequest(key="k"), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The switch gave up with its caller, long before the per-try timeout or the delay.
    lab.wait_until(lambda: lab.scrape(switch).get(
        "distlab_switch_backend_requests_total", backend=lab.address(backend),
        code="DEADLINE_EXCEEDED") == 1, what="the switch's attempt ended by the deadline")


def test_no_backend_is_unavailable_with_a_clear_message(lab):
    nowhere = start_switch(lab, SWITCH_BACKENDS="no-such-host.invalid")
    with pytest.raises(grpc.RpcError) as caught:
        lab.kv(nowhere).Get(kv_pb2.GetRequest(key="k"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details().startswith("no healthy backend")
    assert lab.scrape(nowhere).get("distlab_switch_no_backend_total") == 1


def test_a_backend_that_never_answers_is_marked_unhealthy_then_refused(lab):
    backend = lab.start("echo-1", spec=ECHO_SPEC)
    address = lab.address(backend)
    lab.stop(backend)
    # Panic off: otherwise a set with no healthy backend routes to all of them (below).
    switch = start_switch(lab, SWITCH_BACKENDS=address, SWITCH_PANIC_THRESHOLD_PERCENT=0)
    lab.wait_until(lambda: switch_state(lab, switch)[f"backend.{address}"] == "unhealthy",
                   what="the dead backend unhealthy")
    with pytest.raises(grpc.RpcError) as caught:
        lab.kv(switch).Get(kv_pb2.GetRequest(key="k"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == ("no healthy backend: none of the 1 known backends may "
                                      "take calls")
    assert switch_state(lab, switch)["backends"] == "0/1"


def test_in_panic_every_backend_takes_calls_when_too_few_look_healthy(lab):
    backends = [lab.start(f"echo-{n}", spec=ECHO_SPEC) for n in (1, 2, 3)]
    switch = start_switch(lab, *backends)
    wait_all_healthy(lab, switch, 3)
    assert switch_state(lab, switch)["panic"] == "no"
    assert lab.scrape(switch).value("distlab_switch_panic") == 0
    # Two of three fail their health checks (a fault rule on the switch's checks only),
    # though they serve calls: under 50 % healthy, the switch routes to all three.
    for backend in backends[:2]:
        lab.control(switch).AddFaultRule(Rule(method="/grpc.health.v1.Health/Check",
                                              peer=lab.address(backend), action=Rule.ERROR,
                                              direction=Rule.OUTBOUND), timeout=5)
    lab.wait_until(lambda: switch_state(lab, switch)["backends"] == "1/3",
                   what="two backends unhealthy")
    state = switch_state(lab, switch)
    assert state["panic"].startswith("yes: 1/3 look healthy, under 50%")
    assert lab.scrape(switch).value("distlab_switch_panic") == 1
    served = Counter(echo(lab.kv(switch))["node"] for _ in range(9))
    assert served == {"echo-1": 3, "echo-2": 3, "echo-3": 3}
    lab.control(switch).ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5)
    lab.wait_until(lambda: switch_state(lab, switch)["panic"] == "no", what="panic over")
