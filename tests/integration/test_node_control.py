"""The Control service over real gRPC: fault rules, snapshot/restore, and the contract's
promises about stopping gracefully and never leaking a stack trace."""

import struct
import threading
import time
import zlib

import grpc
import pytest
from grpc_health.v1 import health_pb2

from nodes.common import interceptors
from nodes.common.role import RoleNode, RoleSpec
from nodes.rpc import control_pb2, kv_pb2

GET = "/distlab.kv.KV/Get"
Rule = control_pb2.FaultRule


def add_rule(control, **fields) -> str:
    return control.AddFaultRule(Rule(**fields), timeout=5).rule_id


def rule_ids(control) -> list[str]:
    return [r.rule_id for r in control.ListFaultRules(control_pb2.ListFaultRulesRequest(),
                                                      timeout=5).rules]


def failure(call, request, timeout=5.0) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=timeout)
    return caught.value


@pytest.fixture
def stored(kv):
    kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=5)
    return kv_pb2.GetRequest(key="k")


def test_delay_rule_slows_the_call_and_shows_in_the_latency_histogram(lab, node, kv, control,
                                                                      stored):
    before = lab.scrape(node)
    add_rule(control, method=GET, action=Rule.DELAY, delay_seconds=0.3)
    reply, call = kv.Get.with_call(stored, timeout=5)
    assert reply.value == b"v"
    after = lab.scrape(node)
    latency = "distlab_rpc_server_latency_seconds"
    assert after.slower_than(latency, "0.25", method=GET) - \
        before.slower_than(latency, "0.25", method=GET) == 1
    assert after.get("distlab_fault_injected_total", method=GET, action="delay") == 1
    assert after.value("distlab_fault_rules_active") == 1
    # Only the named method is delayed.
    kv.Put(kv_pb2.PutRequest(key="k2", value=b""), timeout=5)
    assert lab.scrape(node).slower_than(latency, "0.25", method="/distlab.kv.KV/Put") == 0


def test_error_rule_fails_the_call_with_that_code(lab, node, kv, control, stored):
    rule_id = add_rule(control, method=GET, action=Rule.ERROR, status_code=14)
    error = failure(kv.Get, stored)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "injected" in error.details() and rule_id in error.details()
    (listed,) = control.ListFaultRules(control_pb2.ListFaultRulesRequest(), timeout=5).rules
    assert (listed.rule_id, listed.matched, listed.rule.status_code) == (rule_id, 1, 14)
    assert lab.scrape(node).get("distlab_rpc_server_handled_total", method=GET,
                                code="UNAVAILABLE") == 1
    kv.Put(kv_pb2.PutRequest(key="k", value=b"w"), timeout=5)  # other methods still work


def test_drop_rule_means_the_caller_sees_its_deadline(kv, control, stored):
    add_rule(control, method="/distlab.kv.KV/*", action=Rule.DROP)
    assert failure(kv.Get, stored, timeout=0.5).code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_drop_meeting_a_caller_without_deadline_holds_it_then_unavailable(
        lab, node, kv, control, stored, monkeypatch):
    """gRPC reports "no deadline" as a time_remaining of ~1e10 s: the drop must hold the
    call (up to its cap) and end it UNAVAILABLE, not fail at once leaking internal text."""
    monkeypatch.setattr(interceptors, "DROP_WAIT_CAP_SECONDS", 1.0)
    rule_id = add_rule(control, method=GET, action=Rule.DROP)
    started = time.monotonic()
    error = failure(kv.Get, stored, timeout=None)
    assert time.monotonic() - started >= 0.9
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == f"dropped by fault rule {rule_id}"
    assert lab.scrape(node).get("distlab_rpc_server_handled_total", method=GET,
                                code="UNAVAILABLE") == 1


def test_probability_half_fails_some_calls_and_not_others(kv, control, stored):
    add_rule(control, method=GET, action=Rule.ERROR, probability=0.5)
    outcomes = []
    for _ in range(60):
        try:
            kv.Get(stored, timeout=5)
            outcomes.append("ok")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            outcomes.append("failed")
    assert set(outcomes) == {"ok", "failed"}  # all-same has chance 2 * 0.5**60
    (listed,) = control.ListFaultRules(control_pb2.ListFaultRulesRequest(), timeout=5).rules
    assert listed.matched == outcomes.count("failed")


