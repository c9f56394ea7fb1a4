"""nodes/tracker/protocol.py: query strings as real clients write them, announces checked,
replies in the compact and dictionary forms, scrape and failure bodies."""

from __future__ import annotations

import urllib.parse
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.bittorrent.bencode import decode
from nodes.tracker.protocol import (
    AnnounceOptions,
    RequestRefused,
    announce_reply,
    failure,
    parse_announce,
    parse_query,
    parse_scrape,
    scrape_reply,
)
from nodes.tracker.swarm import AnnounceReply, Endpoint, Peer, SwarmCounts

INFO_HASH = bytes.fromhex("123456789abcdef123456789abcdef123456789a")
PEER_ID = b"-lt2090-" + bytes(range(200, 212))
IP = IPv4Address("172.20.0.5")


def query(**fields: str) -> bytes:
    base = {"info_hash": "%12%34%56%78%9a%bc%de%f1%23%45%67%89%ab%cd%ef%12%34%56%78%9a",
            "peer_id": "-lt2090-" + "".join(f"%{b:02X}" for b in range(200, 212)),
            "port": "6881", "uploaded": "0", "downloaded": "0", "left": "1000"}
    base.update(fields)
    return "&".join(f"{key}={value}" for key, value in base.items()
                    if value is not None).encode()


def announce(raw: bytes, **limits: int):
    return parse_announce(parse_query(raw), IP, default_numwant=limits.get("default", 50),
                          max_numwant=limits.get("max", 200))


def test_percent_escapes_in_either_case_and_unescaped_characters_give_the_same_bytes():
    lower = "".join(f"%{b:02x}" for b in INFO_HASH)
    upper = "".join(f"%{b:02X}" for b in INFO_HASH)
    # What libtorrent sends: unreserved characters left as they are.
    mixed = urllib.parse.quote_from_bytes(INFO_HASH, safe="-_.~")
    for text in (lower, upper, mixed):
        assert parse_query(f"info_hash={text}".encode())[b"info_hash"] == [INFO_HASH]


def test_plus_is_a_space_as_the_reference_client_encoded_it():
    raw = b"\x20" + b"\x2b" * 19
    encoded = urllib.parse.urlencode({"info_hash": raw}).encode()
    assert encoded.startswith(b"info_hash=+%2B")  # quote_plus: a space is "+", "+" is %2B
    assert parse_query(encoded)[b"info_hash"] == [raw]


def test_raw_bytes_left_unescaped_survive():
    assert parse_query(b"info_hash=\xff\x00a&x")[b"info_hash"] == [b"\xff\x00a"]
    assert parse_query(b"x")[b"x"] == [b""]


def test_a_full_announce_is_read():
    request, options = announce(query(event="started", numwant="30", key="abc", compact="1",
                                      uploaded="5", downloaded="7"))
    assert (request.info_hash, request.peer_id) == (INFO_HASH, PEER_ID)
    assert request.endpoint == Endpoint(IP, 6881)
    assert (request.uploaded, request.downloaded, request.left) == (5, 7, 1000)
    assert (request.event, request.numwant) == ("started", 30)
    assert options == AnnounceOptions(compact=True, no_peer_id=False)


def test_optional_fields_may_be_missing():
    request, options = announce(query(uploaded=None, downloaded=None, left=None))
    assert (request.uploaded, request.downloaded, request.left, request.event) == (0, 0, None, "")
    assert request.numwant == 50 and options.compact


def test_the_ip_parameter_is_ignored():
    request, _ = announce(query(ip="6.6.6.6"))
    assert request.endpoint.ip == IP
    request, _ = announce(query(ip="not even an address"))
    assert request.endpoint.ip == IP


@pytest.mark.parametrize("numwant, expected", [("10", 10), ("0", 0), ("-1", 50),
                                               ("100000000", 200), ("", 50)])
def test_numwant_is_capped_and_negative_means_the_default(numwant, expected):
    assert announce(query(numwant=numwant))[0].numwant == expected


def test_compact_zero_asks_for_dictionaries_and_no_peer_id_drops_ids():
    assert announce(query(compact="0"))[1] == AnnounceOptions(False, False)
    assert announce(query(compact="0", no_peer_id="1"))[1] == AnnounceOptions(False, True)


