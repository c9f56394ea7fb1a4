"""nodes/peer/announce.py: the announce URL as BEP 3 wants it, and the peer lists trackers
send back (compact BEP 23 and the dictionary form)."""

from __future__ import annotations

import urllib.parse

from nodes.peer.announce import AnnounceQuery, announce_url, parse_peers
from nodes.peer.engine import client_name


def test_the_url_percent_encodes_raw_bytes_and_asks_for_compact_peers():
    query = AnnounceQuery(bytes(range(20)), b"-DL0001-abcdefabcdef", 6881, 1, 2, 3,
                          event="started", numwant=30)
    url = announce_url("http://tracker:6969/announce", query)
    base, _, raw = url.partition("?")
    assert base == "http://tracker:6969/announce"
    params = dict(pair.split("=") for pair in raw.split("&"))
    assert urllib.parse.unquote_to_bytes(params["info_hash"]) == bytes(range(20))
    assert params["port"] == "6881" and params["left"] == "3" and params["compact"] == "1"
    assert params["event"] == "started" and params["numwant"] == "30"
    regular = announce_url("http://t/announce?key=1", AnnounceQuery(bytes(20), bytes(20), 1, 0,
                                                                      0, 0))
    assert "?key=1&info_hash=" in regular and "event=" not in regular


def test_compact_and_dictionary_peers_are_read_and_nonsense_skipped():
    compact = bytes([10, 0, 0, 2]) + (6881).to_bytes(2, "big") + \
        bytes([10, 0, 0, 3]) + bytes(2) + b"\x01\x02"  # port 0 and a stray tail are skipped
    assert parse_peers(compact) == [("10.0.0.2", 6881)]
    listed = [{b"ip": b"10.0.0.4", b"port": 51413, b"peer id": bytes(20)},
              {b"ip": b"not an address", b"port": 1}, {b"ip": b"10.0.0.5", b"port": 70000},
              b"junk"]
    assert parse_peers(listed) == [("10.0.0.4", 51413)]
    assert parse_peers(7) == []


def test_client_names_from_azureus_style_peer_ids():
    assert client_name(b"-DL0001-abcdefabcdef") == "DL 0001"
    assert client_name(b"-qB4250-abcdefabcdef") == "qB 4250"
    assert client_name(b"M7-2-2--abcdefabcdef") == "4d372d322d322d2d"
