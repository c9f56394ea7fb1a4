"""nodes/tracker/udp.py: BEP 15 packets against the swarm core: connect, announce, scrape,
connection ids that expire, and malformed datagrams answered with an error or dropped."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.tracker.http import TrackerPolicy
from nodes.tracker.swarm import Tracker
from nodes.tracker.udp import PROTOCOL_ID, UDPTrackerProtocol

TORRENT = b"T" * 20
IP = IPv4Address("10.0.0.9")
POLICY = TrackerPolicy(interval=120, min_interval=30, default_numwant=50, max_numwant=200,
                       max_scrape_hashes=3)


@pytest.fixture
def udp(clock):
    tracker = Tracker(peer_timeout=360, clock=clock, rng=random.Random(1))
    return UDPTrackerProtocol(tracker, POLICY, clock=clock, secret=b"s" * 32)


def connect(udp, port=6881) -> int:
    reply, outcome = udp.handle(struct.pack(">QII", PROTOCOL_ID, 0, 77), IP, port)
    action, transaction, connection_id = struct.unpack(">IIQ", reply)
    assert (action, transaction, outcome.action) == (0, 77, "connect")
    return connection_id


def announce_packet(connection_id, *, peer=1, event=2, left=100, numwant=-1,
                    info_hash=TORRENT, extra=b"") -> bytes:
    return struct.pack(">QII20s20sQQQIIIiH", connection_id, 1, 5, info_hash,
                       b"-DL0001-%012d" % peer, 0, left, 0, event, 0, 0, numwant,
                       6880 + peer) + extra


def test_connect_then_announce_gives_compact_peers(udp):
    for peer in (1, 2):
        connection_id = connect(udp, port=40000 + peer)
        reply, outcome = udp.handle(announce_packet(connection_id, peer=peer), IP,
                                    40000 + peer)
    action, transaction, interval, leechers, seeders = struct.unpack_from(">IIIII", reply)
    assert (action, transaction, interval, leechers, seeders) == (1, 5, 120, 2, 0)
    assert reply[20:] == IP.packed + (6881).to_bytes(2, "big")
    assert (outcome.action, outcome.event) == ("announce", "started")


def test_bep41_options_after_an_announce_are_ignored(udp):
    connection_id = connect(udp)
    reply, _ = udp.handle(announce_packet(connection_id, extra=b"\x02\x05/anno"), IP, 6881)
    assert struct.unpack_from(">I", reply)[0] == 1


def test_completed_and_scrape(udp):
    connection_id = connect(udp)
    udp.handle(announce_packet(connection_id, event=2), IP, 6881)
    _, outcome = udp.handle(announce_packet(connection_id, event=1, left=0), IP, 6881)
    assert outcome.completed_now
    packet = struct.pack(">QII", connection_id, 2, 9) + TORRENT + b"U" * 20
    reply, outcome = udp.handle(packet, IP, 6881)
    assert struct.unpack(">II" + "III" * 2, reply) == (2, 9, 1, 1, 0, 0, 0, 0)
    assert outcome.action == "scrape"


def test_connection_ids_are_per_address_and_expire(udp, clock):
    connection_id = connect(udp)
    other_port = udp.handle(announce_packet(connection_id), IP, 6882)
    assert other_port[1].refused == "bad_request"
    clock.now += 90  # within the two minutes BEP 15 allows
    assert udp.handle(announce_packet(connection_id), IP, 6881)[1].action == "announce"
    clock.now += 90
    reply, outcome = udp.handle(announce_packet(connection_id), IP, 6881)
    assert struct.unpack_from(">II", reply) == (3, 5) and b"connect again" in reply[8:]
    assert outcome.action == "error"


@pytest.mark.parametrize("packet, fragment, reason", [
    (struct.pack(">QII", 123, 0, 1), b"protocol id", "bad_request"),
    (struct.pack(">QII", PROTOCOL_ID, 7, 1), b"unknown action 7", "bad_request"),
])
def test_bad_headers_get_an_error_packet(udp, packet, fragment, reason):
    reply, outcome = udp.handle(packet, IP, 6881)
    assert struct.unpack_from(">I", reply)[0] == 3 and fragment in reply
    assert outcome.refused == reason


def test_bad_announces_and_scrapes_get_an_error_packet(udp):
    connection_id = connect(udp)
    cases = [(announce_packet(connection_id)[:90], b"announce of 90 bytes", "bad_request"),
             (announce_packet(connection_id, event=9), b"unknown event 9", "unknown_event"),
             (announce_packet(connection_id)[:-2] + b"\x00\x00", b"port 0", "bad_port"),
             (struct.pack(">QII", connection_id, 2, 1), b"not 0 bytes", "bad_info_hash"),
             (struct.pack(">QII", connection_id, 2, 1) + b"x" * 21, b"not 21", "bad_info_hash"),
             (struct.pack(">QII", connection_id, 2, 1) + b"x" * 80, b"4 info hashes; at most 3",
              "too_many_hashes")]
    for packet, fragment, reason in cases:
        reply, outcome = udp.handle(packet, IP, 6881)
        assert struct.unpack_from(">I", reply)[0] == 3 and fragment in reply, reply
        assert outcome.refused == reason


def test_short_datagrams_are_dropped(udp):
    reply, outcome = udp.handle(b"\x00" * 15, IP, 6881)
    assert reply is None and outcome.action == "dropped"


def test_numwant_is_capped(udp):
    for peer in range(1, 6):
        connection_id = connect(udp, port=6880 + peer)
        udp.handle(announce_packet(connection_id, peer=peer), IP, 6880 + peer)
    connection_id = connect(udp, port=6886)
    reply, _ = udp.handle(announce_packet(connection_id, peer=6, numwant=2), IP, 6886)
    assert len(reply) == 20 + 2 * 6


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_datagram_is_answered_or_dropped_never_crashes(data):
    tracker = Tracker(peer_timeout=360)
    udp = UDPTrackerProtocol(tracker, POLICY, secret=b"s" * 32)
    connection_id = udp.connection_id(IP, 6881)
    for packet in (data, struct.pack(">Q", connection_id) + data[8:]):
        udp.handle(packet, IP, 6881)
