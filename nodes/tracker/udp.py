"""The UDP tracker protocol (BEP 15): packets in, packets out, around the same swarm core.

`UDPTrackerProtocol.handle(packet, ip, port)` answers one datagram: connect (a
connection id), announce (interval, leechers, seeders, compact peers), scrape (seeders,
completed, leechers per infohash) or an error packet naming what was wrong. Connection
ids are not stored: each is a keyed hash of the client's address and the current minute,
accepted for two minutes as BEP 15 says, so a flood of connects costs no memory and a
spoofed source address cannot announce (it never sees the id). Datagrams too short to
hold a transaction id are dropped unanswered. BEP 41's options after an announce are
ignored. `UDPTrackerServer` is the thin socket loop around it.

Callers: nodes.tracker.service. The protocol does no I/O (clock and secret injected);
the server touches only its socket.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socketserver
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from nodes.common.logs import EventLog
from nodes.tracker.http import ANNOUNCE_EVENTS, TrackerMetrics, TrackerPolicy
from nodes.tracker.swarm import Announce, Endpoint, Tracker, TrackerFull

PROTOCOL_ID = 0x41727101980
CONNECT, ANNOUNCE, SCRAPE, ERROR = 0, 1, 2, 3
UDP_EVENTS = {0: "", 1: "completed", 2: "started", 3: "stopped"}
CONNECTION_ID_SECONDS = 60  # a minute per id; the previous minute's is still accepted
ANNOUNCE_BYTES = 98
MAX_DATAGRAM = 2048  # a scrape of 74 hashes, the most a 1500-byte reply can answer, is 1496

_HEADER = struct.Struct(">QII")  # connection id, action, transaction id
_ANNOUNCE = struct.Struct(">20s20sQQQIIIiH")  # after the header, up to the port


@dataclass(frozen=True)
class UDPOutcome:
    """What one datagram did, for metrics and logs."""

    action: str  # connect, announce, scrape, error, dropped
    event: str = ""  # the announce's event
    refused: str = ""  # the refusal reason (REFUSAL_REASONS), when refused
    completed_now: bool = False
    expired: int = 0


class UDPTrackerProtocol:
    def __init__(self, tracker: Tracker, policy: TrackerPolicy, *,
                 clock: Callable[[], float] = time.time, secret: bytes | None = None) -> None:
        self.tracker = tracker
        self.policy = policy
        self._clock = clock
        self._secret = secret or secrets.token_bytes(32)

    def connection_id(self, ip: IPv4Address, port: int, minute: int | None = None) -> int:
        minute = int(self._clock() // CONNECTION_ID_SECONDS) if minute is None else minute
        message = ip.packed + port.to_bytes(2, "big") + minute.to_bytes(8, "big")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big")

    def _valid(self, connection_id: int, ip: IPv4Address, port: int) -> bool:
        minute = int(self._clock() // CONNECTION_ID_SECONDS)
        return any(hmac.compare_digest(connection_id.to_bytes(8, "big"),
                                       self.connection_id(ip, port, m).to_bytes(8, "big"))
                   for m in (minute, minute - 1))

    def handle(self, packet: bytes, ip: IPv4Address, port: int
               ) -> tuple[bytes | None, UDPOutcome]:
        if len(packet) < _HEADER.size:
            return None, UDPOutcome("dropped")
        connection_id, action, transaction = _HEADER.unpack_from(packet)
        if action == CONNECT:
            if connection_id != PROTOCOL_ID:
                return self._error(transaction, "bad_request", "connect without the protocol id")
            reply = struct.pack(">IIQ", CONNECT, transaction, self.connection_id(ip, port))
            return reply, UDPOutcome("connect")
        if action not in (ANNOUNCE, SCRAPE):
            return self._error(transaction, "bad_request", f"unknown action {action}")
        if not self._valid(connection_id, ip, port):
            return self._error(transaction, "bad_request",
                               "connection id unknown or expired: connect again")
        if action == ANNOUNCE:
            return self._announce(packet, transaction, ip)
        return self._scrape(packet, transaction)

    def _announce(self, packet: bytes, transaction: int, ip: IPv4Address
                  ) -> tuple[bytes, UDPOutcome]:
        if len(packet) < ANNOUNCE_BYTES:
            return self._error(transaction, "bad_request", f"announce of {len(packet)} bytes; "
                               f"it has {ANNOUNCE_BYTES}")
        (info_hash, peer_id, downloaded, left, uploaded, event_code, _ip, _key, numwant,
         port) = _ANNOUNCE.unpack_from(packet, _HEADER.size)
        event = UDP_EVENTS.get(event_code)
        if event is None:
            return self._error(transaction, "unknown_event", f"unknown event {event_code}")
        if port == 0:
            return self._error(transaction, "bad_port", "port 0")
        policy = self.policy
        request = Announce(
            info_hash=info_hash, peer_id=peer_id, endpoint=Endpoint(ip, port),
            uploaded=uploaded, downloaded=downloaded, left=left, event=event,
            numwant=policy.default_numwant if numwant < 0 else min(numwant, policy.max_numwant))
        try:
            reply = self.tracker.announce(request)
        except TrackerFull as exc:
            return self._error(transaction, "full", str(exc))
        header = struct.pack(">IIIII", ANNOUNCE, transaction, policy.interval,
                             reply.counts.incomplete, reply.counts.complete)
        peers = b"".join(peer.endpoint.compact() for peer in reply.peers)
        return header + peers, UDPOutcome("announce", event=event,
                                          completed_now=reply.completed_now,
                                          expired=reply.expired)

    def _scrape(self, packet: bytes, transaction: int) -> tuple[bytes, UDPOutcome]:
        raw = packet[_HEADER.size:]
        hashes = [raw[i:i + 20] for i in range(0, len(raw), 20)]
        limit = self.policy.max_scrape_hashes
        if not raw or len(raw) % 20:
            return self._error(transaction, "bad_info_hash",
                               f"a scrape holds whole 20-byte info hashes, not {len(raw)} bytes")
        if len(hashes) > limit:
            return self._error(transaction, "too_many_hashes",
                               f"{len(hashes)} info hashes; at most {limit} per scrape")
        by_hash = {swarm.info_hash: swarm for swarm in self.tracker.scrape(hashes)}
        body = b"".join(struct.pack(">III", by_hash[h].complete, by_hash[h].downloaded,
                                    by_hash[h].incomplete) for h in hashes)
        return struct.pack(">II", SCRAPE, transaction) + body, UDPOutcome("scrape")

    @staticmethod
    def _error(transaction: int, reason: str, message: str) -> tuple[bytes, UDPOutcome]:
        return (struct.pack(">II", ERROR, transaction) + message.encode(),
                UDPOutcome("error", refused=reason))


class UDPTrackerServer(socketserver.UDPServer):
    """One thread answering datagrams in turn: each is a few microseconds of work."""

    def __init__(self, address: tuple[str, int], *, protocol: UDPTrackerProtocol,
                 metrics: TrackerMetrics, log: EventLog) -> None:
        self.protocol = protocol
        self.metrics = metrics
        self.log = log
        self.max_packet_size = MAX_DATAGRAM
        super().__init__(address, _DatagramHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        self.log.error("tracker_udp_failed", client=client_address[0])

    def count(self, outcome: UDPOutcome) -> None:
        if outcome.action == "announce":
            self.metrics.announces.labels(event=ANNOUNCE_EVENTS[outcome.event]).inc()
        elif outcome.action == "scrape":
            self.metrics.scrapes.inc()
        if outcome.refused:
            self.metrics.refused.labels(reason=outcome.refused).inc()
        if outcome.completed_now:
            self.metrics.completed.inc()
        if outcome.expired:
            self.metrics.expired.inc(outcome.expired)


class _DatagramHandler(socketserver.BaseRequestHandler):
    server: UDPTrackerServer

    def handle(self) -> None:
        packet, sock = self.request
        reply, outcome = self.server.protocol.handle(
            packet, IPv4Address(self.client_address[0]), self.client_address[1])
        self.server.count(outcome)
        if reply is not None:
            sock.sendto(reply, self.client_address)
