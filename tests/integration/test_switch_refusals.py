"""The switch's public port forwards the app tier's client services and nothing else.

Backends are kv nodes (they serve distlab.kv.KV, one of the default
SWITCH_SERVICES). What a caller must not get through the switch: a backend's
Control, its internal services, or a way to grow the switch's /metrics with
method names of its own making.
"""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nodes.common.config import ConfigError
from nodes.rpc import control_pb2, kv_pb2
from nodes.switch.__main__ import SPEC as SWITCH_SPEC

GET = "/distlab.kv.KV/Get"
FORWARD = "/distlab.chain.Replica/Forward"
RESTORE = "/distlab.control.Control/Restore"


@pytest.fixture
def fronted(lab):
    """A kv node holding key "k", and a switch in front of it."""
    backend = lab.start("kv-1")
    lab.kv(backend).Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=5)
    switch = lab.start("switch", spec=SWITCH_SPEC, SWITCH_BACKENDS=lab.address(backend),
                       SWITCH_HEALTH_INTERVAL_SECONDS="0.1")
    return switch, backend


def call_raw(lab, switch, methods, *, batch: int = 200) -> list[grpc.RpcError | bytes]:
    """Call each of `methods` on `switch` with an empty request; every outcome, in order."""
    channel = lab.channel(switch)
    outcomes = []
    for start in range(0, len(methods), batch):
        futures = [channel.unary_unary(method).future(b"", timeout=10)
                   for method in methods[start:start + batch]]
        for future in futures:
            try:
                outcomes.append(future.result())
            except grpc.RpcError as error:
                outcomes.append(error)
    return outcomes


def metrics_size(lab, node) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics",
                                timeout=10) as response:
        return len(response.read())


def handled_by(lab, node, method: str) -> float:
    scrape = lab.scrape(node)
    return sum(value for (name, labels), value in scrape.samples.items()
               if name == "distlab_rpc_server_handled_total" and ("method", method) in labels)


def test_a_method_the_switch_does_not_forward_is_unimplemented_and_reaches_no_backend(
        lab, fronted):
    switch, backend = fronted
    assert lab.kv(switch).Get(kv_pb2.GetRequest(key="k"), timeout=5).value == b"v"
    [refused] = call_raw(lab, switch, [FORWARD])
    assert refused.code() == grpc.StatusCode.UNIMPLEMENTED
    assert refused.details() == ("the switch forwards only the methods of distlab.bank.Bank, "
                                 f"distlab.kv.KV; {FORWARD!r} is not one of them")
    scrape = lab.scrape(switch)
    assert scrape.get("distlab_switch_refused_total") == 1
    # One attempt reached the backend: the Get, nothing else; its health is untouched.
    assert sum(value for (name, _), value in scrape.samples.items()
               if name == "distlab_switch_backend_requests_total") == 1
    # A method of the image's protos keeps its name as a label (a bounded set), anything
    # else is "other".
    assert scrape.get("distlab_rpc_server_handled_total", method=FORWARD,
                      code="UNIMPLEMENTED") == 1
    assert handled_by(lab, backend, FORWARD) == 0


def test_control_through_the_switch_is_the_switchs_own_never_a_backends(lab, fronted):
    switch, backend = fronted
    status = lab.control(switch).Status(control_pb2.StatusRequest(), timeout=5)
    assert status.role == "switch"
    with pytest.raises(grpc.RpcError):
        lab.control(switch).Restore(control_pb2.RestoreRequest(state=b""), timeout=5)
    assert handled_by(lab, switch, RESTORE) == 1
    assert handled_by(lab, backend, RESTORE) == 0
    assert lab.kv(backend).Get(kv_pb2.GetRequest(key="k"), timeout=5).value == b"v"


def test_reflection_lists_what_the_switch_forwards_and_nothing_behind_it(lab, fronted):
    switch, backend = fronted
    stub = reflection_pb2_grpc.ServerReflectionStub(lab.channel(switch))
    replies = list(stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    listed = {service.name for service in replies[0].list_services_response.service}
    assert listed == {"distlab.bank.Bank", "distlab.kv.KV", "distlab.control.Control",
                      "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert handled_by(lab, backend,
                      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == 0


def test_made_up_and_huge_method_names_leave_the_switchs_metrics_the_size_they_were(
        lab, fronted):
    """The attack of issue 17: 3000 made-up methods grew /metrics from 14.5 KB to 5.2 MB, and
    1000 names of 8 KB made one scrape 149 MiB."""
    switch, backend = fronted
    kv = lab.kv(switch)
    for _ in range(3):
        kv.Get(kv_pb2.GetRequest(key="k"), timeout=5)
    before = metrics_size(lab, switch)

    made_up = [f"/evil.Service{n % 50}/Method{n}" for n in range(3000)]
    huge = [f"/{'x' * 4096}.S{n:04d}/{'y' * 4088}" for n in range(1000)]  # 8 KiB each
    assert {len(name) for name in huge} == {8192}
    refused_made_up = call_raw(lab, switch, made_up)
    refused_huge = call_raw(lab, switch, huge)

    assert {outcome.code() for outcome in refused_made_up} == {grpc.StatusCode.UNIMPLEMENTED}
    # Names this long are past gRPC's soft limit on headers (8 KiB): its transport fails a
    # random few calls with RESOURCE_EXHAUSTED whatever the switch answered.
    answered = [outcome for outcome in refused_huge
                if outcome.code() == grpc.StatusCode.UNIMPLEMENTED]
    for outcome in refused_huge:
        if outcome.code() != grpc.StatusCode.UNIMPLEMENTED:
            assert outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "metadata size exceeds soft limit" in outcome.details()
    assert len(answered) > 900
    assert all(len(outcome.details()) < 400 for outcome in refused_made_up + answered)
    after = metrics_size(lab, switch)
    assert after < 2 * before, f"/metrics grew from {before} to {after} bytes"
    scrape = lab.scrape(switch)
    refused = scrape.get("distlab_switch_refused_total")
    assert 3000 + len(answered) <= refused <= 4000
    assert scrape.get("distlab_rpc_server_handled_total", method="other",
                      code="UNIMPLEMENTED") == refused
    # Nothing reached the backend, and the switch still serves.
    assert handled_by(lab, backend, "other") == 0
    assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=5).value == b"v"
    assert lab.control(switch).Status(control_pb2.StatusRequest(), timeout=5).state[
        f"backend.{lab.address(backend)}"] == "healthy"


def test_an_idempotent_method_the_switch_does_not_forward_is_a_bad_setting(lab):
    with pytest.raises(ConfigError, match="SWITCH_IDEMPOTENT_METHODS: /distlab.chain.Data/Read "
                                          "is not a method of SWITCH_SERVICES"):
        lab.start("switch", spec=SWITCH_SPEC, SWITCH_BACKENDS="127.0.0.1:1",
                  SWITCH_IDEMPOTENT_METHODS="/distlab.chain.Data/Read")
