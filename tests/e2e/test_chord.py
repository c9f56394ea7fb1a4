"""The chord lab, for real: a ring of 12 containers that stabilizes by itself, keeps every
key through a crash of a quarter of its peers, moves keys to newcomers, and hands them over
on a graceful leave. Every wait polls for a state a user would check, with a bound.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nodes.rpc import chord_pb2
from tests.e2e.chord_support import one_ring, running_peers, stub_of, unread_keys
from tests.e2e.conftest import assert_dashboards_answer, eventually, lab_fixture

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
PEERS = 12
KEYS = [f"key-{n}" for n in range(40)]

testbed = lab_fixture("chord", scale=[f"chord={PEERS}"])


@pytest.fixture(scope="module")
def stored(testbed):
    eventually(lambda: one_ring(testbed, PEERS), timeout=180, what=f"one ring of {PEERS}")
    stub = stub_of(testbed, "chord-1")
    values = {key: f"value of {key}".encode() for key in KEYS}
    for key, value in values.items():
        stub.Put(chord_pb2.PutRequest(key=key, value=value), timeout=10)
    return values


def test_the_ring_stabilizes_and_every_peer_agrees_on_every_owner(testbed, stored):
    owners = {}
    for name in running_peers(testbed):
        stub = stub_of(testbed, name)
        for key in KEYS[:10]:
            owner = stub.Lookup(chord_pb2.LookupRequest(key=key), timeout=10).owner.id
            assert owners.setdefault(key, owner) == owner, (name, key)
    assert not unread_keys(testbed, stored, running_peers(testbed))


def test_bad_input_is_a_clear_error(testbed, stored):
    stub = stub_of(testbed, "chord-1")
    with pytest.raises(grpc.RpcError) as raised:
        stub.Lookup(chord_pb2.LookupRequest(key=""), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        stub.Lookup(chord_pb2.LookupRequest(id="not-hex"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_every_chord_dashboard_query_returns_series(testbed, stored):
    assert_dashboards_answer("chord")


def test_a_graceful_leave_hands_its_keys_over(testbed, stored):
    testbed.nemesis.stop("chord-12")
    eventually(lambda: one_ring(testbed, PEERS - 1), timeout=120, what="one ring without chord-12")
    assert not unread_keys(testbed, stored, running_peers(testbed)[:3])


def test_killing_a_quarter_of_the_peers_loses_no_key(testbed, stored):
    victims = running_peers(testbed)[-3:]
    for name in victims:
        testbed.nemesis.kill(name)
    survivors = running_peers(testbed)
    eventually(lambda: one_ring(testbed, len(survivors)), timeout=180,
               what=f"one ring of the {len(survivors)} survivors")
    eventually(lambda: not unread_keys(testbed, stored, survivors[:3]), timeout=120,
               what="every key readable after the crash")


def test_peers_that_come_back_take_their_keys_and_nothing_is_lost(testbed, stored):
    testbed.nemesis.heal()  # starts every stopped and killed peer again
    eventually(lambda: one_ring(testbed, PEERS), timeout=180, what=f"one ring of {PEERS} again")
    eventually(lambda: not unread_keys(testbed, stored, running_peers(testbed)), timeout=120,
               what="every key readable from every peer after the rejoin")


def test_a_new_peer_takes_over_the_keys_it_now_owns(testbed, stored):
    testbed.up("chord", [f"chord={PEERS + 1}"], timeout=120)
    newcomer = f"chord-{PEERS + 1}"
    eventually(lambda: one_ring(testbed, PEERS + 1), timeout=180,
               what=f"one ring of {PEERS + 1} with {newcomer}")
    stub = stub_of(testbed, newcomer)
    address = stub.State(chord_pb2.StateRequest(), timeout=5).self.address
    owned = [key for key in KEYS
             if stub.Lookup(chord_pb2.LookupRequest(key=key), timeout=10).owner.address == address]
    if owned:  # 40 keys over 13 peers: a newcomer usually owns some, and then holds them
        eventually(lambda: stub.State(chord_pb2.StateRequest(), timeout=5).keys >= len(owned),
                   timeout=120, what=f"{newcomer} holding the {len(owned)} keys it owns")
    eventually(lambda: not unread_keys(testbed, stored, [newcomer]), timeout=60,
               what=f"every key readable through {newcomer}")
