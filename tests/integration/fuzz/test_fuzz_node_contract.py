"""Fuzzing what every node serves beside its role (nodes.common): Control, grpc.health.v1
and server reflection, on a threaded server (a kv node) and an asyncio one (an async app
server, where these run in the migration thread pool), with and without the credential.

Without the credential every Control body is refused UNAUTHENTICATED; with it
every body gets a clean status, and the fault rules a fuzzed AddFaultRule may
have added are cleared after each call, as an operator would. Health and
reflection are open to everyone. Afterwards the node still answers health,
Control.Status and its own service.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from nodes.app.__main__ import SPEC as APP_SPEC
from nodes.common.server import CONTROL_METHODS
from nodes.rpc import bank_pb2, bank_pb2_grpc, control_pb2, kv_pb2, kv_pb2_grpc
from tests.integration.conftest import SMALL_LIMITS
from tests.integration.fuzz.support import (
    CLEAN_CODES,
    KINDS,
    Target,
    check_size_limit,
    fuzz,
    methods_of,
)

LIMIT = SMALL_LIMITS["MAX_MESSAGE_BYTES"]
CONTROL = methods_of(control_pb2.DESCRIPTOR.services_by_name["Control"])
HEALTH = methods_of(health_pb2.DESCRIPTOR.services_by_name["Health"])
REFLECTION = methods_of(reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"])
# Watch streams the status until the caller's deadline: that is its answer to a good body,
# so Watch gets a short deadline (and every other method a long one: a loaded machine
# must not turn a slow Check into a failure).
WATCH_ALLOWED = {"Watch": CLEAN_CODES | {grpc.StatusCode.DEADLINE_EXCEEDED}}
WATCH_TIMEOUTS = {"Watch": 0.1}


@pytest.fixture(scope="module")
def nodes(shared_lab):
    # The app server's Bank needs no data tier here: only its Control, health and reflection
    # are fuzzed.
    return {"threaded": shared_lab.start("kv-contract", **SMALL_LIMITS),
            "async": shared_lab.start("app-contract", spec=APP_SPEC, DATA_MASTER="127.0.0.1:1",
                                      APP_ARCHITECTURE="async", MAX_MESSAGE_BYTES=LIMIT)}


TARGETS = [(server, service, credentialed) for server in ("threaded", "async")
           for service in ("control", "health", "reflection")
           for credentialed in (False, True)
           if service == "control" or credentialed]


def target_name(params) -> str:
    server, service, credentialed = params
    return f"{server}-{service}" + ("-cred" if credentialed else "-bare") * (service == "control")


@pytest.fixture(scope="module", params=TARGETS, ids=target_name)
def target(request, shared_lab, nodes):
    server, service, credentialed = request.param
    node = nodes[server]
    channel = shared_lab.channel(node) if credentialed else shared_lab.bare_channel(node)
    methods = {"control": CONTROL, "health": HEALTH, "reflection": REFLECTION}[service]
    return Target(target_name(request.param), channel, methods, credentialed=credentialed,
                  protected=CONTROL_METHODS, allowed=WATCH_ALLOWED,
                  timeouts=WATCH_TIMEOUTS)


def clear_rules(lab, nodes):
    def clear():
        for node in nodes.values():
            lab.control(node).ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5)

    return clear


def still_answers(lab, nodes) -> None:
    for node in nodes.values():
        health = lab.health(node).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert lab.control(node).Status(control_pb2.StatusRequest(), timeout=5).node
    kv = kv_pb2_grpc.KVStub(lab.bare_channel(nodes["threaded"]))
    assert kv.Put(kv_pb2.PutRequest(key="after-fuzz", value=b"ok"), timeout=5).version
    work = bank_pb2_grpc.BankStub(lab.bare_channel(nodes["async"])).Work
    assert work(bank_pb2.WorkRequest(), timeout=5).served_by == "app-contract"


@pytest.mark.parametrize("kind", KINDS)
def test_node_contract_answers_every_body_cleanly(shared_lab, nodes, target, kind):
    fuzz(target, kind, after=clear_rules(shared_lab, nodes))
    still_answers(shared_lab, nodes)


def test_node_contract_bodies_at_the_size_limit(shared_lab, nodes, target):
    check_size_limit(target, LIMIT, after_call=clear_rules(shared_lab, nodes))
    still_answers(shared_lab, nodes)
