"""The peer's side of the HTTP tracker protocol (BEP 3 announce, BEP 23 compact peers).

`announce(url, query, timeout)` sends one GET and returns the tracker's `Reply`
(interval and peers) or raises `AnnounceError` (unreachable, HTTP error, failure
reason, undecodable reply). Blocking: the adapter (nodes.peer.engine) runs it in
a thread so the event loop keeps trading while a tracker is slow or down.
"""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from nodes.bittorrent.bencode import BencodeError, decode

MAX_REPLY_BYTES = 1024 * 1024  # 200 peers in the dictionary form fit many times over


class AnnounceError(Exception):
    """The announce did not give us peers; the message says why."""


@dataclass(frozen=True)
class AnnounceQuery:
    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str = ""  # started | completed | stopped | "" (a regular announce)
    numwant: int = 50


@dataclass(frozen=True)
class Reply:
    interval: float
    peers: list[tuple[str, int]]


def announce_url(base: str, query: AnnounceQuery) -> str:
    params = [("info_hash", urllib.parse.quote_from_bytes(query.info_hash, safe="")),
              ("peer_id", urllib.parse.quote_from_bytes(query.peer_id, safe="")),
              ("port", str(query.port)), ("uploaded", str(query.uploaded)),
              ("downloaded", str(query.downloaded)), ("left", str(query.left)),
              ("compact", "1"), ("numwant", str(query.numwant))]
    if query.event:
        params.append(("event", query.event))
    separator = "&" if "?" in base else "?"
    return base + separator + "&".join(f"{key}={value}" for key, value in params)


def announce(base: str, query: AnnounceQuery, timeout: float) -> Reply:
    url = announce_url(base, query)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(MAX_REPLY_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise AnnounceError(f"cannot reach the tracker at {base}: {exc}") from None
    if len(body) > MAX_REPLY_BYTES:
        raise AnnounceError(f"the tracker's reply is over {MAX_REPLY_BYTES} bytes")
    try:
        reply = decode(body)
    except BencodeError as exc:
        raise AnnounceError(f"the tracker's reply is not bencoded: {exc}") from None
    if not isinstance(reply, dict):
        raise AnnounceError("the tracker's reply is not a dictionary")
    if b"failure reason" in reply:
        reason = reply[b"failure reason"]
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise AnnounceError(f"the tracker refused: {text}")
    interval = reply.get(b"interval", 120)
    if not isinstance(interval, int) or interval <= 0:
        interval = 120
    return Reply(float(interval), parse_peers(reply.get(b"peers", b"")))


def parse_peers(peers: object) -> list[tuple[str, int]]:
    """Compact (6 bytes a peer) or the dictionary form; entries that make no sense skipped."""
    found: list[tuple[str, int]] = []
    if isinstance(peers, bytes):
        for offset in range(0, len(peers) - len(peers) % 6, 6):
            ip = str(ipaddress.IPv4Address(peers[offset:offset + 4]))
            port = int.from_bytes(peers[offset + 4:offset + 6], "big")
            if port:
                found.append((ip, port))
    elif isinstance(peers, list):
        for entry in peers:
            if not isinstance(entry, dict):
                continue
            ip, port = entry.get(b"ip"), entry.get(b"port")
            if isinstance(ip, bytes) and isinstance(port, int) and 0 < port < 65536:
                try:
                    found.append((str(ipaddress.ip_address(ip.decode())), port))
                except ValueError:
                    continue
    return found
