"""The lab credential on a real node: Control needs it, the data plane, health and
reflection do not; a wrong or missing one is refused and counted, and changes nothing.
Both kinds of gRPC server (blocking, and asyncio: the app's async architecture)."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from nodes.app.__main__ import SPEC as APP_SPEC
from nodes.common.auth import METADATA_KEY, Credential
from nodes.common.channel import dial
from nodes.common.faults import FaultRules
from nodes.common.metrics import NodeMetrics
from nodes.common.role import RoleNode, RoleSpec, ServerMode
from nodes.common.server import NodeServer
from nodes.kv.__main__ import SPEC as KV_SPEC
from nodes.rpc import bank_pb2, bank_pb2_grpc, control_pb2, control_pb2_grpc, kv_pb2, kv_pb2_grpc

REFUSED = "this call needs the lab credential"
Rule = control_pb2.FaultRule


def refused(call, request, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5, **kwargs)
    return caught.value


def refusals(lab, node, method: str) -> float:
    return lab.scrape(node).get("distlab_auth_refused_total",
                                method=f"/distlab.control.Control/{method}")


def test_control_without_the_credential_is_refused_counted_and_changes_nothing(lab, node):
    stranger = control_pb2_grpc.ControlStub(lab.bare_channel(node))
    error = refused(stranger.AddFaultRule, Rule(method="*", action=Rule.ERROR))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, REFUSED)
    assert refusals(lab, node, "AddFaultRule") == 1
    control = lab.control(node)
    assert control.ListFaultRules(control_pb2.ListFaultRulesRequest(), timeout=5).rules == []
    handled = lab.scrape(node).get("distlab_rpc_server_handled_total",
                                   method="/distlab.control.Control/AddFaultRule",
                                   code="UNAUTHENTICATED")
    assert handled == 1  # refusals show in the RPC metrics like any other ending


def test_a_wrong_credential_is_refused_and_the_right_one_works(lab, node):
    stranger = control_pb2_grpc.ControlStub(lab.bare_channel(node))
    wrong = Credential.generate().metadata()
    assert refused(stranger.Status, control_pb2.StatusRequest(),
                   metadata=wrong).code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused(stranger.Status, control_pb2.StatusRequest(),
                   metadata=[(METADATA_KEY, "")]).code() == grpc.StatusCode.UNAUTHENTICATED
    assert refusals(lab, node, "Status") == 2
    reply = stranger.Status(control_pb2.StatusRequest(), timeout=5,
                            metadata=lab.credential.metadata())
    assert reply.node == "kv-a"
    credential_text = lab.credential.metadata()[0][1]
    assert credential_text not in str(reply)  # never in Status


def test_restore_without_the_credential_leaves_the_data(lab, node, kv):
    kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=5)
    stranger = control_pb2_grpc.ControlStub(lab.bare_channel(node))
    for call, request in ((stranger.Restore, control_pb2.RestoreRequest(role="kv", state=b"")),
                          (stranger.Snapshot, control_pb2.SnapshotRequest()),
                          (stranger.Reconfigure, control_pb2.ReconfigureRequest())):
        assert refused(call, request).code() == grpc.StatusCode.UNAUTHENTICATED
    assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=5).value == b"v"
    assert lab.control(node).Status(control_pb2.StatusRequest(), timeout=5).state["keys"] == "1"


def test_the_data_plane_health_and_reflection_stay_open(lab, node):
    channel = lab.bare_channel(node)
    kv = kv_pb2_grpc.KVStub(channel)
    kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=5)
    assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=5).value == b"v"
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                       timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    listed = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in listed for s in reply.list_services_response.service}
    assert "distlab.kv.KV" in names


def test_refusals_are_labelled_only_with_protected_methods(lab, node):
    channel = lab.bare_channel(node)
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/distlab.control.Control/MadeUp")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    scrape = lab.scrape(node)
    labels = {dict(labels)["method"] for (name, labels) in scrape.samples
              if name == "distlab_auth_refused_total"}
    assert labels == {f"/distlab.control.Control/{m}" for m in (
        "Status", "AddFaultRule", "ListFaultRules", "ClearFaultRules", "MarkFault", "Probe",
        "Snapshot", "Restore", "Reconfigure")}


def test_a_dialled_channel_presents_the_nodes_credential(lab, node):
    def status(credential):
        metrics = NodeMetrics(CollectorRegistry(), node="tester", role="test", version="0")
        channel = dial(lab.address(node), peer="kv-a", node="tester", metrics=metrics,
                       rules=FaultRules(), default_timeout=5, credential=credential)
        lab.channels.append(channel)
        return control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest())

    assert status(lab.credential).node == "kv-a"
    with pytest.raises(grpc.RpcError) as caught:
        status(None)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_node_without_a_usable_credential_file_starts_and_refuses_every_protected_call(
        capsys, lab, tmp_path):
    secret = "not-a-token-but-a-secret-all-the-same"
    (tmp_path / "credential").write_text(secret)
    node = lab.start("kv-b", CREDENTIAL_FILE=tmp_path / "credential", LOG_LEVEL="info")
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()
              if line.startswith("{")]
    missing = [line for line in logged if line["event"] == "credential_missing"]
    assert len(missing) == 1 and missing[0]["node"] == "kv-b"
    assert secret not in json.dumps(logged)

    assert lab.health(node).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    error = refused(lab.control(node).Status, control_pb2.StatusRequest())  # even "right"
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    stub = control_pb2_grpc.ControlStub(lab.bare_channel(node))
    assert refused(stub.Status, control_pb2.StatusRequest(),
                   metadata=[(METADATA_KEY, secret)]).code() == grpc.StatusCode.UNAUTHENTICATED
    assert lab.kv(node).Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=5).version == 1
    lab.stop(node)  # while capsys still captures what it logs


def test_a_good_credential_is_never_logged(capsys, lab):
    lab.stop(lab.start("kv-c", LOG_LEVEL="debug"))
    out = capsys.readouterr().out
    assert "node_stopped" in out and lab.credential.metadata()[0][1] not in out


@pytest.fixture
def async_app(lab) -> NodeServer:
    return lab.start("app-a", spec=APP_SPEC, APP_ARCHITECTURE="async", DATA_MASTER="127.0.0.1:9")


def test_the_asyncio_server_checks_the_credential_too(lab, async_app):
    channel = lab.bare_channel(async_app)
    assert bank_pb2_grpc.BankStub(channel).Work(bank_pb2.WorkRequest(),
                                                timeout=10).served_by == "app-a"
    stranger = control_pb2_grpc.ControlStub(channel)
    error = refused(stranger.Reconfigure, control_pb2.ReconfigureRequest())
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, REFUSED)
    assert refusals(lab, async_app, "Reconfigure") == 1
    assert lab.control(async_app).Status(control_pb2.StatusRequest(),
                                         timeout=5).role == "app"


def test_every_role_declares_protected_methods_of_its_own_services():
    from nodes.chord.__main__ import SPEC as CHORD_SPEC
    from nodes.data.__main__ import SPEC as DATA_SPEC
    from nodes.datamaster.__main__ import SPEC as MASTER_SPEC

    assert KV_SPEC.protected == APP_SPEC.protected == frozenset()
    for spec, package in ((CHORD_SPEC, "distlab.chord."), (DATA_SPEC, "distlab.chain."),
                          (MASTER_SPEC, "distlab.chain.Master/")):
        assert spec.protected and all(m.startswith("/" + package) for m in spec.protected)


class GuardedRole(RoleNode):
    """A role with a protected method of every handler kind, counting the calls it ran."""

    service_names = ("test.Guarded",)

    def __init__(self, asyncio: bool) -> None:
        self.server_mode = ServerMode(asyncio=asyncio)
        self.ran: list[str] = []

    def register(self, server) -> None:
        if self.server_mode.asyncio:
            async def unary(request, context):
                self.ran.append("Unary")
                return b"ok"

            async def stream(request, context):
                self.ran.append("Stream")
                yield b"ok"
        else:
            def unary(request, context):
                self.ran.append("Unary")
                return b"ok"

            def stream(request, context):
                self.ran.append("Stream")
                yield b"ok"

        def upload(request_iterator, context):
            self.ran.append("Upload")
            return b"".join(request_iterator)

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Guarded", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
        }),))


@pytest.mark.parametrize("asyncio", [False, True], ids=["blocking", "asyncio"])
def test_a_protected_handler_of_any_kind_never_runs_without_the_credential(lab, asyncio):
    role = GuardedRole(asyncio)
    spec = RoleSpec(name="guarded", summary="guarded", settings=(), build=lambda ctx: role,
                    protected=frozenset({"/test.Guarded/Unary", "/test.Guarded/Stream",
                                         "/test.Guarded/Upload"}))
    node = lab.start("guarded-1", spec=spec)
    calls = {
        "Unary": lambda channel: channel.unary_unary("/test.Guarded/Unary")(b"", timeout=5),
        "Stream": lambda channel: list(channel.unary_stream("/test.Guarded/Stream")(
            b"", timeout=5)),
        "Upload": lambda channel: channel.stream_unary("/test.Guarded/Upload")(
            iter([b"o", b"k"]), timeout=5),
    }
    for method, call in calls.items():
        with pytest.raises(grpc.RpcError) as caught:
            call(lab.bare_channel(node))
        assert (caught.value.code(), caught.value.details()) == (
            grpc.StatusCode.UNAUTHENTICATED, REFUSED), method
    assert role.ran == []
    for method, call in calls.items():
        assert call(lab.channel(node)) in (b"ok", [b"ok"]), method
    assert sorted(role.ran) == ["Stream", "Unary", "Upload"]
    scrape = lab.scrape(node)
    assert all(scrape.get("distlab_auth_refused_total", method=f"/test.Guarded/{m}") == 1
               for m in calls)
