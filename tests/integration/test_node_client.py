"""`nodes.common.channel.dial` against a real node: client metrics, outbound faults,
the caller's name, and the default deadline."""

import grpc
import pytest
from prometheus_client import CollectorRegistry

from nodes.common.channel import dial
from nodes.common.faults import FaultRules, RuleSpec
from nodes.common.metrics import NodeMetrics
from nodes.rpc import control_pb2, kv_pb2, kv_pb2_grpc

GET = "/distlab.kv.KV/Get"
PUT = "/distlab.kv.KV/Put"
Rule = control_pb2.FaultRule


class Client:
    """What a node holds to call one peer: its metrics, its rules, and the channel."""

    def __init__(self, lab, node, default_timeout: float = 2.0) -> None:
        self.metrics = NodeMetrics(CollectorRegistry(), node="tester", role="test", version="0")
        self.rules = FaultRules()
        self.channel = dial(lab.address(node), peer="kv-a", node="tester", metrics=self.metrics,
                            rules=self.rules, default_timeout=default_timeout)
        lab.channels.append(self.channel)
        self.kv = kv_pb2_grpc.KVStub(self.channel)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def handled(self, method: str, code: str) -> float:
        return self.sample("distlab_rpc_client_handled_total", method=method, peer="kv-a",
                           code=code)

    def slower_than(self, method: str, bound: str) -> float:
        name = "distlab_rpc_client_latency_seconds"
        return self.sample(f"{name}_count", method=method, peer="kv-a") - \
            self.sample(f"{name}_bucket", method=method, peer="kv-a", le=bound)


@pytest.fixture
def client(lab, node):
    return Client(lab, node)


def test_calls_are_counted_and_timed_per_peer(client):
    client.kv.Put(kv_pb2.PutRequest(key="k", value=b"v"))
    assert client.kv.Get(kv_pb2.GetRequest(key="k")).value == b"v"
    with pytest.raises(grpc.RpcError):
        client.kv.Get(kv_pb2.GetRequest(key="missing"))
    assert client.handled(PUT, "OK") == 1
    assert client.handled(GET, "OK") == 1
    assert client.handled(GET, "NOT_FOUND") == 1
    assert client.sample("distlab_rpc_client_latency_seconds_count", method=GET,
                         peer="kv-a") == 2


def test_future_calls_are_counted_too(client):
    future = client.kv.Get.future(kv_pb2.GetRequest(key="missing"))
    with pytest.raises(grpc.RpcError):
        future.result(timeout=5)
    assert client.handled(GET, "NOT_FOUND") == 1


def test_outbound_delay_shows_in_the_client_latency(client):
    client.kv.Put(kv_pb2.PutRequest(key="k", value=b"v"))
    client.rules.add(RuleSpec(method=GET, action="delay", direction="outbound",
                              delay_seconds=0.3))
    assert client.kv.Get(kv_pb2.GetRequest(key="k")).value == b"v"
    assert client.slower_than(GET, "0.25") == 1
    assert client.slower_than(PUT, "0.25") == 0
    assert client.sample("distlab_fault_injected_total", method=GET, action="delay") == 1


def test_outbound_delay_longer_than_the_deadline_fails_without_sending(lab, node, client):
    client.rules.add(RuleSpec(method=GET, action="delay", direction="outbound",
                              delay_seconds=5))
    with pytest.raises(grpc.RpcError) as caught:
        client.kv.Get(kv_pb2.GetRequest(key="k"), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.handled(GET, "DEADLINE_EXCEEDED") == 1
    assert lab.scrape(node).get("distlab_rpc_server_latency_seconds_count", method=GET) == 0


def test_outbound_error_and_drop(lab, node, client):
    error_rule = client.rules.add(RuleSpec(method=GET, action="error", direction="outbound",
                                           status_code=grpc.StatusCode.PERMISSION_DENIED))
    with pytest.raises(grpc.RpcError) as caught:
        client.kv.Get(kv_pb2.GetRequest(key="k"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "injected by outbound fault rule" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        client.kv.Get.future(kv_pb2.GetRequest(key="k")).result(timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert client.handled(GET, "PERMISSION_DENIED") == 2

    client.rules.clear([error_rule])
    client.rules.add(RuleSpec(method=GET, action="drop", direction="outbound"))
    with pytest.raises(grpc.RpcError) as caught:
        client.kv.Get(kv_pb2.GetRequest(key="k"), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert lab.scrape(node).get("distlab_rpc_server_latency_seconds_count", method=GET) == 0


def test_outbound_rule_for_another_peer_does_not_apply(client):
    client.rules.add(RuleSpec(action="error", direction="outbound", peer="kv-z"))
    client.rules.add(RuleSpec(action="error"))  # inbound: about calls this node serves
    client.kv.Put(kv_pb2.PutRequest(key="k", value=b"v"))
    assert client.handled(PUT, "OK") == 1


def test_the_server_sees_who_is_calling(lab, node, client):
    lab.control(node).AddFaultRule(Rule(action=Rule.ERROR, peer="tester"), timeout=5)
    with pytest.raises(grpc.RpcError) as caught:
        client.kv.Put(kv_pb2.PutRequest(key="k", value=b"v"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # An anonymous caller is not "tester".
    lab.kv(node).Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=5)


def test_default_deadline_applies_when_the_caller_gives_none(lab, node):
    client = Client(lab, node, default_timeout=0.3)
    lab.control(node).AddFaultRule(Rule(action=Rule.DROP, method=GET), timeout=5)
    future = client.kv.Get.future(kv_pb2.GetRequest(key="k"))  # no timeout given
    # Without a default deadline the server would hold the call for minutes.
    with pytest.raises(grpc.RpcError) as caught:
        future.result(timeout=10)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.handled(GET, "DEADLINE_EXCEEDED") == 1


def test_outbound_delay_counts_against_the_callers_deadline(lab, node, client):
    client.kv.Put(kv_pb2.PutRequest(key="k", value=b"v"))
    lab.control(node).AddFaultRule(Rule(action=Rule.DELAY, method=GET, delay_seconds=0.5),
                                   timeout=5)
    client.rules.add(RuleSpec(method=GET, action="delay", direction="outbound",
                              delay_seconds=0.4))
    # 0.4 s held here + 0.5 s at the server cannot fit in a 0.6 s deadline.
    with pytest.raises(grpc.RpcError) as caught:
        client.kv.Get(kv_pb2.GetRequest(key="k"), timeout=0.6)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