def test_rule_with_a_duration_expires_by_itself(lab, kv, control, stored):
    add_rule(control, method=GET, action=Rule.ERROR, duration_seconds=1.0)
    (listed,) = control.ListFaultRules(control_pb2.ListFaultRulesRequest(), timeout=5).rules
    assert 0 < listed.remaining_seconds <= 1.0
    assert failure(kv.Get, stored).code() == grpc.StatusCode.UNAVAILABLE
    lab.wait_until(lambda: rule_ids(control) == [], what="rule expiry")
    assert kv.Get(stored, timeout=5).value == b"v"


def test_clear_rules_by_id_and_all(kv, control, stored):
    first = add_rule(control, method=GET, action=Rule.ERROR, status_code=10)
    second = add_rule(control, action=Rule.ERROR, status_code=14)
    assert failure(kv.Get, stored).code() == grpc.StatusCode.ABORTED  # the older rule wins
    reply = control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(rule_ids=[first]),
                                    timeout=5)
    assert reply.cleared == 1 and rule_ids(control) == [second]
    assert failure(kv.Get, stored).code() == grpc.StatusCode.UNAVAILABLE
    add_rule(control, action=Rule.DELAY, delay_seconds=1)
    assert control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5).cleared == 2
    assert rule_ids(control) == []
    assert kv.Get(stored, timeout=5).value == b"v"


def test_clearing_an_unknown_rule_is_not_found(control):
    kept = add_rule(control, action=Rule.ERROR)
    error = failure(control.ClearFaultRules,
                    control_pb2.ClearFaultRulesRequest(rule_ids=["r999", kept]))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "r999" in error.details()
    assert rule_ids(control) == [kept]


@pytest.mark.parametrize("fields, fragment", [
    ({"action": Rule.ACTION_UNSPECIFIED}, "action must be DELAY, ERROR or DROP"),
    ({"action": 7}, "action must be DELAY, ERROR or DROP"),
    ({"action": Rule.ERROR, "probability": 2}, "probability"),
    ({"action": Rule.ERROR, "method": "bogus"}, "method 'bogus'"),
    ({"action": Rule.ERROR, "method": "/distlab.control.Control/Status"}, "exempt"),
    ({"action": Rule.ERROR, "status_code": 99}, "status_code 99"),
    ({"action": Rule.DELAY}, "delay rule needs"),
    ({"action": Rule.ERROR, "duration_seconds": -1}, "duration_seconds"),
])
def test_bad_rule_is_invalid_argument(control, fields, fragment):
    error = failure(control.AddFaultRule, Rule(**fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()
    assert rule_ids(control) == []


def test_control_still_answers_under_a_catch_all_error_rule(lab, node, kv, control, stored):
    add_rule(control, method="*", action=Rule.ERROR)
    assert failure(kv.Get, stored).code() == grpc.StatusCode.UNAVAILABLE
    health = lab.health(node)
    assert failure(health.Check, health_pb2.HealthCheckRequest()).code() == \
        grpc.StatusCode.UNAVAILABLE
    status = control.Status(control_pb2.StatusRequest(), timeout=5)
    assert (status.node, status.role) == ("kv-a", "kv")
    assert control.Snapshot(control_pb2.SnapshotRequest(), timeout=5).role == "kv"
    assert control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5).cleared == 1
    assert kv.Get(stored, timeout=5).value == b"v"


def test_snapshot_restores_into_a_fresh_node_durably(lab, node, kv, control, tmp_path):
    for i in range(5):
        kv.Put(kv_pb2.PutRequest(key=f"key/{i}", value=bytes([i]) * 10), timeout=5)
    kv.Delete(kv_pb2.DeleteRequest(key="key/3"), timeout=5)
    snapshot = control.Snapshot(control_pb2.SnapshotRequest(), timeout=5)
    assert snapshot.role == "kv"

    data_dir = str(tmp_path / "c")
    fresh = lab.start("kv-c", data_dir=data_dir)
    lab.kv(fresh).Put(kv_pb2.PutRequest(key="stale", value=b"x"), timeout=5)
    lab.control(fresh).Restore(control_pb2.RestoreRequest(role="kv", state=snapshot.state),
                               timeout=5)

    def contents(target) -> dict[str, bytes]:
        stub = lab.kv(target)
        keys = stub.List(kv_pb2.ListRequest(), timeout=5).keys
        return {key: stub.Get(kv_pb2.GetRequest(key=key), timeout=5).value for key in keys}

    expected = contents(node)
    assert sorted(expected) == ["key/0", "key/1", "key/2", "key/4"]
    assert contents(fresh) == expected  # "stale" is gone: restore replaces
    lab.stop(fresh)
    assert contents(lab.start("kv-c", data_dir=data_dir)) == expected


def crafted_frame(key: bytes) -> bytes:
    payload = struct.pack(">BQHI", 1, 1, len(key), 0) + key
    return struct.pack(">II", zlib.crc32(payload), len(payload)) + payload


@pytest.mark.parametrize("request_, fragment", [
    (control_pb2.RestoreRequest(role="kv", state=b"this is not a snapshot"), "corrupt"),
    (control_pb2.RestoreRequest(role="kv", state=crafted_frame(b"\xff\xfe")), "corrupt"),
    (control_pb2.RestoreRequest(role="chord", state=b""), "role 'chord'"),
])
def test_bad_restore_is_invalid_argument_and_changes_nothing(kv, control, stored, request_,
                                                             fragment):
    error = failure(control.Restore, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()
    assert list(kv.List(kv_pb2.ListRequest(), timeout=5).keys) == ["k"]
    assert kv.Get(stored, timeout=5).value == b"v"


def get_held_at_the_server(lab, kv, control, stored, *, delay: float, timeout: float):
    """A Get the server is holding (a delay rule) when this returns, as a future."""
    add_rule(control, method=GET, action=Rule.DELAY, delay_seconds=delay)
    in_flight = kv.Get.future(stored, timeout=timeout)
    lab.wait_until(lambda: control.ListFaultRules(control_pb2.ListFaultRulesRequest(),
                                                  timeout=5).rules[0].matched == 1,
                   what="the call to reach the server")
    return in_flight


def test_in_flight_call_completes_during_a_graceful_stop(lab, node, kv, control, stored):
    in_flight = get_held_at_the_server(lab, kv, control, stored, delay=0.5, timeout=10)
    lab.stop(node, grace=2)
    assert in_flight.result(timeout=10).value == b"v"
    assert failure(kv.Get, stored).code() == grpc.StatusCode.UNAVAILABLE  # no longer serving


def test_graceful_stop_cuts_off_calls_that_outlast_the_grace(lab, node, kv, control, stored):
    in_flight = get_held_at_the_server(lab, kv, control, stored, delay=30, timeout=60)
    lab.stop(node, grace=0.2)
    with pytest.raises(grpc.RpcError) as caught:
        in_flight.result(timeout=10)
    assert caught.value.code() != grpc.StatusCode.OK


class BuggyRole(RoleNode):
    """A role whose handlers raise, as a bug would."""

    service_names = ("test.Buggy",)

    def register(self, server: grpc.Server) -> None:
        def boom(request, context):
            raise KeyError("secret-internal-detail")

        def stream_boom(request, context):
            yield b"first"
            raise RuntimeError("secret-internal-detail")

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Buggy", {
            "Boom": grpc.unary_unary_rpc_method_handler(boom),
            "StreamBoom": grpc.unary_stream_rpc_method_handler(stream_boom),
        }),))


