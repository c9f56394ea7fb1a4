"""A kv node over real gRPC: the KV service, health, reflection, /metrics, durability."""

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nodes.rpc import control_pb2, kv_pb2

KV_SERVICE = "distlab.kv.KV"
GET = "/distlab.kv.KV/Get"
PUT = "/distlab.kv.KV/Put"


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    return caught.value


def test_put_get_delete_list(kv):
    first = kv.Put(kv_pb2.PutRequest(key="user/1", value=b"ada"), timeout=5)
    second = kv.Put(kv_pb2.PutRequest(key="user/2", value=b"\x00\xff"), timeout=5)
    kv.Put(kv_pb2.PutRequest(key="other", value=b""), timeout=5)
    assert second.version > first.version > 0

    got = kv.Get(kv_pb2.GetRequest(key="user/2"), timeout=5)
    assert (got.value, got.version) == (b"\x00\xff", second.version)

    overwritten = kv.Put(kv_pb2.PutRequest(key="user/1", value=b"grace"), timeout=5)
    assert kv.Get(kv_pb2.GetRequest(key="user/1"), timeout=5).value == b"grace"
    assert overwritten.version > second.version

    listed = kv.List(kv_pb2.ListRequest(prefix="user/"), timeout=5)
    assert (list(listed.keys), listed.truncated) == (["user/1", "user/2"], False)
    limited = kv.List(kv_pb2.ListRequest(limit=2), timeout=5)
    assert (list(limited.keys), limited.truncated) == (["other", "user/1"], True)

    assert kv.Delete(kv_pb2.DeleteRequest(key="user/1"), timeout=5).existed
    assert not kv.Delete(kv_pb2.DeleteRequest(key="user/1"), timeout=5).existed
    assert refused(kv.Get, kv_pb2.GetRequest(key="user/1")).code() == grpc.StatusCode.NOT_FOUND
    assert list(kv.List(kv_pb2.ListRequest(), timeout=5).keys) == ["other", "user/2"]


@pytest.mark.parametrize("method, request_, code, fragment", [
    ("Put", kv_pb2.PutRequest(key="", value=b"x"), "INVALID_ARGUMENT", "key must not be empty"),
    ("Get", kv_pb2.GetRequest(key=""), "INVALID_ARGUMENT", "key must not be empty"),
    ("Delete", kv_pb2.DeleteRequest(key=""), "INVALID_ARGUMENT", "key must not be empty"),
    ("Put", kv_pb2.PutRequest(key="k" * 257), "INVALID_ARGUMENT", "the limit is 256"),
    ("Put", kv_pb2.PutRequest(key="a\nb"), "INVALID_ARGUMENT", "printable"),
    ("Get", kv_pb2.GetRequest(key="missing"), "NOT_FOUND", "no key 'missing'"),
    ("Put", kv_pb2.PutRequest(key="big", value=b"x" * 1025), "INVALID_ARGUMENT",
     "value is 1025 bytes; the limit is 1024"),
    ("Put", kv_pb2.PutRequest(key="huge", value=b"x" * (65 * 1024)), "RESOURCE_EXHAUSTED", ""),
    ("List", kv_pb2.ListRequest(limit=1001), "INVALID_ARGUMENT", "above the cap of 1000"),
])
def test_bad_input_gets_a_status_with_a_message(shared_lab, shared_node, method, request_, code,
                                                fragment):
    error = refused(getattr(shared_lab.kv(shared_node), method), request_)
    assert error.code().name == code
    assert error.details()
    assert fragment in error.details()
    assert "Traceback" not in error.details()


def test_a_refused_write_changes_nothing(lab, node, kv):
    kv.Put(kv_pb2.PutRequest(key="k", value=b"before"), timeout=5)
    status_before = lab.control(node).Status(control_pb2.StatusRequest(), timeout=5).state
    for bad in (kv_pb2.PutRequest(key="k", value=b"x" * 1025),
                kv_pb2.PutRequest(key="k", value=b"x" * (65 * 1024)),
                kv_pb2.PutRequest(key="k\x00", value=b"x")):
        refused(kv.Put, bad)
    assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=5).value == b"before"
    status_after = lab.control(node).Status(control_pb2.StatusRequest(), timeout=5).state
    assert dict(status_after) == dict(status_before) == {
        "keys": "1", "version": "1", "value_bytes": "6"}


def test_acknowledged_writes_survive_a_restart(lab, tmp_path):
    data_dir = str(tmp_path / "data")
    first = lab.start("kv-a", data_dir=data_dir)
    kv = lab.kv(first)
    kv.Put(kv_pb2.PutRequest(key="a", value=b"1"), timeout=5)
    kv.Put(kv_pb2.PutRequest(key="b", value=b"2"), timeout=5)
    last = kv.Put(kv_pb2.PutRequest(key="a", value=b"3"), timeout=5).version
    kv.Delete(kv_pb2.DeleteRequest(key="b"), timeout=5)
    lab.stop(first)

    second = lab.start("kv-a", data_dir=data_dir)
    kv = lab.kv(second)
    got = kv.Get(kv_pb2.GetRequest(key="a"), timeout=5)
    assert (got.value, got.version) == (b"3", last)
    assert refused(kv.Get, kv_pb2.GetRequest(key="b")).code() == grpc.StatusCode.NOT_FOUND
    assert kv.Put(kv_pb2.PutRequest(key="c", value=b""), timeout=5).version > last + 1


@pytest.mark.parametrize("service", ["", KV_SERVICE, "distlab.control.Control"])
def test_health_serving(shared_lab, shared_node, service):
    health = shared_lab.health(shared_node)
    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(shared_lab, shared_node):
    health = shared_lab.health(shared_node)
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="nope.Nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(shared_lab, shared_node):
    stub = reflection_pb2_grpc.ServerReflectionStub(shared_lab.channel(shared_node))
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=KV_SERVICE)]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {service.name for service in listed.list_services_response.service}
    assert {KV_SERVICE, "distlab.control.Control", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # grpcurl can describe KV


def test_metrics_count_calls_by_method_and_code(lab, node, kv):
    before = lab.scrape(node)
    assert before.value("distlab_node_info", node="kv-a", role="kv", version="0.1.0") == 1
    for _ in range(2):
        refused(kv.Get, kv_pb2.GetRequest(key="missing"))
    kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=5)
    kv.Get(kv_pb2.GetRequest(key="k"), timeout=5)

    after = lab.scrape(node)
    handled = "distlab_rpc_server_handled_total"
    assert after.get(handled, method=GET, code="NOT_FOUND") - \
        before.get(handled, method=GET, code="NOT_FOUND") == 2
    assert after.get(handled, method=GET, code="OK") - before.get(handled, method=GET,
                                                                  code="OK") == 1
    assert after.get(handled, method=PUT, code="OK") - before.get(handled, method=PUT,
                                                                  code="OK") == 1
    latency = "distlab_rpc_server_latency_seconds_count"
    assert after.get(latency, method=GET) - before.get(latency, method=GET) == 3
    assert after.value("distlab_rpc_server_in_flight") == 0
    assert after.value("distlab_kv_keys") == 1
    assert after.get("distlab_kv_wal_fsync_seconds_count") >= 1
    for (name, labels), _ in after.samples.items():
        assert not any(value in ("k", "missing") for _, value in labels), (name, labels)
