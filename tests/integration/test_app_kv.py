"""The app tier's KV service over a real chain-replicated data tier on loopback: Put, Get,
Delete and List round-trip in every server architecture, bad input is refused and changes
nothing, a data tier that does not answer is "not applied" or "unknown" as it should be, and
the register workload records a history whose reads saw values that were written."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from distlab.history import FAIL, INFO, OK
from distlab.tiers.register import READ, WRITE, RegisterConfig, RegisterWorkload
from nodes.rpc import chain_pb2, control_pb2, kv_pb2, kv_pb2_grpc
from tests.integration.app_support import ARCHITECTURES, AppTier
from tests.integration.chain_support import DataTier

KV_SERVICE = "distlab.kv.KV"
TXN = "/distlab.chain.Data/Txn"
Code = grpc.StatusCode
Rule = control_pb2.FaultRule
# The chain_support replicas' defaults are small: a KV value may be 64 KiB and a List reads
# up to 1000 keys.
REPLICA_LIMITS = {"DATA_MAX_VALUE_BYTES": str(64 * 1024), "MAX_MESSAGE_BYTES": str(256 * 1024),
                  "DATA_MAX_READ_LIMIT": "1000"}


APP_TIER = AppTier(REPLICA_LIMITS)
start_tier, start_app = APP_TIER.start_tier, APP_TIER.start_app
tier, apps = APP_TIER.fixtures()


def kv(lab, node) -> kv_pb2_grpc.KVStub:
    return kv_pb2_grpc.KVStub(lab.channel(node))


def failure(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


def stored(tier: DataTier, prefix: str) -> dict[str, bytes]:
    """What the data tier itself holds under "kv/" + prefix."""
    reply = tier.client().read(chain_pb2.ReadRequest(prefix="kv/" + prefix, limit=1000))
    return {found.key: found.value for found in reply.found}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_put_get_delete_and_list_round_trip(shared_lab, tier, apps, architecture):
    stub, p = kv(shared_lab, apps[architecture]), f"{architecture}/"
    first = stub.Put(kv_pb2.PutRequest(key=p + "a", value=b"\x00one"), timeout=10).version
    got = stub.Get(kv_pb2.GetRequest(key=p + "a"), timeout=10)
    assert (got.value, got.version) == (b"\x00one", first)
    second = stub.Put(kv_pb2.PutRequest(key=p + "a", value=b"two"), timeout=10).version
    assert second > first
    assert stub.Get(kv_pb2.GetRequest(key=p + "a"), timeout=10).value == b"two"
    assert stored(tier, p + "a") == {f"kv/{p}a": b"two"}

    error = failure(stub.Get, kv_pb2.GetRequest(key=p + "missing"))
    assert error.code() == Code.NOT_FOUND and error.details() == f"no key '{p}missing'"

    assert stub.Delete(kv_pb2.DeleteRequest(key=p + "a"), timeout=10).existed is True
    assert stub.Delete(kv_pb2.DeleteRequest(key=p + "a"), timeout=10).existed is False
    assert failure(stub.Get, kv_pb2.GetRequest(key=p + "a")).code() == Code.NOT_FOUND

    for key in ("list/y", "list/x", "other"):
        stub.Put(kv_pb2.PutRequest(key=p + key, value=b"v"), timeout=10)
    listed = stub.List(kv_pb2.ListRequest(prefix=p + "list/"), timeout=10)
    assert (list(listed.keys), listed.truncated) == ([p + "list/x", p + "list/y"], False)
    listed = stub.List(kv_pb2.ListRequest(prefix=p + "list/", limit=1), timeout=10)
    assert (list(listed.keys), listed.truncated) == ([p + "list/x"], True)
    everything = stub.List(kv_pb2.ListRequest(), timeout=10).keys
    assert {p + "list/x", p + "list/y", p + "other"} <= set(everything)
    assert not any(key.startswith(("kv/", "bank/")) for key in everything)

    big = b"b" * (64 * 1024)
    version = stub.Put(kv_pb2.PutRequest(key=p + "big", value=big), timeout=10).version
    assert stub.Get(kv_pb2.GetRequest(key=p + "big"), timeout=10).version == version


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_bad_input_is_invalid_argument_and_changes_nothing(shared_lab, tier, apps, architecture):
    stub, p = kv(shared_lab, apps[architecture]), f"bad-{architecture}/"
    stub.Put(kv_pb2.PutRequest(key=p + "kept", value=b"before"), timeout=10)
    before = stored(tier, p)
    refusals = [
        (stub.Put, kv_pb2.PutRequest(key="", value=b"v"), "key must not be empty"),
        (stub.Put, kv_pb2.PutRequest(key=p + "new\nline", value=b"v"), "printable text"),
        (stub.Put, kv_pb2.PutRequest(key=p + "k" * 300, value=b"v"), "the limit is 253"),
        (stub.Put, kv_pb2.PutRequest(key=p + "kept", value=b"v" * (64 * 1024 + 1)),
         "value is 65537 bytes; the limit is 65536 (64 KiB)"),
        (stub.Get, kv_pb2.GetRequest(key=p + "\x00"), "printable text"),
        (stub.Delete, kv_pb2.DeleteRequest(key=p + "kept\t"), "printable text"),
        (stub.Delete, kv_pb2.DeleteRequest(key=""), "key must not be empty"),
        (stub.List, kv_pb2.ListRequest(prefix=p, limit=1001), "above the cap of 1000"),
        (stub.List, kv_pb2.ListRequest(prefix="\x1b[31m"), "prefix '\\x1b[31m' must be "
                                                            "printable text"),
    ]
    for call, request, fragment in refusals:
        error = failure(call, request)
        assert error.code() == Code.INVALID_ARGUMENT, fragment
        assert fragment in error.details()
    assert stored(tier, p) == before == {f"kv/{p}kept": b"before"}


def test_health_and_reflection_list_the_kv_service(shared_lab, apps):
    for architecture in ("threaded", "async"):
        node = apps[architecture]
        health = shared_lab.health(node).Check(
            health_pb2.HealthCheckRequest(service=KV_SERVICE), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, architecture
        stub = reflection_pb2_grpc.ServerReflectionStub(shared_lab.channel(node))
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        services = {service.name for reply in replies
                    for service in reply.list_services_response.service}
        assert {KV_SERVICE, "distlab.bank.Bank"} <= services, architecture


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_a_put_whose_answer_was_lost_is_unknown_and_not_resent(lab, architecture):
    """The head applies each Txn only after a delay longer than the app's data-tier deadline:
    the app cannot know whether the Put happened, says so, and does not send it again."""
    tier = start_tier(lab, ("data-1",))
    app = start_app(lab, tier, "app-u", architecture, RPC_TIMEOUT_SECONDS=0.5)
    stub = kv(lab, app)
    head = lab.control(tier.replicas["data-1"])
    head.AddFaultRule(Rule(method=TXN, action=Rule.DELAY, delay_seconds=0.8), timeout=5)
    error = failure(stub.Put, kv_pb2.PutRequest(key="maybe", value=b"1"))
    assert error.code() == Code.UNAVAILABLE
    assert "the outcome of this put is unknown (it may have been applied)" in error.details()
    assert not error.details().startswith("not applied")
    head.ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5)
    # It had reached the head, which applies it once its delay is over: the value is there,
    # written by that one Txn (the data tier's seq counts it once).
    lab.wait_until(lambda: stored(tier, "maybe") == {"kv/maybe": b"1"}, what="delayed put")
    assert tier.client().read(chain_pb2.ReadRequest(keys=["kv/maybe"])).seq == 1


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_a_data_tier_that_is_down_is_unavailable_and_not_applied(lab, architecture):
    tier = start_tier(lab, ("data-1",))
    app = start_app(lab, tier, "app-d", architecture, RPC_TIMEOUT_SECONDS=0.5)
    stub = kv(lab, app)
    stub.Put(kv_pb2.PutRequest(key="x", value=b"1"), timeout=10)
    tier.kill("data-1")
    for call, request in ((stub.Put, kv_pb2.PutRequest(key="x", value=b"2")),
                          (stub.Delete, kv_pb2.DeleteRequest(key="x"))):
        error = failure(call, request)
        assert error.code() == Code.UNAVAILABLE
        assert error.details().startswith("not applied: data tier unavailable: ")
    error = failure(stub.Get, kv_pb2.GetRequest(key="x"))
    assert error.code() == Code.UNAVAILABLE and "data tier unavailable" in error.details()


# -- the register workload -------------------------------------------------------------------

def written_values(history) -> dict[str, set[str]]:
    """Every value a write (ok or indefinite) may have put in each key."""
    values: dict[str, set[str]] = {}
    for op in history.of(WRITE):
        if op.type in (OK, INFO):
            values.setdefault(op.args["key"], set()).add(op.args["value"])
    return values


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_the_register_workload_reads_only_values_that_were_written(shared_lab, apps,
                                                                   architecture):
    config = RegisterConfig(keys=3, processes=4, seconds=2.0, seed=5, max_ops=100_000)
    workload = RegisterWorkload(shared_lab.channel(apps[architecture]), config,
                                run_id=f"wl-{architecture}", first_process=10)
    workload.setup(deadline_seconds=10)
    assert len(workload.history) == 0  # setup writes nothing
    started = time.monotonic()
    history = workload.run()
    assert time.monotonic() - started < config.seconds + config.timeout + 1

    counts = history.counts()
    assert counts[READ][OK] > 10 and counts[WRITE][OK] > 10, counts
    assert counts[READ][FAIL] == counts[WRITE][FAIL] == counts[WRITE][INFO] == 0, counts
    assert {op.process for op in history} == {10, 11, 12, 13}
    assert {op.args["key"] for op in history} == {f"reg-wl-{architecture}-{i}"
                                                 for i in range(3)}
    values = [op.args["value"] for op in history.of(WRITE)]
    assert len(values) == len(set(values))
    written = written_values(history)
    reads = history.of(READ, OK)
    unwritten = [op for op in reads
                 if op.result is not None and op.result not in written.get(op.args["key"], ())]
    assert unwritten == []
    assert any(op.result is not None for op in reads)
    # A read that began after a write of its key was acknowledged never sees the key missing.
    first_ack = {}
    for op in history.of(WRITE, OK):
        first_ack[op.args["key"]] = min(first_ack.get(op.args["key"], op.complete), op.complete)
    assert not [op for op in reads if op.result is None
                and op.invoke > first_ack.get(op.args["key"], float("inf"))]
    assert all(op.complete >= op.invoke for op in history)


def test_the_register_workload_keeps_its_rate_its_op_count_and_its_stop(shared_lab, apps):
    channel = shared_lab.channel(apps["threaded"])
    paced = RegisterWorkload(channel, RegisterConfig(processes=4, seconds=1.0, rate=40.0),
                             run_id="paced").run()
    # 4 processes at 10 ops/s each for 1 s: at most one op each beyond the schedule.
    assert 20 <= len(paced) <= 44, paced.counts()

    counted = RegisterWorkload(channel, RegisterConfig(processes=3, seconds=30.0, max_ops=25),
                               run_id="counted").run()
    assert len(counted) == 25

    stop = threading.Event()
    stopper = threading.Timer(0.5, stop.set)
    stopper.start()
    started = time.monotonic()
    RegisterWorkload(channel, RegisterConfig(processes=2, seconds=30.0, max_ops=10**6),
                     run_id="stopped").run(stop)
    assert time.monotonic() - started < 0.5 + 2.0 + 1
    stopper.join()


def test_register_setup_refuses_at_once_a_server_without_kv(shared_lab, tier):
    workload = RegisterWorkload(shared_lab.channel(tier.master), run_id="none")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        workload.setup(deadline_seconds=30)
    assert caught.value.code() == Code.UNIMPLEMENTED
    assert time.monotonic() - started < 5
