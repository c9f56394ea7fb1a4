"""The tracker's swarms, sans-I/O: which peers share which torrent, as their announces say.

A `Tracker` holds one swarm per infohash: each peer by its address (IPv4 and port, as
real trackers key them, so a client restarted with a new peer id replaces its old
entry), with its peer id, what it reported, and when it last announced. `announce`
applies one announce (BEP 3 events: started, completed, stopped; BEP 21's paused as
a regular update) and picks the peers to give back; `scrape` counts (BEP 48);
`expire` forgets peers that missed their announces. The clock and the random source
are injected, so tests and simulations decide time and choice.

Callers: the HTTP tracker (nodes.tracker.http) and the gRPC status service
(nodes.tracker.service). Thread-safe (one lock); does no I/O. Memory is bounded by
`max_swarms` x `max_peers_per_swarm`; beyond them an announce is refused
(`TrackerFull`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

EVENTS = ("started", "completed", "stopped", "paused", "")  # "": a regular announce


class TrackerFull(Exception):
    """No room for one more swarm, or one more peer in a swarm."""


@dataclass(frozen=True, order=True)
class Endpoint:
    ip: IPv4Address
    port: int

    def compact(self) -> bytes:
        """BEP 23: 4 bytes of address and 2 of port, network order."""
        return self.ip.packed + self.port.to_bytes(2, "big")


@dataclass(frozen=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    endpoint: Endpoint  # where the request came from (the `ip` parameter is not trusted)
    uploaded: int = 0
    downloaded: int = 0
    left: int | None = None  # None: the client did not say; counted as a leecher
    event: str = ""
    numwant: int = 50


@dataclass
class Peer:
    peer_id: bytes
    endpoint: Endpoint
    uploaded: int
    downloaded: int
    left: int | None
    last_announce: float
    completed_counted: bool = False  # its completion is in the swarm's `downloaded`

    @property
    def seeder(self) -> bool:
        return self.left == 0


@dataclass(frozen=True)
class SwarmCounts:
    info_hash: bytes
    complete: int  # seeders
    incomplete: int  # leechers
    downloaded: int  # completions the tracker saw (the `completed` events)


@dataclass(frozen=True)
class AnnounceReply:
    peers: tuple[Peer, ...]  # copies, safe to read after the lock is released
    counts: SwarmCounts
    expired: int  # peers forgotten on the way (missed announces)
    completed_now: bool  # this announce is a completion the tracker had not counted


@dataclass
class Swarm:
    peers: dict[Endpoint, Peer] = field(default_factory=dict)
    downloaded: int = 0

    def counts(self, info_hash: bytes) -> SwarmCounts:
        seeders = sum(1 for peer in self.peers.values() if peer.seeder)
        return SwarmCounts(info_hash, seeders, len(self.peers) - seeders, self.downloaded)


@dataclass(frozen=True)
class Totals:
    swarms: int
    seeders: int
    leechers: int


class Tracker:
    """Every swarm this tracker knows. `peer_timeout`: seconds without an announce after
    which a peer is forgotten."""

    def __init__(self, *, peer_timeout: float, max_swarms: int = 1000,
                 max_peers_per_swarm: int = 1000, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.peer_timeout = peer_timeout
        self.max_swarms = max_swarms
        self.max_peers_per_swarm = max_peers_per_swarm
        self._clock = clock
        self._rng = rng or random.Random()
        self._swarms: dict[bytes, Swarm] = {}
        self._lock = threading.Lock()

    def announce(self, request: Announce) -> AnnounceReply:
        if request.event not in EVENTS:
            raise ValueError(f"unknown event {request.event!r}")  # the HTTP layer refuses it
        now = self._clock()
        with self._lock:
            swarm = self._swarms.get(request.info_hash)
            expired = self._expire_swarm(swarm, now) if swarm else 0
            if request.event == "stopped":
                # A stopped from a peer the tracker never saw (or forgot) changes nothing.
                if swarm is not None:
                    swarm.peers.pop(request.endpoint, None)
                    return AnnounceReply((), swarm.counts(request.info_hash), expired, False)
                return AnnounceReply((), SwarmCounts(request.info_hash, 0, 0, 0), expired,
                                     False)
            if swarm is None:
                swarm = self._new_swarm(request.info_hash, now)
            peer = self._record(swarm, request, now)
            completed_now = request.event == "completed" and not peer.completed_counted
            if completed_now:
                peer.completed_counted = True
                swarm.downloaded += 1
            chosen = self._choose_peers(swarm, peer, request.numwant)
            return AnnounceReply(chosen, swarm.counts(request.info_hash), expired,
                                 completed_now)

    def _new_swarm(self, info_hash: bytes, now: float) -> Swarm:
        if len(self._swarms) >= self.max_swarms:
            self._expire_all(now)
        if len(self._swarms) >= self.max_swarms:
            raise TrackerFull(f"this tracker holds its limit of {self.max_swarms} swarms")
        swarm = self._swarms[info_hash] = Swarm()
        return swarm

    def _record(self, swarm: Swarm, request: Announce, now: float) -> Peer:
        left = 0 if request.event == "completed" and request.left is None else request.left
        peer = swarm.peers.get(request.endpoint)
        if peer is None:
            if len(swarm.peers) >= self.max_peers_per_swarm:
                raise TrackerFull(f"this swarm holds its limit of {self.max_peers_per_swarm} "
                                  f"peers")
            peer = swarm.peers[request.endpoint] = Peer(
                request.peer_id, request.endpoint, request.uploaded, request.downloaded, left,
                now)
            return peer
        if peer.peer_id != request.peer_id:  # the client at this address restarted
            peer.peer_id, peer.completed_counted = request.peer_id, False
        peer.uploaded, peer.downloaded, peer.left = request.uploaded, request.downloaded, left
        peer.last_announce = now
        return peer

    def _choose_peers(self, swarm: Swarm, asking: Peer, numwant: int) -> tuple[Peer, ...]:
        """Up to `numwant` other peers at random; a seeder gets only leechers (it has
        nothing to fetch from another seeder)."""
        others = [peer for peer in swarm.peers.values()
                  if peer is not asking and not (asking.seeder and peer.seeder)]
        if len(others) > numwant:
            others = self._rng.sample(others, numwant)
        return tuple(Peer(**vars(peer)) for peer in others)

    def scrape(self, info_hashes: Iterable[bytes] = ()) -> list[SwarmCounts]:
        """The counts of each swarm asked for (zeros for one the tracker does not know, as
        opentracker answers); of every swarm when none is named."""
        now = self._clock()
        with self._lock:
            self._expire_all(now)
            wanted = list(dict.fromkeys(info_hashes)) or sorted(self._swarms)
            empty = Swarm()
            return [self._swarms.get(info_hash, empty).counts(info_hash)
                    for info_hash in wanted]

    def peers(self, info_hash: bytes) -> list[Peer] | None:
        """Copies of a swarm's peers, by address; None when there is no such swarm."""
        with self._lock:
            swarm = self._swarms.get(info_hash)
            if swarm is None:
                return None
            self._expire_swarm(swarm, self._clock())
            return [Peer(**vars(peer)) for _, peer in sorted(swarm.peers.items())]

    def seconds_since(self, moment: float) -> float:
        return max(0.0, self._clock() - moment)

    def expire(self) -> int:
        """Forget every peer silent for longer than `peer_timeout`, and swarms left empty;
        return how many peers went."""
        with self._lock:
            return self._expire_all(self._clock())

    def totals(self) -> Totals:
        with self._lock:
            seeders = sum(1 for swarm in self._swarms.values()
                          for peer in swarm.peers.values() if peer.seeder)
            peers = sum(len(swarm.peers) for swarm in self._swarms.values())
            return Totals(len(self._swarms), seeders, peers - seeders)

    def _expire_all(self, now: float) -> int:
        expired = 0
        for info_hash, swarm in list(self._swarms.items()):
            expired += self._expire_swarm(swarm, now)
            if not swarm.peers:
                del self._swarms[info_hash]
        return expired

    def _expire_swarm(self, swarm: Swarm, now: float) -> int:
        silent = [endpoint for endpoint, peer in swarm.peers.items()
                  if now - peer.last_announce > self.peer_timeout]
        for endpoint in silent:
            del swarm.peers[endpoint]
        return len(silent)
