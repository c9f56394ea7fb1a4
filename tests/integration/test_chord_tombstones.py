"""Chord tombstones expire once every replica holds them, and a deleted key never comes
back: not after the grace time, and not through a replica that missed the delete.

What a user would notice: a peer whose memory keeps every key ever deleted, or a
deleted key readable again a few minutes later.
"""

from __future__ import annotations

import grpc

from nodes.rpc import chord_pb2, control_pb2
from tests.integration.test_chord_peers import EIGHT_IDS, KEYS, ChordPeers

# 30 stabilize rounds of 0.1 s make a repair period of 3 s; the grace must exceed two.
GRACE = {"CHORD_TOMBSTONE_GRACE_SECONDS": 7}
TRANSFER = "/distlab.chord.Chord/Transfer"
Rule = control_pb2.FaultRule


def tombstones(peers: ChordPeers, node=None) -> int:
    nodes = [node] if node is not None else peers.live()
    return sum(int(peers.status(n)["tombstones"]) for n in nodes)


def gone_everywhere(peers: ChordPeers, keys) -> bool | list[str]:
    """Every live peer answers NOT_FOUND for `keys` and holds no live copy of them."""
    wrong = []
    for node in peers.live():
        for key in keys:
            try:
                peers.stub(node).Get(chord_pb2.GetRequest(key=key), timeout=5)
                wrong.append(f"{key} readable from {peers.lab.address(node)}")
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    wrong.append(f"{key}: {exc.code().name}")
            if peers.held_by(node, key):
                wrong.append(f"{key} held live by {peers.lab.address(node)}")
    return not wrong or wrong


def test_tombstones_expire_after_the_grace_and_deleted_keys_stay_deleted(lab):
    peers = ChordPeers(lab)
    peers.start_ring(EIGHT_IDS[::2], **GRACE)
    peers.wait_for_ring()
    peers.put_all()
    deleted, kept = KEYS[::2], KEYS[1::2]
    live = peers.live()
    for index, key in enumerate(deleted):
        assert peers.stub(live[index % len(live)]).Delete(
            chord_pb2.DeleteRequest(key=key), timeout=10).existed
    assert tombstones(peers) >= len(deleted)  # the owners' and (most) replicas'

    lab.wait_until(lambda: tombstones(peers) == 0, timeout=40, what="every tombstone expired")
    assert lab.scrape(live[0]).value("distlab_chord_tombstones") == 0
    assert gone_everywhere(peers, deleted) is True
    assert peers.all_readable(kept) is True


def test_an_owner_keeps_its_tombstone_until_a_replica_that_missed_the_delete_has_it(lab):
    peers = ChordPeers(lab)
    peers.start_ring(EIGHT_IDS[::2], **GRACE)
    peers.wait_for_ring()
    key = KEYS[0]
    peers.put_all([key])
    owner = peers.owner_of(key)
    live = peers.live()
    at = live.index(owner)
    cut_off, other = live[(at + 1) % len(live)], live[(at + 2) % len(live)]
    lab.wait_until(lambda: peers.held_by(cut_off, key) and peers.held_by(other, key),
                   what="both replicas hold the key")

    # The first replica takes no copies any more: it misses the delete and every repair.
    lab.control(cut_off).AddFaultRule(Rule(method=TRANSFER, action=Rule.ERROR), timeout=5)
    assert peers.stub(owner).Delete(chord_pb2.DeleteRequest(key=key), timeout=10).existed
    lab.wait_until(lambda: tombstones(peers, other) == 1, what="the other replica's tombstone")
    # The other replica drops its tombstone after the grace; the owner must not, since the
    # cut-off replica still holds the key live.
    lab.wait_until(lambda: tombstones(peers, other) == 0, timeout=30,
                   what="the grace to pass at the other replica")
    assert tombstones(peers, owner) == 1
    assert peers.held_by(cut_off, key)
    for node in live:
        error = None
        try:
            peers.stub(node).Get(chord_pb2.GetRequest(key=key), timeout=5)
        except grpc.RpcError as exc:
            error = exc.code()
        assert error == grpc.StatusCode.NOT_FOUND  # the owner's tombstone answers

    lab.control(cut_off).ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5)
    lab.wait_until(lambda: tombstones(peers) == 0, timeout=40,
                   what="the tombstone reached the replica, then expired everywhere")
    assert gone_everywhere(peers, [key]) is True
