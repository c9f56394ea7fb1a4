"""A tracker node over real sockets: announce and scrape over HTTP as clients send them (the
requests library, and hand-written HTTP/1.0), the gRPC status service, metrics, expiry and
the HTTP server's bounds."""

from __future__ import annotations

import socket
import time

import grpc
import pytest
import requests
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nodes.bittorrent.bencode import decode
from nodes.rpc import control_pb2, tracker_pb2, tracker_pb2_grpc
from nodes.tracker.__main__ import SPEC as TRACKER_SPEC

TORRENT = bytes.fromhex("123456789abcdef123456789abcdef123456789a")
SPACEY = b" +&=%" + bytes(range(250, 256)) + b"\x00" * 9  # bytes that need escaping


def start_tracker(lab, name="tracker-1", **env):
    return lab.start(name, spec=TRACKER_SPEC, TRACKER_HTTP_PORT=0, TRACKER_UDP_PORT=0, **env)


@pytest.fixture
def tracker(lab):
    return start_tracker(lab)


@pytest.fixture(scope="module")
def shared_tracker(shared_lab):
    """One tracker for a module's tests that only send what it refuses."""
    return start_tracker(shared_lab, "tracker-shared")


def base_url(node) -> str:
    return f"http://127.0.0.1:{node.role.http.port}"


def announce(node, *, peer: int, info_hash: bytes = TORRENT, **params) -> dict:
    query = {"info_hash": info_hash, "peer_id": b"-DL0001-%012d" % peer, "port": 6880 + peer,
             "uploaded": 0, "downloaded": 0, "left": 1000, **params}
    reply = requests.get(f"{base_url(node)}/announce", params=query, timeout=5)
    assert reply.status_code == 200
    return decode(reply.content)


def compact_ports(peers: bytes) -> set[int]:
    assert len(peers) % 6 == 0
    return {int.from_bytes(peers[i + 4:i + 6], "big") for i in range(0, len(peers), 6)}


