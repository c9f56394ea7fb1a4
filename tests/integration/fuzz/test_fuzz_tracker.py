"""Fuzzing the tracker's gRPC service (nodes.tracker) on a real node on loopback.

Tracker is read-only and open to every client: every input kind against
Swarms and Peers, then bodies at the message-size boundary; afterwards the
node still lists its swarms.
"""

from __future__ import annotations

import pytest

from nodes.rpc import tracker_pb2, tracker_pb2_grpc
from nodes.tracker.__main__ import SPEC as TRACKER_SPEC
from tests.integration.fuzz.support import (
    KINDS,
    Target,
    check_size_limit,
    fuzz,
    methods_of,
)

LIMIT = 64 * 1024
METHODS = methods_of(tracker_pb2.DESCRIPTOR.services_by_name["Tracker"])


@pytest.fixture(scope="module")
def node(shared_lab):
    return shared_lab.start("tracker-fuzz", spec=TRACKER_SPEC, TRACKER_HTTP_PORT=0,
                            TRACKER_UDP_PORT=0, MAX_MESSAGE_BYTES=LIMIT)


@pytest.fixture(scope="module")
def target(shared_lab, node):
    return Target("tracker", shared_lab.bare_channel(node), METHODS, credentialed=False)


def still_serves(lab, node) -> None:
    tracker = tracker_pb2_grpc.TrackerStub(lab.bare_channel(node))
    assert not tracker.Swarms(tracker_pb2.SwarmsRequest(), timeout=5).truncated


@pytest.mark.parametrize("kind", KINDS)
def test_tracker_answers_every_body_cleanly(shared_lab, node, target, kind):
    fuzz(target, kind)
    still_serves(shared_lab, node)


def test_tracker_bodies_at_the_size_limit(shared_lab, node, target):
    check_size_limit(target, LIMIT, methods=METHODS)
    still_serves(shared_lab, node)
