"""Fuzzing the Chord service (nodes.chord) on a real two-peer ring on loopback.

Clients' methods (Lookup, Put, Get, Delete, State) are open; the peer-only
ones need the lab credential. Without it every body sent to a peer-only
method is refused UNAUTHENTICATED and the rest answer cleanly. With it (a
peer's own calls), a Leave or Rectify may well move the ring's pointers:
what must hold afterwards is that both peers still answer health,
Control.Status and Chord.State.
"""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from nodes.chord.__main__ import PROTECTED
from nodes.rpc import chord_pb2, control_pb2
from tests.integration.fuzz.support import (
    KINDS,
    Target,
    check_size_limit,
    fuzz,
    methods_of,
)
from tests.integration.test_chord_peers import ChordPeers

LIMIT = 64 * 1024
METHODS = methods_of(chord_pb2.DESCRIPTOR.services_by_name["Chord"])


@pytest.fixture(scope="module")
def ring(shared_lab):
    peers = ChordPeers(shared_lab)
    peers.start_ring([0x1000, 0x9000], MAX_MESSAGE_BYTES=LIMIT, CHORD_MAX_VALUE_BYTES=1024)
    peers.wait_for_ring()
    return peers


@pytest.fixture(scope="module", params=[False, True], ids=["bare", "cred"])
def target(request, shared_lab, ring):
    node = ring.nodes[0]
    credentialed = request.param
    channel = shared_lab.channel(node) if credentialed else shared_lab.bare_channel(node)
    return Target(f"chord-{'cred' if credentialed else 'bare'}", channel, METHODS,
                  credentialed=credentialed, protected=PROTECTED)


def still_answers(lab, ring) -> None:
    for node in ring.nodes:
        health = lab.health(node).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert lab.control(node).Status(control_pb2.StatusRequest(), timeout=5).node
        assert ring.stub(node).State(chord_pb2.StateRequest(), timeout=5).self.address


@pytest.mark.parametrize("kind", KINDS)
def test_chord_answers_every_body_cleanly(shared_lab, ring, target, kind):
    fuzz(target, kind)
    still_answers(shared_lab, ring)


def test_chord_bodies_at_the_size_limit(shared_lab, ring, target):
    check_size_limit(target, LIMIT)
    still_answers(shared_lab, ring)