def raw_request(node, request: bytes) -> bytes:
    """Send bytes as they are and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", node.role.http.port), timeout=5) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_peers_find_each_other_through_announces(tracker):
    first = announce(tracker, peer=1, event="started")
    assert first[b"peers"] == b"" and first[b"interval"] == 120 and first[b"min interval"] == 30
    second = announce(tracker, peer=2, event="started")
    assert compact_ports(second[b"peers"]) == {6881}
    assert second[b"peers"][:4] == bytes([127, 0, 0, 1])
    assert (second[b"complete"], second[b"incomplete"]) == (0, 2)
    seeder = announce(tracker, peer=3, left=0, event="started", compact=0)
    assert sorted(p[b"port"] for p in seeder[b"peers"]) == [6881, 6882]
    assert {p[b"peer id"] for p in seeder[b"peers"]} == {b"-DL0001-000000000001",
                                                         b"-DL0001-000000000002"}
    bare = announce(tracker, peer=3, left=0, compact=0, no_peer_id=1)
    assert all(set(p) == {b"ip", b"port"} for p in bare[b"peers"])


def test_escaped_bytes_and_plus_signs_from_the_requests_library(tracker):
    announce(tracker, peer=1, info_hash=SPACEY, event="started")  # requests writes " " as "+"
    reply = requests.get(f"{base_url(tracker)}/scrape", params={"info_hash": SPACEY},
                         timeout=5)
    assert decode(reply.content)[b"files"][SPACEY][b"incomplete"] == 1


def test_a_hand_written_http_10_announce_with_both_escape_cases(tracker):
    lower = "".join(f"%{b:02x}" for b in TORRENT)
    upper = "".join(f"%{b:02X}" for b in TORRENT)
    for n, escaped in ((1, lower), (2, upper)):
        request = (f"GET /announce?info_hash={escaped}&peer_id=-AR1370-{n:012d}&port=688{n}"
                   f"&left=10&event=started HTTP/1.0\r\n\r\n").encode()
        response = raw_request(tracker, request)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200"), head
        assert b"Content-Length: %d" % len(body) in head
    assert compact_ports(decode(body)[b"peers"]) == {6881}


def test_raw_bytes_left_unescaped_in_the_request_line(tracker):
    # TORRENT is b"\x124Vx\x9a...": printable bytes sent as they are, the others raw.
    request = (b"GET /announce?info_hash=" + TORRENT.replace(b"#", b"%23") +
               b"&peer_id=-TR3000-abcdefghijkl&port=51413 HTTP/1.1\r\nHost: x\r\n\r\n")
    body = raw_request(tracker, request).partition(b"\r\n\r\n")[2]
    assert decode(body)[b"incomplete"] == 1


def test_stopped_before_started_and_completed_are_handled(tracker):
    stopped = announce(tracker, peer=1, event="stopped")
    assert stopped[b"peers"] == b"" and stopped[b"incomplete"] == 0
    announce(tracker, peer=1, event="started")
    done = announce(tracker, peer=1, left=0, event="completed")
    assert (done[b"complete"], done[b"incomplete"], done[b"downloaded"]) == (1, 0, 1)
    announce(tracker, peer=1, event="stopped")
    assert announce(tracker, peer=2)[b"peers"] == b""


def test_scrape_several_torrents_and_all(tracker):
    other = b"\x01" * 20
    announce(tracker, peer=1, event="started")
    announce(tracker, peer=2, left=0, event="started")
    announce(tracker, peer=3, info_hash=other, event="started")
    reply = requests.get(f"{base_url(tracker)}/scrape",
                         params=[("info_hash", TORRENT), ("info_hash", other),
                                 ("info_hash", b"\x02" * 20)], timeout=5)
    files = decode(reply.content)[b"files"]
    assert files[TORRENT] == {b"complete": 1, b"downloaded": 0, b"incomplete": 1}
    assert files[other][b"incomplete"] == 1
    assert files[b"\x02" * 20] == {b"complete": 0, b"downloaded": 0, b"incomplete": 0}
    everything = decode(requests.get(f"{base_url(tracker)}/scrape", timeout=5).content)
    assert set(everything[b"files"]) == {TORRENT, other}


@pytest.mark.parametrize("query, fragment", [
    ("peer_id=-DL0001-000000000001&port=6881", b"info_hash is missing"),
    ("info_hash=abc&peer_id=-DL0001-000000000001&port=6881", b"info_hash is 3 bytes"),
    ("info_hash=" + "%41" * 20 + "&peer_id=short&port=6881", b"peer_id is 5 bytes"),
    ("info_hash=" + "%41" * 20 + "&peer_id=-DL0001-000000000001&port=99999", b"port 99999"),
    ("info_hash=" + "%41" * 20 + "&peer_id=-DL0001-000000000001&port=1&event=done",
     b"unknown event"),
    ("info_hash=" + "%41" * 20 + "&peer_id=-DL0001-000000000001&port=1&left=x", b"left"),
])
def test_bad_announces_get_a_failure_reason(shared_tracker, query, fragment):
    reply = requests.get(f"{base_url(shared_tracker)}/announce?{query}", timeout=5)
    assert reply.status_code == 200
    assert fragment in decode(reply.content)[b"failure reason"]


def test_huge_numwant_is_capped(lab):
    node = start_tracker(lab, TRACKER_DEFAULT_NUMWANT=2, TRACKER_MAX_NUMWANT=3)
    for n in range(1, 8):
        announce(node, peer=n, event="started")
    assert len(announce(node, peer=1, numwant=10**12)[b"peers"]) == 3 * 6
    assert len(announce(node, peer=1)[b"peers"]) == 2 * 6


def test_other_paths_methods_and_oversized_requests(tracker):
    missing = requests.get(f"{base_url(tracker)}/", timeout=5)
    assert missing.status_code == 404 and b"/announce and /scrape" in missing.content
    posted = requests.post(f"{base_url(tracker)}/announce", data=b"x", timeout=5)
    assert posted.status_code == 405
    long = raw_request(tracker, b"GET /announce?" + b"a" * 20_000 + b" HTTP/1.0\r\n\r\n")
    assert long.startswith(b"HTTP/1.0 414")
    assert b"400" in raw_request(tracker, b"garbage\r\n\r\n")  # HTTP/0.9 style: no headers
    assert raw_request(tracker, b"BREW /announce HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 501")
    assert announce(tracker, peer=1)[b"incomplete"] == 1  # still serving


def test_connections_are_bounded_and_idle_ones_closed(lab):
    node = start_tracker(lab, TRACKER_HTTP_MAX_CONNECTIONS=1, TRACKER_HTTP_TIMEOUT_SECONDS=1)
    idle = socket.create_connection(("127.0.0.1", node.role.http.port), timeout=5)
    try:
        lab.wait_until(lambda: node.role.http._in_flight == 1, what="the idle connection held")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base_url(node)}/scrape", timeout=5)
        assert idle.recv(1) == b""  # the server closed it after TRACKER_HTTP_TIMEOUT_SECONDS
    finally:
        idle.close()
    lab.wait_until(lambda: node.role.http._in_flight == 0, what="the slot freed")
    assert requests.get(f"{base_url(node)}/scrape", timeout=5).status_code == 200


def test_peers_that_miss_their_announces_are_forgotten(lab):
    node = start_tracker(lab, TRACKER_INTERVAL_SECONDS=1, TRACKER_MIN_INTERVAL_SECONDS=1,
                         TRACKER_MISSED_ANNOUNCES=1)
    announce(node, peer=1, event="started")
    announce(node, peer=2, event="started")
    started = time.monotonic()
    while time.monotonic() - started < 3:  # peer 2 keeps announcing; peer 1 went silent
        announce(node, peer=2)
        time.sleep(0.3)
    assert announce(node, peer=2)[b"incomplete"] == 1
    lab.wait_until(lambda: lab.scrape(node).get("distlab_tracker_expired_peers_total") >= 1,
                   what="the expiry counted")


def test_grpc_status_is_open_and_read_only(lab, tracker):
    announce(tracker, peer=1, event="started")
    announce(tracker, peer=2, left=0, event="completed")
    stub = tracker_pb2_grpc.TrackerStub(lab.bare_channel(tracker))  # no credential
    swarms = stub.Swarms(tracker_pb2.SwarmsRequest(), timeout=5)
    assert [(s.info_hash, s.seeders, s.leechers, s.completed) for s in swarms.swarms] == [
        (TORRENT.hex(), 1, 1, 1)]
    assert swarms.http_port == tracker.role.http.port and swarms.interval_seconds == 120
    assert swarms.udp_port == tracker.role.udp.port
    peers = stub.Peers(tracker_pb2.PeersRequest(info_hash=TORRENT.hex()), timeout=5).peers
    assert [(p.peer_id, p.ip, p.port, p.seeder, p.left) for p in peers] == [
        (b"-DL0001-000000000001", "127.0.0.1", 6881, False, 1000),
        (b"-DL0001-000000000002", "127.0.0.1", 6882, True, 0)]
    assert all(0 <= p.seconds_since_announce < 60 for p in peers)
    limited = stub.Peers(tracker_pb2.PeersRequest(info_hash=TORRENT.hex(), limit=1), timeout=5)
    assert len(limited.peers) == 1 and limited.truncated
    for request, code in ((tracker_pb2.PeersRequest(info_hash="xyz"), "INVALID_ARGUMENT"),
                          (tracker_pb2.PeersRequest(info_hash="00" * 20), "NOT_FOUND"),
                          (tracker_pb2.PeersRequest(info_hash=TORRENT.hex(), limit=5000),
                           "INVALID_ARGUMENT")):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Peers(request, timeout=5)
        assert refused.value.code().name == code and refused.value.details()
    status = lab.control(tracker).Status(control_pb2.StatusRequest(), timeout=5).state
    assert dict(status) == {"swarms": "1", "seeders": "1", "leechers": "1",
                            "http_port": str(tracker.role.http.port),
                            "udp_port": str(tracker.role.udp.port)}


def test_reflection_lists_the_tracker_service(lab, tracker):
    stub = reflection_pb2_grpc.ServerReflectionStub(lab.bare_channel(tracker))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {service.name for service in reply.list_services_response.service}
    assert {"distlab.tracker.Tracker", "distlab.control.Control"} <= names


def test_metrics_count_swarms_peers_announces_and_refusals(lab, tracker):
    announce(tracker, peer=1, event="started")
    announce(tracker, peer=2, event="started")
    announce(tracker, peer=2, left=0, event="completed")
    announce(tracker, peer=1)
    requests.get(f"{base_url(tracker)}/announce?info_hash=x", timeout=5)
    # The tracker times a request once its answer is written: the last one may be counted
    # a moment after the client has read it.
    lab.wait_until(lambda: lab.scrape(tracker).value(
        "distlab_tracker_request_seconds_count", path="announce") == 5,
        what="all five announces timed")
    metrics = lab.scrape(tracker)
    assert metrics.value("distlab_tracker_swarms") == 1
    assert metrics.value("distlab_tracker_peers", state="seeder") == 1
    assert metrics.value("distlab_tracker_peers", state="leecher") == 1
    assert metrics.value("distlab_tracker_announces_total", event="started") == 2
    assert metrics.value("distlab_tracker_announces_total", event="completed") == 1
    assert metrics.value("distlab_tracker_announces_total", event="update") == 1
    assert metrics.value("distlab_tracker_announces_total", event="stopped") == 0
    assert metrics.value("distlab_tracker_completed_total") == 1
    assert metrics.value("distlab_tracker_refused_total", reason="bad_info_hash") == 1
    assert metrics.value("distlab_tracker_request_seconds_count", path="announce") == 5
