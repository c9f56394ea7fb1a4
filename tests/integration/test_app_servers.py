"""The app role's four server architectures keep the node contract: Control, health,
reflection, metrics, fault rules, message limits and SIGTERM drain, in-process and as real
processes. Only Work is called here, so no data tier is needed (DATA_MASTER points nowhere)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from nodes.app.__main__ import SPEC
from nodes.common import interceptors
from nodes.common.auth import Credential
from nodes.common.role import RoleNode, RoleSpec, ServerMode
from nodes.rpc import bank_pb2, bank_pb2_grpc, control_pb2, control_pb2_grpc
from tests.integration.conftest import credential_file

NOWHERE = "127.0.0.1:1"
WORK = "/distlab.bank.Bank/Work"
Rule = control_pb2.FaultRule


def start_app(lab, name: str, architecture: str, **env):
    return lab.start(name, spec=SPEC, DATA_MASTER=NOWHERE, APP_ARCHITECTURE=architecture, **env)


def bank(lab, node) -> bank_pb2_grpc.BankStub:
    return bank_pb2_grpc.BankStub(lab.channel(node))


def failure(call, request, timeout: float = 5.0) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=timeout)
    return caught.value


@pytest.mark.parametrize("architecture", ["iterative", "threaded", "async", "process"])
def test_every_architecture_serves_work_bounds_limits_and_the_contract(lab, architecture):
    node = start_app(lab, "app-1", architecture, MAX_MESSAGE_BYTES=64 * 1024)
    stub, control = bank(lab, node), lab.control(node)
    assert stub.Work(bank_pb2.WorkRequest(cpu_millis=20, io_millis=10), timeout=10).served_by == \
        "app-1"
    error = failure(stub.Work, bank_pb2.WorkRequest(cpu_millis=1001))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "cpu_millis 1001" in error.details()
    error = failure(stub.Work, bank_pb2.WorkRequest(io_millis=10_001))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "io_millis 10001" in error.details()
    # Bad input is refused before any data-tier call (there is no data tier here).
    error = failure(stub.Deposit, bank_pb2.DepositRequest(account="a", amount_cents=1,
                                                          idempotency_key="k" * 129))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "129 characters" in error.details()
    # gRPC itself refuses a message over MAX_MESSAGE_BYTES, whatever the architecture.
    error = failure(stub.Deposit, bank_pb2.DepositRequest(account="a", amount_cents=1,
                                                          idempotency_key="k" * 100_000))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    status = control.Status(control_pb2.StatusRequest(), timeout=5)
    assert status.role == "app" and status.state["architecture"] == architecture
    assert status.state["data_master"] == NOWHERE and status.state["cursors"] == "0"
    assert lab.health(node).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert "distlab.bank.Bank" in reflected_services(lab, node)

    metrics = lab.scrape(node)
    assert metrics.value("distlab_app_architecture_info", architecture=architecture) == 1
    assert metrics.get("distlab_app_work_seconds_total", kind="cpu") >= 0.02
    assert metrics.value("distlab_rpc_server_handled_total", method=WORK, code="OK") == 1
    assert metrics.value("distlab_rpc_server_handled_total", method=WORK,
                         code="INVALID_ARGUMENT") == 2
    assert metrics.value("distlab_rpc_server_in_flight") == 0
    assert metrics.value("distlab_bank_cursors_open") == 0


@pytest.mark.parametrize("architecture", ["iterative", "threaded", "async", "process"])
def test_an_undecodable_request_is_invalid_argument_and_the_node_serves_on(lab, architecture):
    node = start_app(lab, "app-1", architecture)
    raw_work = lab.channel(node).unary_unary(WORK)
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", bytes(range(256))):
        error = failure(raw_work, garbage)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "the request body is not a valid distlab.bank.WorkRequest")
    assert bank(lab, node).Work(bank_pb2.WorkRequest(), timeout=5).served_by == "app-1"
    metrics = lab.scrape(node)
    assert metrics.value("distlab_rpc_server_undecodable_total", method=WORK) == 3
    assert metrics.value("distlab_rpc_server_handled_total", method=WORK,
                         code="INVALID_ARGUMENT") == 3
    assert metrics.value("distlab_rpc_server_in_flight") == 0


def reflected_services(lab, node) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(lab.channel(node))
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    return {service.name for reply in replies
            for service in reply.list_services_response.service}


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_a_drop_meeting_a_caller_without_deadline_ends_unavailable_without_internal_text(
        lab, architecture, monkeypatch):
    monkeypatch.setattr(interceptors, "DROP_WAIT_CAP_SECONDS", 1.0)
    node = start_app(lab, "app-1", architecture)
    rule_id = lab.control(node).AddFaultRule(Rule(method=WORK, action=Rule.DROP),
                                             timeout=5).rule_id
    error = failure(bank(lab, node).Work, bank_pb2.WorkRequest(), timeout=None)
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE,
                                               f"dropped by fault rule {rule_id}")


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_fault_rules_act_on_bank_calls_and_never_on_control(lab, architecture):
    node = start_app(lab, "app-1", architecture)
    stub, control = bank(lab, node), lab.control(node)
    rule_id = control.AddFaultRule(Rule(method=WORK, action=Rule.ERROR, status_code=14),
                                   timeout=5).rule_id
    error = failure(stub.Work, bank_pb2.WorkRequest())
    assert error.code() == grpc.StatusCode.UNAVAILABLE and rule_id in error.details()
    control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5)

    control.AddFaultRule(Rule(method=WORK, action=Rule.DELAY, delay_seconds=0.3), timeout=5)
    assert stub.Work(bank_pb2.WorkRequest(), timeout=10).served_by == "app-1"
    control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5)

    control.AddFaultRule(Rule(method=WORK, action=Rule.DROP), timeout=5)
    assert failure(stub.Work, bank_pb2.WorkRequest(), timeout=0.5).code() == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    control.AddFaultRule(Rule(method="*", action=Rule.ERROR), timeout=5)
    assert failure(lab.health(node).Check, health_pb2.HealthCheckRequest()).code() == \
        grpc.StatusCode.UNAVAILABLE
    assert control.Status(control_pb2.StatusRequest(), timeout=5).node == "app-1"
    assert control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5).cleared == 2
    assert stub.Work(bank_pb2.WorkRequest(), timeout=5).served_by == "app-1"

    metrics = lab.scrape(node)
    for action in ("error", "delay", "drop"):
        assert metrics.value("distlab_fault_injected_total", method=WORK, action=action) == 1
    assert metrics.slower_than("distlab_rpc_server_latency_seconds", "0.25", method=WORK) >= 1
    assert metrics.value("distlab_rpc_server_handled_total", method=WORK,
                         code="UNAVAILABLE") >= 1
    lab.wait_until(lambda: lab.scrape(node).value("distlab_rpc_server_in_flight") == 0,
                   what="the dropped call to end at the server")


def in_flight(lab, node) -> float:
    return lab.scrape(node).get("distlab_rpc_server_in_flight")


def test_iterative_serves_one_call_at_a_time_control_included(lab):
    node = start_app(lab, "app-1", "iterative")
    stub, control = bank(lab, node), lab.control(node)
    working = stub.Work.future(bank_pb2.WorkRequest(io_millis=1500), timeout=30)
    lab.wait_until(lambda: in_flight(lab, node) == 1, what="Work to occupy the one thread")
    # The single thread is asleep inside Work: Control waits its turn like any call.
    assert failure(control.Status, control_pb2.StatusRequest(), timeout=0.3).code() == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    assert working.result(timeout=30).served_by == "app-1"
    assert control.Status(control_pb2.StatusRequest(), timeout=5).node == "app-1"


def test_async_waits_concurrently_on_one_thread_while_control_stays_answerable(lab):
    node = start_app(lab, "app-1", "async", APP_WORKERS=1)
    stub, control = bank(lab, node), lab.control(node)
    # Eight 1 s waits at once: served one after another they would miss the 5 s deadline.
    calls = [stub.Work.future(bank_pb2.WorkRequest(io_millis=1000), timeout=5)
             for _ in range(8)]
    lab.wait_until(lambda: in_flight(lab, node) >= 8, what="all eight calls on the loop")
    assert control.Status(control_pb2.StatusRequest(), timeout=5).state["architecture"] == \
        "async"
    assert [call.result(timeout=10).served_by for call in calls] == ["app-1"] * 8


def test_async_node_lets_in_flight_calls_finish_when_stopped_and_frees_its_threads(lab):
    before = {thread.ident for thread in threading.enumerate()}
    node = start_app(lab, "app-1", "async")
    stub = bank(lab, node)
    working = stub.Work.future(bank_pb2.WorkRequest(io_millis=500), timeout=30)
    lab.wait_until(lambda: in_flight(lab, node) == 1, what="Work to start")
    lab.stop(node, grace=5)
    assert working.result(timeout=10).served_by == "app-1"  # finished within the grace
    assert failure(stub.Work, bank_pb2.WorkRequest()).code() == grpc.StatusCode.UNAVAILABLE
    lab.wait_until(lambda: not {t.ident for t in threading.enumerate()
                                if t.name.startswith(("rpc", "app-1"))} - before,
                   what="the node's event loop and pool threads to end")


class BuggyAsyncRole(RoleNode):
    """An asyncio role whose coroutine handlers raise, as a bug would."""

    service_names = ("test.BuggyAsync",)
    server_mode = ServerMode(asyncio=True)

    def register(self, server) -> None:
        async def boom(request, context):
            raise KeyError("secret-internal-detail")

        async def stream_boom(request, context):
            yield b"first"
            raise RuntimeError("secret-internal-detail")

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.BuggyAsync", {
                "Boom": grpc.unary_unary_rpc_method_handler(boom),
                "StreamBoom": grpc.unary_stream_rpc_method_handler(stream_boom),
            }),))


def test_an_async_handler_bug_becomes_internal_without_a_stack_trace(lab):
    node = lab.start("buggy-1", spec=RoleSpec(name="buggy", summary="raises", settings=(),
                                              build=lambda ctx: BuggyAsyncRole()))
    channel = lab.channel(node)
    error = failure(channel.unary_unary("/test.BuggyAsync/Boom"), b"")
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL,
                                               "internal error: KeyError")
    stream = channel.unary_stream("/test.BuggyAsync/StreamBoom")(b"", timeout=5)
    assert next(stream) == b"first"
    with pytest.raises(grpc.RpcError) as caught:
        next(stream)
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.INTERNAL,
                                                             "internal error: RuntimeError")
    metrics = lab.scrape(node)
    # Both under "other": a test-only service is not one of the image's protos, whose
    # methods are the only ones a metric label names (nodes.common.metrics.MethodLabels).
    assert metrics.value("distlab_rpc_server_handled_total", method="other",
                         code="INTERNAL") == 2
    assert metrics.value("distlab_rpc_server_in_flight") == 0


# -- as real processes -----------------------------------------------------------------------

def app_env(tmp_path, **overrides) -> dict[str, str]:
    env = {**os.environ, "NODE_NAME": "app-9", "GRPC_PORT": "0", "METRICS_PORT": "0",
           "DATA_DIR": str(tmp_path), "GRACE_SECONDS": "5", "DATA_MASTER": NOWHERE,
           "CREDENTIAL_FILE": credential_file(tmp_path)}
    env.update(overrides)
    return env


class AppProcess:
    """`python -m nodes.app` with its JSON log read line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "nodes.app"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
        self.events: list[dict] = []

    def wait_for(self, event: str) -> dict:
        for line in self.process.stdout:
            self.events.append(json.loads(line))
            if self.events[-1]["event"] == event:
                return self.events[-1]
        pytest.fail(f"exited ({self.process.wait()}) before {event}: {self.process.stderr.read()}")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.events += [json.loads(line) for line in self.process.stdout.read().splitlines()]
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def spawn():
    started: list[AppProcess] = []

    def spawn(env: dict[str, str]) -> AppProcess:
        started.append(AppProcess(env))
        return started[-1]

    yield spawn
    for app in started:
        app.close()


