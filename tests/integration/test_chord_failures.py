"""Chord peers on loopback under failures: a quarter of the ring crashes, a peer leaves
gracefully, a peer dies in the middle of lookups, a partition splits the ring in two and
heals. Nothing stored may be lost."""

from __future__ import annotations

import time

import grpc
import pytest

from distlab.chord.ringmap import check_ring
from nodes.rpc import chord_pb2, control_pb2
from tests.integration.test_chord_peers import EIGHT_IDS, KEYS, ChordPeers
from tests.support.ports import free_ports

ROUTE = "/distlab.chord.Chord/Route"


@pytest.fixture
def peers(lab) -> ChordPeers:
    return ChordPeers(lab)


def test_a_quarter_of_the_peers_crashing_loses_no_key(lab, peers: ChordPeers):
    nodes = peers.start_ring(EIGHT_IDS, CHORD_GRACEFUL_LEAVE="false")
    peers.wait_for_ring()
    peers.put_all()
    lab.wait_until(lambda: peers.owners_agreed() is True, what="owners agreed before")
    # Two neighbours at once: the keys of the first have their copies on the second and on
    # the next peer, which must take over both ranges.
    peers.stop(nodes[2], nodes[3])
    peers.wait_for_ring()
    lab.wait_until(lambda: peers.all_readable() is True, what="every key readable after")
    assert peers.owners_agreed() is True

    def copies_restored() -> bool:
        live = peers.live()
        for key in KEYS:
            owner = live.index(peers.owner_of(key))
            if not all(peers.held_by(live[(owner + k) % len(live)], key) for k in range(3)):
                return False
        return True

    lab.wait_until(copies_restored, what="three copies of every key again")


def test_a_graceful_leave_hands_the_keys_over(lab, peers: ChordPeers):
    nodes = peers.start_ring(EIGHT_IDS[:4], CHORD_REPLICAS=0)  # the hand-over is the only copy
    peers.wait_for_ring()
    peers.put_all()
    leaving = nodes[1]
    its_keys = [k for k in KEYS if peers.owner_of(k) is leaving]
    assert its_keys, "the leaving peer owns no key: choose other keys"
    assert lab.scrape(leaving).get("distlab_chord_keys", kind="owned") == len(its_keys)
    peers.stop(leaving)
    peers.wait_for_ring()
    assert all(peers.held_by(nodes[2], k) for k in its_keys)
    assert peers.all_readable() is True


def test_a_dead_peer_in_the_middle_of_a_lookup_is_routed_around(lab, peers: ChordPeers):
    peers.start_ring(EIGHT_IDS, CHORD_GRACEFUL_LEAVE="false")
    peers.wait_for_ring()
    lab.wait_until(lambda: peers.owners_agreed() is True, what="fingers settled")
    origin, key, middle = _lookup_through_a_middle_peer(peers)

    # The middle peer stops answering routing questions; it still looks alive to
    # stabilization, so only the lookup's own fallback can get past it.
    control = lab.control(middle)
    rule = control.AddFaultRule(control_pb2.FaultRule(
        action=control_pb2.FaultRule.ERROR, method=ROUTE), timeout=5).rule_id
    reply = peers.stub(origin).Lookup(chord_pb2.LookupRequest(key=key), timeout=5)
    assert reply.owner.address == lab.address(peers.owner_of(key))
    assert lab.address(middle) not in [n.address for n in reply.path]
    assert reply.timeouts >= 1
    control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(rule_ids=[rule]), timeout=5)

    # Now it really dies; lookups from every peer, right away, still find the live owner.
    peers.stop(middle)
    for node in peers.live():
        for probe in KEYS[:8]:
            try:
                found = peers.stub(node).Lookup(chord_pb2.LookupRequest(key=probe), timeout=5)
            except grpc.RpcError as exc:
                raise AssertionError(f"lookup of {probe} failed: {exc.details()}") from None
            assert found.owner.address == lab.address(peers.owner_of(probe))


def test_a_peer_slow_for_less_than_the_acceptable_pause_keeps_its_place(lab, peers: ChordPeers):
    """Every call to one peer waits past the hop timeout for two seconds: its neighbours find
    it silent, not dead (phi accrual), and keep it instead of dropping and re-finding it."""
    nodes = peers.start_ring(EIGHT_IDS[:4], PEER_ACCEPTABLE_PAUSE_SECONDS=5)
    peers.wait_for_ring()
    slow, before = nodes[2], nodes[1]
    successor_changes = lab.scrape(before).get("distlab_chord_stabilize_total",
                                               change="successor_changed")
    lab.control(slow).AddFaultRule(control_pb2.FaultRule(
        action=control_pb2.FaultRule.DELAY, method="/distlab.chord.Chord/*", delay_seconds=0.8,
        duration_seconds=2.0), timeout=5)
    ends = time.monotonic() + 5.0
    while time.monotonic() < ends:
        assert peers.status(before)["successor"] == lab.address(slow)
        time.sleep(0.05)
    assert lab.scrape(before).get("distlab_chord_stabilize_total",
                                  change="successor_changed") == successor_changes
    assert lab.scrape(before).get("distlab_rpc_client_handled_total",
                                  method="/distlab.chord.Chord/Neighbours",
                                  peer=lab.address(slow), code="DEADLINE_EXCEEDED") >= 1
    assert peers.one_ring() is True


def test_a_ring_split_by_a_partition_is_one_ring_again_after_healing(lab, peers: ChordPeers):
    ports = free_ports(8)
    everyone = ",".join(f"127.0.0.1:{port}" for port in ports)
    nodes = [peers.start(ident, GRPC_PORT=port, CHORD_JOIN=everyone)
             for ident, port in zip(EIGHT_IDS, ports, strict=True)]
    peers.wait_for_ring()
    peers.put_all()
    halves = [nodes[0::2], nodes[1::2]]  # interleaved: every successor list spans both
    rules = {}
    for mine, theirs in (halves, halves[::-1]):
        for node in mine:
            rules[id(node)] = [lab.control(node).AddFaultRule(control_pb2.FaultRule(
                action=control_pb2.FaultRule.ERROR, direction=control_pb2.FaultRule.OUTBOUND,
                peer=lab.address(other)), timeout=5).rule_id for other in theirs]

    def two_rings() -> bool:
        states = peers.states()
        checks = [check_ring([s for s in states if s.node.id in {peers.ids[id(n)] for n in h}])
                  for h in halves]
        return all(c.ok and len(c.ordered) == 4 for c in checks)

    lab.wait_until(two_rings, what="each half a ring of its own")
    for node in nodes:
        lab.control(node).ClearFaultRules(
            control_pb2.ClearFaultRulesRequest(rule_ids=rules[id(node)]), timeout=5)
    peers.wait_for_ring()  # stabilization alone never merges them: the merge check weaves
    lab.wait_until(lambda: peers.all_readable() is True, what="every key readable after")


def _lookup_through_a_middle_peer(peers: ChordPeers):
    """An origin and a key whose lookup passes a peer that is neither end."""
    for node in peers.live():
        for key in KEYS:
            reply = peers.stub(node).Lookup(chord_pb2.LookupRequest(key=key), timeout=5)
            if reply.hops >= 1:
                middle = next(n for n in peers.live()
                              if peers.lab.address(n) == reply.path[1].address)
                return node, key, middle
    raise AssertionError("no lookup took a hop: the ring is too small")
