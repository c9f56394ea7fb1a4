"""nodes/common/metrics.py: every label a caller or a peer can influence stays in a bounded set."""

import pytest
from prometheus_client import CollectorRegistry, Counter

from nodes.common.control import MARKER_KINDS
from nodes.common.metrics import (
    FAULT_KINDS,
    MAX_PEER_LABELS,
    OTHER,
    BoundedLabels,
    MethodLabels,
    NameLabels,
    NodeMetrics,
    one_of,
)
from nodes.rpc import kv_pb2  # noqa: F401 - puts distlab.kv.KV in the default pool

GET = "/distlab.kv.KV/Get"


def node_metrics() -> NodeMetrics:
    return NodeMetrics(CollectorRegistry(), node="kv-1", role="kv", version="test")


def series(metrics: NodeMetrics, name: str) -> list[dict[str, str]]:
    return [sample.labels for family in metrics.registry.collect() for sample in family.samples
            if sample.name == name]


def test_a_method_of_a_compiled_service_keeps_its_name_anything_else_is_other():
    methods = MethodLabels()
    assert methods(GET) == GET
    assert methods("/grpc.health.v1.Health/Check") == "/grpc.health.v1.Health/Check"
    for made_up in ("/distlab.kv.KV/Nope", "/evil.Service/Get", "/" + "x" * 8192, "", "Get",
                    "/distlab.kv.KV/Get/more", "//"):
        assert methods(made_up) == OTHER


def test_names_beyond_the_limit_or_not_shaped_like_a_machine_share_other():
    names = NameLabels(limit=3)
    assert [names(n) for n in ("kv-1", "kv-2", "10.0.0.7:50051")] == [
        "kv-1", "kv-2", "10.0.0.7:50051"]
    assert names("kv-4") == OTHER
    assert names("kv-1") == "kv-1"  # a name once kept stays
    assert NameLabels()("a" * 64) == OTHER
    assert NameLabels()("kv 1") == OTHER
    assert NameLabels()("") == OTHER


def test_one_of_keeps_only_the_listed_values():
    actions = one_of(("delay", "error"))
    assert actions("delay") == "delay"
    assert actions("explode") == OTHER


def test_bounded_labels_map_labels_and_remove_the_same_way():
    registry = CollectorRegistry()
    counter = BoundedLabels(Counter("x_total", "x", ["method", "code"], registry=registry),
                            method=one_of(("/a/b",)))
    counter.labels(method="/a/b", code="OK").inc()
    counter.labels("/c/d", "OK").inc()
    counter.labels(method="/e/f", code="OK").inc()
    assert registry.get_sample_value("x_total", {"method": OTHER, "code": "OK"}) == 2
    counter.remove("/g/h", "OK")
    assert registry.get_sample_value("x_total", {"method": OTHER, "code": "OK"}) is None
    with pytest.raises(ValueError, match="has no label peer"):
        BoundedLabels(Counter("y_total", "y", ["method"], registry=registry), peer=str)


def test_three_thousand_made_up_methods_add_one_series_per_metric():
    metrics = node_metrics()
    for n in range(3000):
        method = f"/evil.Service/M{n}"
        metrics.server_handled.labels(method=method, code="UNIMPLEMENTED").inc()
        metrics.server_latency.labels(method=method).observe(0.001)
        metrics.client_handled.labels(method=method, peer=f"peer-{n}", code="OK").inc()
        metrics.fault_injected.labels(method=method, action="delay").inc()
    assert series(metrics, "distlab_rpc_server_handled_total") == [
        {"method": OTHER, "code": "UNIMPLEMENTED"}]
    assert len(series(metrics, "distlab_rpc_server_latency_seconds_count")) == 1
    assert len(series(metrics, "distlab_fault_injected_total")) == 1
    # One series per peer up to the limit, then one for all the others.
    assert len(series(metrics, "distlab_rpc_client_handled_total")) == MAX_PEER_LABELS + 1


def test_the_client_metrics_name_at_most_client_peer_labels_peers_and_peer_up_keeps_its_own():
    # A Chord peer calls most of the ring (compose sets METRICS_PEER_LABELS=8 for it): its
    # client metrics must not grow with the ring, while its verdicts on its neighbours, met
    # later than the peers a join probed, still carry their names.
    metrics = NodeMetrics(CollectorRegistry(), node="chord-1", role="chord", version="test",
                          client_peer_labels=2)
    for n in range(10):
        metrics.client_handled.labels(method=GET, peer=f"chord-{n}", code="OK").inc()
        metrics.client_latency.labels(method=GET, peer=f"chord-{n}").observe(0.001)
    metrics.peer_up.labels(peer="chord-9").set(1)
    assert [s["peer"] for s in series(metrics, "distlab_rpc_client_handled_total")] == [
        "chord-0", "chord-1", OTHER]
    assert len(series(metrics, "distlab_rpc_client_latency_seconds_count")) == 3
    assert series(metrics, "distlab_peer_up") == [{"peer": "chord-9"}]
    none = NodeMetrics(CollectorRegistry(), node="n", role="r", version="t", client_peer_labels=0)
    none.client_handled.labels(method=GET, peer="chord-1", code="OK").inc()
    assert series(none, "distlab_rpc_client_handled_total") == [
        {"method": GET, "peer": OTHER, "code": "OK"}]


def test_fault_kinds_actions_and_codes_are_the_known_ones_or_other():
    metrics = node_metrics()
    metrics.fault_active.labels(kind="partition").set(1)
    metrics.fault_active.labels(kind="x" * 1000).set(1)
    metrics.fault_injected.labels(method=GET, action="explode").inc()
    metrics.server_handled.labels(method=GET, code="NOT_A_CODE").inc()
    assert {labels["kind"] for labels in series(metrics, "distlab_fault_active")} == {
        "partition", OTHER}
    assert series(metrics, "distlab_fault_injected_total") == [{"method": GET, "action": OTHER}]
    assert series(metrics, "distlab_rpc_server_handled_total") == [{"method": GET, "code": OTHER}]


def test_every_kind_control_marks_has_a_label_of_its_own():
    assert set(MARKER_KINDS) <= set(FAULT_KINDS)