def test_help_and_bad_settings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nodes.app", "--help"], capture_output=True,
                          text=True, env=app_env(tmp_path), timeout=30)
    assert done.returncode == 0
    for name in ("DATA_MASTER", "APP_ARCHITECTURE", "APP_WORKERS", "APP_PROCESSES",
                 "APP_MAX_BALANCE_CENTS", "APP_AUDIT_MAX_ACCOUNTS", "APP_CURSORS",
                 "APP_CURSOR_IDLE_SECONDS", "APP_TXN_ATTEMPTS", "APP_UNKNOWN_RESENDS"):
        assert name in done.stdout
    for bad, named in (({"APP_ARCHITECTURE": "forked"}, "APP_ARCHITECTURE"),
                       ({"APP_ARCHITECTURE": "process", "APP_PROCESSES": "0"}, "APP_PROCESSES"),
                       ({"APP_ARCHITECTURE": "process", "APP_MAX_BALANCE_CENTS": str(10**16),
                         "APP_AUDIT_MAX_ACCOUNTS": "10000"}, "APP_AUDIT_MAX_ACCOUNTS")):
        done = subprocess.run([sys.executable, "-m", "nodes.app"], capture_output=True,
                              text=True, env=app_env(tmp_path, **bad), timeout=30)
        assert done.returncode == 2, (bad, done.stderr)
        assert named in done.stderr and "Traceback" not in done.stderr


