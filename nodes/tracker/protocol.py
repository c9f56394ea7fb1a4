"""The HTTP tracker protocol's messages, sans-I/O: query strings in, bencoded replies out.

`parse_query` reads a raw query string the way real clients write it: raw bytes
percent-encoded in either hex case, characters left unescaped, "+" for a space (as
the reference client's urlencode wrote it), keys repeated (scrape's info_hash).
`parse_announce` checks an announce (BEP 3): info_hash and peer_id of 20 bytes, a
port, counters that are numbers, a known event, numwant capped; optional fields may
be missing, and the `ip` parameter is ignored (the connection's address is used, so
no one announces someone else). `announce_reply` answers with compact peers (BEP 23)
unless the client asks for compact=0, then the dictionary form (with peer ids unless
no_peer_id=1); `scrape_reply` is BEP 48's; `failure` is BEP 3's `failure reason`.

Every refusal is a `RequestRefused` whose `reason` is one of `REFUSAL_REASONS` (a
bounded metric label) and whose message is what the client is told.
Callers: nodes.tracker.http. No I/O.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from nodes.bittorrent.bencode import encode
from nodes.tracker.swarm import EVENTS, Announce, AnnounceReply, Endpoint, SwarmCounts

ID_BYTES = 20
MAX_COUNTER = 2**63 - 1
REFUSAL_REASONS = ("missing_field", "bad_info_hash", "bad_peer_id", "bad_port", "bad_number",
                   "unknown_event", "too_many_hashes", "full", "not_found", "bad_request")


class RequestRefused(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        assert reason in REFUSAL_REASONS, reason
        super().__init__(message)
        self.reason = reason


Query = dict[bytes, list[bytes]]


def parse_query(raw: bytes) -> Query:
    """Every key's values, in order, decoded to raw bytes."""
    query: Query = {}
    for pair in raw.split(b"&"):
        if not pair:
            continue
        key, _, value = pair.partition(b"=")
        query.setdefault(_unquote(key), []).append(_unquote(value))
    return query


def _unquote(text: bytes) -> bytes:
    return urllib.parse.unquote_to_bytes(text.replace(b"+", b" "))


@dataclass(frozen=True)
class AnnounceOptions:
    compact: bool
    no_peer_id: bool


def parse_announce(query: Query, endpoint_ip: IPv4Address, *, default_numwant: int,
                   max_numwant: int) -> tuple[Announce, AnnounceOptions]:
    info_hash = _id(query, b"info_hash", "bad_info_hash")
    peer_id = _id(query, b"peer_id", "bad_peer_id")
    port_text = _first(query, b"port")
    if port_text is None:
        raise RequestRefused("missing_field", "port is missing")
    port = _integer(port_text, "port", "bad_port")
    if not 1 <= port <= 65535:
        raise RequestRefused("bad_port", f"port {port} is not between 1 and 65535")
    event = (_first(query, b"event") or b"").decode("latin-1")
    if event == "empty":  # BEP 3's wording ("or empty") taken literally by some clients
        event = ""
    if event not in EVENTS:
        raise RequestRefused("unknown_event", f"unknown event {event[:20]!r}; expected "
                             f"started, completed, stopped, paused or none")
    numwant_text = _first(query, b"numwant")
    numwant = default_numwant
    if numwant_text:
        asked = _integer(numwant_text, "numwant", "bad_number", signed=True)
        numwant = default_numwant if asked < 0 else min(asked, max_numwant)  # -1: "default"
    left_text = _first(query, b"left")
    announce = Announce(
        info_hash=info_hash, peer_id=peer_id, endpoint=Endpoint(endpoint_ip, port),
        uploaded=_counter(query, b"uploaded"), downloaded=_counter(query, b"downloaded"),
        left=None if not left_text else _integer(left_text, "left", "bad_number"),
        event=event, numwant=numwant)
    options = AnnounceOptions(compact=_first(query, b"compact") != b"0",
                              no_peer_id=_first(query, b"no_peer_id") == b"1")
    return announce, options


def parse_scrape(query: Query, *, max_hashes: int) -> list[bytes]:
    """The info_hashes asked for ([] asks for every swarm)."""
    hashes = query.get(b"info_hash", [])
    if len(hashes) > max_hashes:
        raise RequestRefused("too_many_hashes", f"{len(hashes)} info_hash values; at most "
                             f"{max_hashes} per scrape")
    for info_hash in hashes:
        if len(info_hash) != ID_BYTES:
            raise RequestRefused("bad_info_hash", f"an info_hash is {len(info_hash)} bytes, "
                                 f"not {ID_BYTES}")
    return hashes


def announce_reply(reply: AnnounceReply, options: AnnounceOptions, *, interval: int,
                   min_interval: int) -> bytes:
    if options.compact:
        peers: bytes | list = b"".join(peer.endpoint.compact() for peer in reply.peers)
    else:
        peers = [{"ip": str(peer.endpoint.ip), "port": peer.endpoint.port,
                  **({} if options.no_peer_id else {"peer id": peer.peer_id})}
                 for peer in reply.peers]
    return encode({"interval": interval, "min interval": min_interval,
                   "complete": reply.counts.complete, "incomplete": reply.counts.incomplete,
                   "downloaded": reply.counts.downloaded, "peers": peers})


def scrape_reply(counts: Sequence[SwarmCounts], *, min_interval: int) -> bytes:
    return encode({"files": {swarm.info_hash: {"complete": swarm.complete,
                                                "downloaded": swarm.downloaded,
                                                "incomplete": swarm.incomplete}
                             for swarm in counts},
                   "flags": {"min_request_interval": min_interval}})


def failure(message: str) -> bytes:
    return encode({"failure reason": message})


def _first(query: Query, key: bytes) -> bytes | None:
    values = query.get(key)
    return values[0] if values else None


def _id(query: Query, key: bytes, reason: str) -> bytes:
    value = _first(query, key)
    name = key.decode()
    if value is None:
        raise RequestRefused("missing_field", f"{name} is missing")
    if len(value) != ID_BYTES:
        raise RequestRefused(reason, f"{name} is {len(value)} bytes, not {ID_BYTES} "
                             f"(percent-encode the raw bytes)")
    return value


def _integer(text: bytes, name: str, reason: str, *, signed: bool = False) -> int:
    digits = text[1:] if signed and text.startswith(b"-") else text
    if not digits.isdigit() or len(digits) > 19:
        raise RequestRefused(reason, f"{name} {text[:24]!r} is not a "
                             f"{'' if signed else 'non-negative '}integer")
    value = int(text)
    if value > MAX_COUNTER:
        raise RequestRefused(reason, f"{name} is larger than {MAX_COUNTER}")
    return value


def _counter(query: Query, key: bytes) -> int:
    text = _first(query, key)
    return _integer(text, key.decode(), "bad_number") if text else 0