@pytest.mark.parametrize("fields, reason, fragment", [
    ({"info_hash": None}, "missing_field", "info_hash is missing"),
    ({"info_hash": "abc"}, "bad_info_hash", "info_hash is 3 bytes, not 20"),
    ({"info_hash": "%12" * 21}, "bad_info_hash", "21 bytes"),
    ({"peer_id": None}, "missing_field", "peer_id is missing"),
    ({"peer_id": "short"}, "bad_peer_id", "peer_id is 5 bytes"),
    ({"port": None}, "missing_field", "port is missing"),
    ({"port": "0"}, "bad_port", "not between 1 and 65535"),
    ({"port": "65536"}, "bad_port", "not between 1 and 65535"),
    ({"port": "-1"}, "bad_port", "not a non-negative integer"),
    ({"port": "http"}, "bad_port", "not a non-negative integer"),
    ({"left": "-5"}, "bad_number", "left"),
    ({"uploaded": "1e9"}, "bad_number", "uploaded"),
    ({"downloaded": "9" * 30}, "bad_number", "downloaded"),
    ({"uploaded": "9223372036854775808"}, "bad_number", "larger than"),
    ({"numwant": "lots"}, "bad_number", "numwant"),
    ({"event": "finished"}, "unknown_event", "unknown event 'finished'"),
])
def test_bad_announces_are_refused_with_a_reason(fields, reason, fragment):
    with pytest.raises(RequestRefused, match=fragment) as refused:
        announce(query(**fields))
    assert refused.value.reason == reason


def test_every_known_event_is_accepted():
    for event in ("started", "completed", "stopped", "paused", ""):
        assert announce(query(event=event))[0].event == event
    assert announce(query(event="empty"))[0].event == ""


def reply_with(*peers: Peer) -> AnnounceReply:
    return AnnounceReply(peers, SwarmCounts(INFO_HASH, 3, 4, 5), 0, False)


def a_peer(ip: str, port: int, peer_id: bytes = PEER_ID) -> Peer:
    return Peer(peer_id, Endpoint(IPv4Address(ip), port), 0, 0, 10, 0.0)


def test_compact_replies_pack_six_bytes_per_peer():
    body = decode(announce_reply(reply_with(a_peer("10.0.0.1", 6881), a_peer("1.2.3.4", 256)),
                                 AnnounceOptions(True, False), interval=120, min_interval=30))
    assert body == {b"interval": 120, b"min interval": 30, b"complete": 3, b"incomplete": 4,
                    b"downloaded": 5,
                    b"peers": b"\x0a\x00\x00\x01\x1a\xe1" + b"\x01\x02\x03\x04\x01\x00"}


def test_dictionary_replies_with_and_without_peer_ids():
    peers = (a_peer("10.0.0.1", 6881),)
    full = decode(announce_reply(reply_with(*peers), AnnounceOptions(False, False),
                                 interval=120, min_interval=30))
    assert full[b"peers"] == [{b"ip": b"10.0.0.1", b"peer id": PEER_ID, b"port": 6881}]
    bare = decode(announce_reply(reply_with(*peers), AnnounceOptions(False, True),
                                 interval=120, min_interval=30))
    assert bare[b"peers"] == [{b"ip": b"10.0.0.1", b"port": 6881}]


def test_scrape_reads_many_hashes_and_answers_bep48():
    raw = b"info_hash=" + b"%41" * 20 + b"&info_hash=" + b"B" * 20
    assert parse_scrape(parse_query(raw), max_hashes=5) == [b"A" * 20, b"B" * 20]
    assert parse_scrape(parse_query(b""), max_hashes=5) == []
    with pytest.raises(RequestRefused, match="at most 1 per scrape"):
        parse_scrape(parse_query(raw), max_hashes=1)
    with pytest.raises(RequestRefused, match="4 bytes"):
        parse_scrape(parse_query(b"info_hash=abcd"), max_hashes=5)
    body = decode(scrape_reply([SwarmCounts(b"A" * 20, 1, 2, 3)], min_interval=30))
    assert body == {b"files": {b"A" * 20: {b"complete": 1, b"downloaded": 3,
                                           b"incomplete": 2}},
                    b"flags": {b"min_request_interval": 30}}


def test_failures_are_bencoded_reasons():
    assert decode(failure("no")) == {b"failure reason": b"no"}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_query_is_read_or_refused_never_crashes(raw):
    try:
        announce(raw)
    except RequestRefused:
        pass
    try:
        parse_scrape(parse_query(raw), max_hashes=10)
    except RequestRefused:
        pass
