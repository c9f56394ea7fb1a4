"""A tracker node's UDP tracker (BEP 15) over a real socket: connect, announce, scrape, and the
same swarm as the HTTP tracker."""

from __future__ import annotations

import socket
import struct

import requests

from nodes.bittorrent.bencode import decode
from nodes.tracker.__main__ import SPEC as TRACKER_SPEC
from nodes.tracker.udp import PROTOCOL_ID

TORRENT = b"\xab" * 20


def exchange(node, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, ("127.0.0.1", node.role.udp.port))
        return sock.recvfrom(4096)[0]


def test_udp_and_http_clients_share_one_swarm(lab):
    node = lab.start("tracker-1", spec=TRACKER_SPEC, TRACKER_HTTP_PORT=0, TRACKER_UDP_PORT=0)
    http = requests.get(f"http://127.0.0.1:{node.role.http.port}/announce",
                        params={"info_hash": TORRENT, "peer_id": b"-lt2090-" + b"h" * 12,
                                "port": 6881, "left": 0, "event": "started"}, timeout=5)
    assert decode(http.content)[b"complete"] == 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        address = ("127.0.0.1", node.role.udp.port)
        sock.sendto(struct.pack(">QII", PROTOCOL_ID, 0, 1), address)
        _, _, connection_id = struct.unpack(">IIQ", sock.recvfrom(4096)[0])
        sock.sendto(struct.pack(">QII20s20sQQQIIIiH", connection_id, 1, 2, TORRENT,
                                b"-AR1370-" + b"u" * 12, 0, 100, 0, 2, 0, 0, -1, 6882), address)
        reply = sock.recvfrom(4096)[0]
        sock.sendto(struct.pack(">QII", connection_id, 2, 3) + TORRENT, address)
        scraped = sock.recvfrom(4096)[0]
    action, transaction, interval, leechers, seeders = struct.unpack_from(">IIIII", reply)
    assert (action, transaction, interval, leechers, seeders) == (1, 2, 120, 1, 1)
    assert reply[20:] == bytes([127, 0, 0, 1]) + (6881).to_bytes(2, "big")
    assert struct.unpack(">IIIII", scraped) == (2, 3, 1, 0, 1)
    refused = exchange(node, struct.pack(">QII", 1, 1, 4) + b"\x00" * 82)
    assert struct.unpack_from(">II", refused) == (3, 4) and b"connect again" in refused
    metrics = lab.scrape(node)
    assert metrics.value("distlab_tracker_announces_total", event="started") == 2
    assert metrics.value("distlab_tracker_scrapes_total") == 1
    assert metrics.value("distlab_tracker_refused_total", reason="bad_request") == 1
