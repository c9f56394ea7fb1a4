"""Fuzzing the kv role's KV service (nodes.kv) on a real node on loopback.

Every input kind of tests.integration.fuzz.support against every KV method,
then bodies at the message-size boundary; afterwards the node still stores
and reads back a key. The service is open to every caller, so one channel
without the lab credential is all a client has.
"""

from __future__ import annotations

import pytest

from nodes.rpc import kv_pb2, kv_pb2_grpc
from tests.integration.conftest import SMALL_LIMITS
from tests.integration.fuzz.support import (
    KINDS,
    Target,
    check_size_limit,
    fuzz,
    methods_of,
)

LIMIT = SMALL_LIMITS["MAX_MESSAGE_BYTES"]
METHODS = methods_of(kv_pb2.DESCRIPTOR.services_by_name["KV"])


@pytest.fixture(scope="module")
def node(shared_lab):
    return shared_lab.start("kv-fuzz", **SMALL_LIMITS)


@pytest.fixture(scope="module")
def target(shared_lab, node):
    return Target("kv", shared_lab.bare_channel(node), METHODS, credentialed=False)


def still_serves(lab, node) -> None:
    kv = kv_pb2_grpc.KVStub(lab.bare_channel(node))
    put = kv.Put(kv_pb2.PutRequest(key="after-fuzz", value=b"ok"), timeout=5)
    got = kv.Get(kv_pb2.GetRequest(key="after-fuzz"), timeout=5)
    assert (got.value, got.version) == (b"ok", put.version)


@pytest.mark.parametrize("kind", KINDS)
def test_kv_answers_every_body_cleanly(shared_lab, node, target, kind):
    fuzz(target, kind)
    still_serves(shared_lab, node)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_kv_bodies_at_the_size_limit(shared_lab, node, target, method):
    check_size_limit(target, LIMIT, methods=[method])
    still_serves(shared_lab, node)