def test_async_app_drains_on_sigterm_and_exits_0(tmp_path, spawn):
    app = spawn(app_env(tmp_path, APP_ARCHITECTURE="async"))
    started = app.wait_for("node_started")
    with grpc.insecure_channel(f"127.0.0.1:{started['grpc_port']}") as channel:
        stub = bank_pb2_grpc.BankStub(channel)
        assert stub.Work(bank_pb2.WorkRequest(), timeout=10).served_by == "app-9"
        working = stub.Work.future(bank_pb2.WorkRequest(io_millis=1000), timeout=30)
        wait_in_flight(started["metrics_port"], 1)
        assert app.terminate() == 0
        assert working.result(timeout=10).served_by == "app-9"
    assert [e["event"] for e in app.events][-2:] == ["node_stopping", "node_stopped"]


def scrape_text(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_in_flight(metrics_port: int, count: int) -> None:
    from tests.integration.conftest import wait_until

    wait_until(lambda: sum(value for (name, _), value in scrape_text(metrics_port).items()
                           if name == "distlab_rpc_server_in_flight") >= count,
               what=f"{count} call(s) in flight")


def test_process_architecture_serves_one_port_from_several_processes(tmp_path, spawn):
    app = spawn(app_env(tmp_path, APP_ARCHITECTURE="process", APP_PROCESSES="2"))
    started = app.wait_for("supervisor_started")
    assert sorted(started["processes"]) == ["0", "1"]
    target = f"127.0.0.1:{started['grpc_port']}"
    served_by: list[str] = []

    def work_on_a_new_connection() -> str:
        # The kernel spreads connections, not calls: each call gets its own connection.
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) \
                as channel:
            return bank_pb2_grpc.BankStub(channel).Work(bank_pb2.WorkRequest(),
                                                         timeout=10).served_by

    from tests.integration.conftest import wait_until

    def both_answered() -> bool:
        served_by.append(work_on_a_new_connection())
        return set(served_by) == {"app-9/0", "app-9/1"}

    wait_until(both_answered, timeout=30, what="calls served by both worker processes")

    # Every worker reads the credential file itself and checks Control calls.
    credential = Credential.from_file(credential_file(tmp_path))
    for _ in range(4):
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) \
                as channel:
            control = control_pb2_grpc.ControlStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                control.Status(control_pb2.StatusRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert control.Status(control_pb2.StatusRequest(), timeout=10,
                                  metadata=credential.metadata()).role == "app"

    metrics = scrape_text(started["metrics_port"])
    for index in ("0", "1"):
        assert metrics[("distlab_app_process_up", frozenset({("process", index)}))] == 1
        assert metrics[("distlab_app_architecture_info",
                        frozenset({("process", index), ("architecture", "process")}))] == 1
    handled = sum(value for (name, labels), value in metrics.items()
                  if name == "distlab_rpc_server_handled_total" and ("method", WORK) in labels)
    assert handled == len(served_by)

    assert app.terminate() == 0
    events = [e["event"] for e in app.events]
    assert events[-1] == "supervisor_stopped" and events.count("node_stopped") == 2
