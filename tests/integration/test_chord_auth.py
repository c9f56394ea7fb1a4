"""Chord peers against callers without the lab credential, and against bad Transfers.

Issue 17's attack on the Chord lab, replayed on a real ring on loopback: a
Transfer from anyone stored a version of 2**64-1 (after which Put and Get of
that key answered INTERNAL) and a 1 MiB value past the 64 KiB limit. Now a
peer-only call without the credential is UNAUTHENTICATED, a bad Transfer with
it is INVALID_ARGUMENT, and the key reads back and takes writes as before.
Clients' calls stay open.
"""

from __future__ import annotations

import time

import grpc
import pytest

from nodes.rpc import chord_pb2, chord_pb2_grpc
from tests.integration.test_chord_peers import ChordPeers

KEY = "account-7"
LIMIT = 64 * 1024
PEER_ONLY = {
    "Route": chord_pb2.RouteRequest(target="0000"),
    "Neighbours": chord_pb2.NeighboursRequest(),
    "Rectify": chord_pb2.RectifyRequest(candidate=chord_pb2.Node(id="0001",
                                                                 address="127.0.0.1:9")),
    "Store": chord_pb2.StoreRequest(entry=chord_pb2.Entry(key=KEY, value=b"forged")),
    "Fetch": chord_pb2.FetchRequest(key=KEY, local_only=True),
    "Transfer": chord_pb2.TransferRequest(entries=[chord_pb2.Entry(key=KEY, value=b"forged",
                                                                   version=2**64 - 1)]),
    "Leave": chord_pb2.LeaveRequest(leaving=chord_pb2.Node(id="0001", address="127.0.0.1:9")),
}


@pytest.fixture(scope="module")
def ring(shared_lab):
    """Two peers, 64 KiB values; KEY written once through the client path."""
    peers = ChordPeers(shared_lab)
    nodes = peers.start_ring([0x1000, 0x9000], CHORD_MAX_VALUE_BYTES=LIMIT)
    peers.wait_for_ring()
    peers.stub(nodes[0]).Put(chord_pb2.PutRequest(key=KEY, value=b"original"), timeout=10)
    return peers


def stranger(peers: ChordPeers, node) -> chord_pb2_grpc.ChordStub:
    return chord_pb2_grpc.ChordStub(peers.lab.bare_channel(node))


def read(peers: ChordPeers) -> tuple[bytes, int]:
    reply = peers.stub(peers.live()[0]).Get(chord_pb2.GetRequest(key=KEY), timeout=10)
    return reply.value, reply.version


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    return caught.value


@pytest.mark.parametrize("method", sorted(PEER_ONLY))
def test_peer_only_calls_need_the_credential(ring, method):
    owner = ring.owner_of(KEY)
    before = read(ring)
    refusals = ring.lab.scrape(owner).get("distlab_auth_refused_total",
                                          method=f"/distlab.chord.Chord/{method}")

    error = refused(getattr(stranger(ring, owner), method), PEER_ONLY[method])

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert read(ring) == before
    assert ring.one_ring() is True
    assert ring.lab.scrape(owner).get("distlab_auth_refused_total",
                                      method=f"/distlab.chord.Chord/{method}") == refusals + 1


def test_clients_calls_stay_open(ring):
    stub = stranger(ring, ring.live()[1])
    stub.Put(chord_pb2.PutRequest(key="open-key", value=b"v"), timeout=10)
    assert stub.Get(chord_pb2.GetRequest(key="open-key"), timeout=10).value == b"v"
    assert stub.Lookup(chord_pb2.LookupRequest(key="open-key"), timeout=10).owner.address
    assert stub.State(chord_pb2.StateRequest(), timeout=10).ring
    assert stub.Delete(chord_pb2.DeleteRequest(key="open-key"), timeout=10).existed


@pytest.mark.parametrize("entry, fragment", [
    (chord_pb2.Entry(key=KEY, value=b"forged", version=2**64 - 1), "is not in 1.."),
    (chord_pb2.Entry(key=KEY, value=b"x" * (1024 * 1024), version=1),
     "1048576 bytes; the limit is 65536"),
    (chord_pb2.Entry(key=KEY, value=b"forged", version=time.time_ns() + 10**15),
     "ahead of this peer's clock"),
    (chord_pb2.Entry(key="", value=b"forged", version=1), "key must not be empty"),
], ids=["version 2**64-1", "1 MiB value", "far future", "empty key"])
def test_a_bad_transfer_with_the_credential_keeps_nothing(ring, entry, fragment):
    owner = ring.owner_of(KEY)
    value, version = read(ring)
    good = chord_pb2.Entry(key="other-key", value=b"fine", version=time.time_ns())

    error = refused(ring.stub(owner).Transfer,
                    chord_pb2.TransferRequest(entries=[good, entry], reason="replicate"))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()
    assert read(ring) == (value, version)
    assert not ring.held_by(owner, "other-key")  # nothing of a refused batch is kept
    stub = ring.stub(ring.live()[1])
    written = stub.Put(chord_pb2.PutRequest(key=KEY, value=b"after"), timeout=10)
    assert written.version > version
    assert read(ring) == (b"after", written.version)
