"""Fuzzing the data tier: the replicas' Data and Replica services (nodes.data) and the
data-master's Master service (nodes.datamaster), on a real two-replica chain on loopback.

Every method of these services needs the lab credential. Without it, every
body, however broken, is refused UNAUTHENTICATED. With it (the chain's own
callers), every input kind is answered with a clean status; a privileged
caller may well reconfigure or overwrite a replica, so what must hold
afterwards is that every node still answers health and Control.Status.
"""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from nodes.data.__main__ import PROTECTED as DATA_PROTECTED
from nodes.datamaster.__main__ import PROTECTED as MASTER_PROTECTED
from nodes.rpc import chain_pb2, control_pb2
from tests.integration.chain_support import REPLICA_ENV, DataTier, free_port
from tests.integration.fuzz.support import (
    EXAMPLES,
    KINDS,
    Target,
    check_size_limit,
    fuzz,
    methods_of,
)

LIMIT = int(REPLICA_ENV["MAX_MESSAGE_BYTES"])
REPLICA_METHODS = methods_of(chain_pb2.DESCRIPTOR.services_by_name["Data"],
                             chain_pb2.DESCRIPTOR.services_by_name["Replica"])
MASTER_METHODS = methods_of(chain_pb2.DESCRIPTOR.services_by_name["Master"])
TARGETS = [(role, credentialed) for role in ("head", "tail", "master")
           for credentialed in (False, True)]


def target_name(role_and_credential: tuple[str, bool]) -> str:
    role, credentialed = role_and_credential
    return f"{role}-{'cred' if credentialed else 'bare'}"


@pytest.fixture(scope="module")
def tier(shared_lab):
    tier = DataTier(shared_lab, master_port=free_port(),
                    master_env={"MAX_MESSAGE_BYTES": str(LIMIT)})
    tier.start_master()
    for index, name in enumerate(("data-1", "data-2")):
        tier.start_replica(name, MAX_MESSAGE_BYTES=LIMIT)
        tier.wait_for_chain(["data-1", "data-2"][:index + 1])
    yield tier
    tier.close()


def node_of(tier, role: str):
    return {"head": tier.replicas["data-1"], "tail": tier.replicas["data-2"],
            "master": tier.master}[role]


@pytest.fixture(scope="module", params=TARGETS, ids=target_name)
def target(request, shared_lab, tier):
    role, credentialed = request.param
    node = node_of(tier, role)
    channel = shared_lab.channel(node) if credentialed else shared_lab.bare_channel(node)
    methods, protected = ((MASTER_METHODS, MASTER_PROTECTED) if role == "master"
                          else (REPLICA_METHODS, DATA_PROTECTED))
    return Target(target_name(request.param), channel, methods,
                  credentialed=credentialed, protected=protected)


def still_answers(lab, tier) -> None:
    for node in (tier.master, *tier.replicas.values()):
        health = lab.health(node).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert lab.control(node).Status(control_pb2.StatusRequest(), timeout=5).node


@pytest.mark.parametrize("kind", KINDS)
def test_data_tier_answers_every_body_cleanly(shared_lab, tier, target, kind):
    # Without the credential every method here is refused before its body is read: a few
    # examples show it.
    fuzz(target, kind, examples=EXAMPLES if target.credentialed else 8)
    still_answers(shared_lab, tier)


def test_data_tier_bodies_at_the_size_limit(shared_lab, tier, target):
    check_size_limit(target, LIMIT)
    still_answers(shared_lab, tier)
