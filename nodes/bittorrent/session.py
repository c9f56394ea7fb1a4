"""One torrent's peer connections as a state machine: events in, actions out, no I/O.

A `TorrentSession` ties the wire codec, the picker, the choker and the store for one
torrent. The peer role's asyncio adapter tells it what happened — `connection_made`,
`data_received`, `connection_lost`, and `tick` about once a second — and after each
call carries out `take_actions()`: `Send` bytes to a peer, `Close` a connection
(with `ban` when the peer sent data that failed its SHA-1 check: refuse its address
from then on). Peers are whatever hashable key the adapter picks (its address).

Per connection it keeps BEP 3's four flags (am_choking, am_interested, peer_choking,
peer_interested) and what the peer has. Both sides start choked and not interested;
our handshake and bitfield go out at once. BEP 3 allows the peer's bitfield only as its
first message, but aria2 sends a second one after `interested`: a later bitfield is read
as a batch of `have`s (a peer never loses a piece), not as a reason to hang up. Requests
from a peer we choke are dropped, as BEP 3 says, and requests for pieces we lack are
ignored. A connection that sends nothing for `idle_timeout_seconds` is closed; we send
a keep-alive after `keepalive_seconds` of our own silence.

Uploads are pulled, not pushed: a peer's requests wait in a queue (cancel removes
one, a choke drops them all; more than `max_queued_requests` closes the connection,
so a flood of 17-byte requests cannot make us hold gigabytes), and the adapter calls
`serve(peer, max_bytes)` when the socket can take more and its rate limit allows.
A failing disk (`StoreError`) is not a peer's fault: it propagates to the adapter.
Clock and randomness are injected.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from nodes.bittorrent.choker import Choker
from nodes.bittorrent.layout import Block, Layout
from nodes.bittorrent.picker import Picker
from nodes.bittorrent.store import PieceStore
from nodes.bittorrent.wire import (
    Bitfield,
    Cancel,
    Choke,
    Handshake,
    Have,
    Interested,
    KeepAlive,
    Message,
    NotInterested,
    Piece,
    Request,
    Unchoke,
    WireDecoder,
    WireError,
    encode,
)

PeerKey = Hashable


@dataclass(frozen=True)
class Send:
    peer: PeerKey
    data: bytes


@dataclass(frozen=True)
class Close:
    peer: PeerKey
    reason: str
    ban: bool = False  # it sent a bad piece: do not connect to or accept it again


Action = Send | Close


@dataclass
class Connection:
    decoder: WireDecoder
    last_heard: float
    last_sent: float
    handshake: Handshake | None = None
    am_choking: bool = True
    am_interested: bool = False
    peer_choking: bool = True
    peer_interested: bool = False
    requests: deque[Block] = field(default_factory=deque)  # theirs, waiting for `serve`
    uploaded: int = 0
    downloaded: int = 0


class TorrentSession:
    """`store` must be opened: the session starts from the pieces it verified."""

    def __init__(self, store: PieceStore, *, peer_id: bytes, clock: Callable[[], float],
                 rng: random.Random, pipeline_depth: int = 8, max_queued_requests: int = 500,
                 keepalive_seconds: float = 90, idle_timeout_seconds: float = 180,
                 choker: Choker | None = None) -> None:
        self.store = store
        self.metainfo = store.metainfo
        self.layout = Layout.of(store.metainfo)
        self.peer_id = peer_id
        self.clock = clock
        self.max_queued_requests = max_queued_requests
        self.keepalive_seconds = keepalive_seconds
        self.idle_timeout_seconds = idle_timeout_seconds
        self.picker = Picker(self.layout, rng=rng, have=store.have,
                             pipeline_depth=pipeline_depth)
        self.choker = choker or Choker(clock=clock, rng=rng)
        self.choker.set_seeding(self.picker.complete)
        self.connections: dict[PeerKey, Connection] = {}
        self.bad_pieces = 0
        self._actions: list[Action] = []

    @property
    def complete(self) -> bool:
        return self.picker.complete

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    # -- events from the adapter ---------------------------------------------------------

    def connection_made(self, peer: PeerKey) -> None:
        now = self.clock()
        self.connections[peer] = Connection(WireDecoder(self.layout, self.metainfo.info_hash),
                                            last_heard=now, last_sent=now)
        self._send(peer, Handshake(self.metainfo.info_hash, self.peer_id))
        if self.picker.have:
            self._send(peer, Bitfield.of(self.picker.have, self.layout.piece_count))

    def data_received(self, peer: PeerKey, data: bytes) -> None:
        connection = self.connections.get(peer)
        if connection is None:
            return  # closed already; bytes still in flight
        connection.last_heard = self.clock()
        try:
            messages = connection.decoder.feed(data)
        except WireError as exc:
            self._close(peer, str(exc))
            return
        for message in messages:
            if peer not in self.connections:
                return
            self._handle(peer, connection, message)

    def serve(self, peer: PeerKey, max_bytes: int) -> int:
        """Answer `peer`'s queued requests, whole blocks up to `max_bytes`; the bytes sent."""
        connection = self.connections.get(peer)
        sent = 0
        while connection and connection.requests and \
                sent + connection.requests[0].length <= max_bytes:
            block = connection.requests.popleft()
            self._send(peer, Piece(block.index, block.begin, self.store.read_block(block)))
            sent += block.length
        if sent:
            connection.uploaded += sent
            self.choker.uploaded(peer, sent)
        return sent

    def connection_lost(self, peer: PeerKey) -> None:
        if peer in self.connections:
            self._forget(peer)

    def tick(self) -> None:
        """Time passed: time-outs, keep-alives, and the choker's decisions."""
        now = self.clock()
        for peer, connection in list(self.connections.items()):
            if now - connection.last_heard >= self.idle_timeout_seconds:
                self._close(peer, f"silent for {now - connection.last_heard:.0f} s")
            elif now - connection.last_sent >= self.keepalive_seconds:
                self._send(peer, KeepAlive())
        unchoked = self.choker.tick()
        for peer, connection in self.connections.items():
            if connection.handshake is None:
                continue
            if connection.am_choking and peer in unchoked:
                connection.am_choking = False
                self._send(peer, Unchoke())
            elif not connection.am_choking and peer not in unchoked:
                connection.am_choking = True
                connection.requests.clear()  # BEP 3: a choke discards their requests
                self._send(peer, Choke())

    # -- messages ------------------------------------------------------------------------

    def _handle(self, peer: PeerKey, connection: Connection, message: Message | Handshake) -> None:
        if isinstance(message, Handshake):
            if message.peer_id == self.peer_id:
                self._close(peer, "connected to ourselves")
                return
            connection.handshake = message
            self.picker.add_peer(peer)
            self.choker.add_peer(peer)
            return
        if isinstance(message, KeepAlive):
            return  # it only proves the peer is there, which data_received noted
        if isinstance(message, Bitfield):
            for index in message.pieces():
                self.picker.peer_has(peer, index)
            self._update_interest(peer, connection)
        elif isinstance(message, Have):
            self.picker.peer_has(peer, message.index)
            self._update_interest(peer, connection)
        elif isinstance(message, Choke):
            connection.peer_choking = True
            self.picker.peer_choked(peer)
        elif isinstance(message, Unchoke):
            connection.peer_choking = False
            self._request_more(peer, connection)
        elif isinstance(message, Interested | NotInterested):
            connection.peer_interested = isinstance(message, Interested)
            self.choker.set_interested(peer, connection.peer_interested)
        elif isinstance(message, Request):
            self._queue_request(peer, connection, message.block)
        elif isinstance(message, Cancel):
            if message.block in connection.requests:
                connection.requests.remove(message.block)
        elif isinstance(message, Piece):
            self._receive(peer, connection, message)
        # Port is for a DHT we do not run.

    def _queue_request(self, peer: PeerKey, connection: Connection, block: Block) -> None:
        if connection.am_choking or block.index not in self.picker.have:
            return
        if len(connection.requests) >= self.max_queued_requests:
            self._close(peer, f"more than {self.max_queued_requests} requests queued")
            return
        connection.requests.append(block)

    def _receive(self, peer: PeerKey, connection: Connection, piece: Piece) -> None:
        received = self.picker.block_received(peer, piece.block)
        if received is None:
            return  # a duplicate or unasked-for block: wasted, not harmful
        connection.downloaded += len(piece.data)
        self.choker.downloaded(peer, len(piece.data))
        self.store.put_block(piece.block, piece.data)
        for other, block in received.cancels:
            self._send(other, Cancel(block))
        if received.piece_complete:
            self._piece_complete(piece.index)
        if peer in self.connections:
            self._request_more(peer, connection)

    def _piece_complete(self, index: int) -> None:
        if self.store.finish_piece(index):
            self.picker.piece_verified(index)
            for other, connection in list(self.connections.items()):
                if connection.handshake is not None:
                    self._send(other, Have(index))
                    self._update_interest(other, connection)
            if self.picker.complete:
                self.choker.set_seeding(True)
            return
        self.bad_pieces += 1
        senders = self.picker.piece_failed(index)
        if len(senders) == 1:
            (culprit,) = senders
            self._close(culprit, f"sent piece {index}, which failed its SHA-1 check", ban=True)
        else:
            for sender in senders:
                self.picker.parole(sender)
        for other, connection in list(self.connections.items()):
            if connection.handshake is not None:
                self._request_more(other, connection)

    def _update_interest(self, peer: PeerKey, connection: Connection) -> None:
        interesting = self.picker.interesting(peer)
        if interesting != connection.am_interested:
            connection.am_interested = interesting
            self._send(peer, Interested() if interesting else NotInterested())
        self._request_more(peer, connection)

    def _request_more(self, peer: PeerKey, connection: Connection) -> None:
        if connection.am_interested and not connection.peer_choking:
            for block in self.picker.requests_for(peer):
                self._send(peer, Request(block))

    # -- connection bookkeeping ----------------------------------------------------------

    def _send(self, peer: PeerKey, message: Message | Handshake) -> None:
        self.connections[peer].last_sent = self.clock()
        self._actions.append(Send(peer, encode(message)))

    def _close(self, peer: PeerKey, reason: str, *, ban: bool = False) -> None:
        self._forget(peer)
        self._actions.append(Close(peer, reason, ban))

    def _forget(self, peer: PeerKey) -> None:
        connection = self.connections.pop(peer)
        if connection.handshake is not None:
            self.picker.remove_peer(peer)
            self.choker.remove_peer(peer)
        # What it was asked for and has not sent goes to the others.
        for other, other_connection in list(self.connections.items()):
            if other_connection.handshake is not None:
                self._request_more(other, other_connection)