BUGGY = RoleSpec(name="buggy", summary="raises", settings=(), build=lambda ctx: BuggyRole())


def test_a_handler_bug_becomes_internal_without_a_stack_trace(lab):
    node = lab.start("buggy-1", spec=BUGGY)
    channel = lab.channel(node)
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/test.Buggy/Boom")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error: KeyError"

    stream = channel.unary_stream("/test.Buggy/StreamBoom")(b"", timeout=5)
    assert next(stream) == b"first"
    with pytest.raises(grpc.RpcError) as caught:
        next(stream)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error: RuntimeError"

    metrics = lab.scrape(node)
    # Both under "other": a test-only service is not one of the image's protos, whose
    # methods are the only ones a metric label names (nodes.common.metrics.MethodLabels).
    assert metrics.value("distlab_rpc_server_handled_total", method="other",
                         code="INTERNAL") == 2
    assert metrics.value("distlab_rpc_server_in_flight") == 0
    # The node keeps serving after the bug.
    status = lab.control(node).Status(control_pb2.StatusRequest(), timeout=5)
    assert status.role == "buggy"


def test_concurrent_writers_all_get_distinct_versions(kv):
    versions, errors = [], []

    def write(n: int) -> None:
        try:
            for i in range(10):
                versions.append(kv.Put(kv_pb2.PutRequest(key=f"w{n}/{i}", value=b"x"),
                                       timeout=5).version)
        except grpc.RpcError as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(versions) == list(range(1, 41))


def test_reconfigure_on_a_role_without_run_time_settings_is_refused(control):
    with pytest.raises(grpc.RpcError) as raised:
        control.Reconfigure(control_pb2.ReconfigureRequest(settings={"backends": "x"}), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no run-time settings" in raised.value.details()
