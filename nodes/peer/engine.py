"""The peer's asyncio adapter: TCP connections and the tracker around one `TorrentSession`.

`PeerEngine` owns the I/O the sans-I/O session (nodes.bittorrent.session) asks for:
it listens on PEER_PORT and dials the peers the tracker names, feeds every byte a
socket delivers to `data_received` and carries out the `Send`/`Close` actions, ticks
the session (time-outs, keep-alives, the choker's rounds), pulls uploads with
`serve` when a socket can take more and the upload bucket allows, and announces to
the HTTP tracker (started, every interval, completed, stopped). Upload and download
are each one token bucket for the whole machine (nodes.peer.limits): they model the
link's u_i and d_i. Reading stops while the download bucket is empty, so a capped
peer slows its senders the way a slow link does: through TCP's window.

Who a connection is: its key is the other end's (ip, port). Once its handshake
arrives, a second connection with the same peer id (we dialled each other at once)
is closed, keeping the one dialled by the smaller peer id so both ends keep the
same one. A peer banned for a bad piece is refused by peer id and by address — its
listening address, and its IP unless that is a loopback address, which every
peer on one host shares.

Everything runs on one event loop (the node's, nodes.common.aio); `status()` and
the counters are read there too. Callers: nodes.peer.service.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from nodes.bittorrent.layout import BLOCK_SIZE
from nodes.bittorrent.session import Close, Send, TorrentSession
from nodes.bittorrent.store import StoreError
from nodes.bittorrent.wire import Bitfield
from nodes.common.logs import EventLog
from nodes.peer.announce import AnnounceError, AnnounceQuery, announce
from nodes.peer.limits import TokenBucket
from nodes.peer.pieces import PeerStore
from nodes.rpc import peer_pb2

Endpoint = tuple[str, int]
READ_BYTES = 64 * 1024
WRITE_HIGH_WATER = 128 * 1024  # bytes queued in a socket before we stop serving it
DIAL_TIMEOUT_SECONDS = 5.0
STALL_SECONDS = 30.0  # no new piece this long, with peers connected: log the picker's state
SELF_CONNECTION = "connected to ourselves"  # the session's reason, when the tracker lists us


@dataclass(frozen=True)
class PeerSettings:
    tracker_url: str
    listen_port: int = 6881
    upload_rate: int = 0  # bytes/s; 0: no limit
    download_rate: int = 0
    max_peers: int = 50
    numwant: int = 50
    tick_seconds: float = 1.0
    redial_seconds: float = 5.0
    announce_retry_seconds: float = 15.0
    announce_timeout_seconds: float = 5.0
    mode: str = "normal"


@dataclass
class Link:
    key: Endpoint
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    outbound: bool
    peer_id: bytes | None = None


def client_name(peer_id: bytes) -> str:
    """The client an Azureus-style peer id names ("-qB4250-..." -> "qB 4250"), else its hex."""
    tag = peer_id[:8]
    if len(tag) == 8 and tag[:1] == tag[7:8] == b"-" and tag[1:7].isascii() and \
            tag[1:7].decode().isprintable():
        return f"{tag[1:3].decode()} {tag[3:7].decode()}"
    return peer_id[:8].hex()


class PeerEngine:
    def __init__(self, session: TorrentSession, store: PeerStore, settings: PeerSettings, *,
                 log: EventLog, clock: Callable[[], float] = time.monotonic,
                 on_tick: Callable[[PeerEngine], None] | None = None) -> None:
        self.session = session
        self.store = store
        self.settings = settings
        self.log = log
        self.clock = clock
        self.on_tick = on_tick
        burst = 4 * BLOCK_SIZE  # whole blocks go out; a bucket must hold at least one
        self.upload_bucket = TokenBucket(settings.upload_rate, burst=max(burst,
                                         settings.upload_rate / 4), clock=clock)
        self.download_bucket = TokenBucket(settings.download_rate, burst=max(
            burst, settings.download_rate / 4), clock=clock)
        self.links: dict[Endpoint, Link] = {}
        self.known_peers: set[Endpoint] = set()
        self.banned_ids: set[bytes] = set()
        self.banned_endpoints: set[Endpoint] = set()
        self.banned_ips: set[str] = set()
        self.announces_ok = 0
        self.announces_failed = 0
        self.listen_port = 0
        self.started_at = clock()
        self.completed_at: float | None = None if not session.complete else self.started_at
        self._progress = (len(store.have), clock())  # pieces held, and since when
        self._dialing: set[Endpoint] = set()
        self._last_dial: dict[Endpoint, float] = {}
        self._endpoint_ids: dict[Endpoint, bytes] = {}
        self._never_dial: set[Endpoint] = set()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self._upload_wake = asyncio.Event()
        self._completed = asyncio.Event()
        self._round_robin = 0
        self.stopping = False

    # -- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "0.0.0.0",
                                                  self.settings.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        for work in (self._tick_loop, self._upload_loop, self._announce_loop):
            self._tasks.append(asyncio.create_task(work(), name=work.__name__))
        self.log.info("peer_started", listen_port=self.listen_port, mode=self.settings.mode,
                      info_hash=self.session.metainfo.info_hash.hex(),
                      pieces_have=len(self.store.have),
                      pieces_total=self.session.layout.piece_count,
                      upload_rate=self.settings.upload_rate,
                      download_rate=self.settings.download_rate)

    async def stop(self, announce_seconds: float) -> None:
        """Stop accepting, tell the tracker we left (bounded), close every connection, and
        make the verified pieces durable."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if announce_seconds > 0:
            with contextlib.suppress(AnnounceError):
                await asyncio.to_thread(announce, self.settings.tracker_url,
                                        self._query("stopped"), announce_seconds)
        for key in list(self.links):
            self._drop(key, "stopping")
        self.store.close()
        self.log.info("peer_stopped", uploaded=self.store.uploaded,
                      downloaded=self.store.downloaded)

    # -- connections ---------------------------------------------------------------------

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = writer.get_extra_info("peername")[:2]
        if self.stopping or key[0] in self.banned_ips or key in self.links or \
                len(self.links) >= self.settings.max_peers:
            writer.close()
            return
        await self._run_link(Link(key, reader, writer, outbound=False))

    async def _dial(self, key: Endpoint) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*key),
                                                    DIAL_TIMEOUT_SECONDS)
        except (TimeoutError, OSError) as exc:
            self.log.debug("peer_dial_failed", peer=f"{key[0]}:{key[1]}", problem=str(exc))
            return
        finally:
            self._dialing.discard(key)
        if self.stopping or key in self.links:
            writer.close()
            return
        await self._run_link(Link(key, reader, writer, outbound=True))

    async def _run_link(self, link: Link) -> None:
        key = link.key
        self.links[key] = link
        self.log.debug("peer_connected", peer=f"{key[0]}:{key[1]}", outbound=link.outbound)
        try:
            self.session.connection_made(key)
            self._flush()
            while key in self.links:
                delay = self.download_bucket.delay(BLOCK_SIZE)
                if delay:
                    await asyncio.sleep(delay)
                data = await link.reader.read(
                    READ_BYTES if self.download_bucket.unlimited else BLOCK_SIZE)
                if not data:
                    break
                self.download_bucket.take(len(data))
                self.session.data_received(key, data)
                self._identify(link)
                self._flush()
                self._upload_wake.set()
        except (ConnectionError, OSError):
            pass
        except StoreError as exc:
            self.log.error("peer_store_failed", problem=str(exc))
        finally:
            if self.links.get(key) is link:
                del self.links[key]
                self.session.connection_lost(key)
                self._flush()
            link.writer.close()

    def _identify(self, link: Link) -> None:
        """Once the handshake is in: refuse a banned peer, keep one connection per peer."""
        if link.peer_id is not None or link.key not in self.links:
            return
        connection = self.session.connections.get(link.key)
        if connection is None or connection.handshake is None:
            return
        link.peer_id = peer_id = connection.handshake.peer_id
        if link.outbound:
            self._endpoint_ids[link.key] = peer_id
        if peer_id in self.banned_ids:
            self._drop(link.key, "banned for a bad piece")
            return
        for other in list(self.links.values()):
            if other is not link and other.peer_id == peer_id:
                # Both ends must close the same one: keep the one the smaller peer id dialled.
                def dialler(candidate: Link) -> bytes:
                    return self.session.peer_id if candidate.outbound else peer_id
                keep = min((other, link), key=lambda candidate: (dialler(candidate),
                                                                 candidate is link))
                self._drop((link if keep is other else other).key, "duplicate connection")
                return

    def _drop(self, key: Endpoint, reason: str) -> None:
        """Close a connection the session still holds (the adapter's own decision)."""
        if key in self.session.connections:
            self.session.connection_lost(key)
        self._flush()
        self._close_link(key, reason)

    def _close_link(self, key: Endpoint, reason: str) -> None:
        link = self.links.pop(key, None)
        if link is None:
            return
        self.log.debug("peer_closed", peer=f"{key[0]}:{key[1]}", reason=reason)
        # Its reader sees the end of the stream and its task ends by itself: cancelling an
        # accepted connection's task makes asyncio log the cancellation as an error.
        link.writer.close()

    def _flush(self) -> None:
        """Carry out what the session asked for."""
        for action in self.session.take_actions():
            if isinstance(action, Send):
                link = self.links.get(action.peer)
                if link is not None:
                    link.writer.write(action.data)
            elif isinstance(action, Close):
                link = self.links.get(action.peer)
                if link is not None:
                    if action.ban:
                        self._ban(link, action.reason)
                    elif action.reason == SELF_CONNECTION and link.outbound:
                        self._never_dial.add(link.key)
                self._close_link(action.peer, action.reason)
        if self.completed_at is None and self.session.complete:
            self.completed_at = self.clock()
            self.log.info("peer_completed", seconds=round(self.completed_at - self.started_at, 3),
                          downloaded=self.store.downloaded, pieces_bad=self.store.pieces_bad)
            self._completed.set()

    def _ban(self, link: Link, reason: str) -> None:
        if link.peer_id is not None:
            self.banned_ids.add(link.peer_id)
        if link.outbound:
            self.banned_endpoints.add(link.key)
        if not ipaddress.ip_address(link.key[0]).is_loopback:
            self.banned_ips.add(link.key[0])
        self.log.warning("peer_banned", peer=f"{link.key[0]}:{link.key[1]}", reason=reason,
                         client=client_name(link.peer_id or b""))

    def _dial_more(self) -> None:
        now = self.clock()
        connected_ids = {link.peer_id for link in self.links.values() if link.peer_id}
        for key in sorted(self.known_peers):
            if len(self.links) + len(self._dialing) >= self.settings.max_peers:
                return
            if key in self.links or key in self._dialing or key in self._never_dial or \
                    key in self.banned_endpoints or key[0] in self.banned_ips or \
                    self._endpoint_ids.get(key) in connected_ids | self.banned_ids or \
                    now - self._last_dial.get(key, -1e9) < self.settings.redial_seconds:
                continue
            self._last_dial[key] = now
            self._dialing.add(key)
            self._tasks.append(asyncio.create_task(self._dial(key)))
        self._tasks = [task for task in self._tasks if not task.done()]

    # -- background work -----------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_seconds)
            try:
                self.session.tick()
                self._flush()
                self.store.checkpoint()
            except StoreError as exc:
                self.log.error("peer_store_failed", problem=str(exc))
            self._dial_more()
            self._watch_progress()
            if self.on_tick is not None:
                self.on_tick(self)

    def _watch_progress(self) -> None:
        """A download with connected peers that gains no piece for STALL_SECONDS is logged
        with what the picker holds, so a stall can be read from the logs."""
        have, since = self._progress
        now = self.clock()
        if len(self.store.have) != have or self.session.complete:
            self._progress = (len(self.store.have), now)
        elif self.session.connections and now - since >= STALL_SECONDS:
            self._progress = (have, now)  # once per STALL_SECONDS
            self.log.warning("peer_stalled", seconds=STALL_SECONDS, pieces_have=have,
                             peers={str(key): {"choking_us": c.peer_choking,
                                               "interested": c.am_interested}
                                    for key, c in self.session.connections.items()},
                             **self.session.picker.describe())

    async def _upload_loop(self) -> None:
        """Serve queued requests a block per connection per round, while sockets drain and
        the upload bucket has tokens."""
        while True:
            keys = list(self.links)
            if keys:
                self._round_robin = (self._round_robin + 1) % len(keys)
                keys = keys[self._round_robin:] + keys[:self._round_robin]
            served = waiting = False
            pause = 0.005
            for key in keys:
                connection = self.session.connections.get(key)
                link = self.links.get(key)
                if connection is None or link is None or not connection.requests:
                    continue
                waiting = True
                if link.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    continue
                length = connection.requests[0].length
                delay = self.upload_bucket.delay(length)
                if delay:
                    pause = max(pause, delay)
                    continue
                try:
                    sent = self.session.serve(key, length)
                except StoreError as exc:
                    self.log.error("peer_store_failed", problem=str(exc))
                    self._drop(key, "cannot read the piece")
                    continue
                self.upload_bucket.take(sent)
                self._flush()
                served = True
            if served:
                await asyncio.sleep(0)
            elif waiting:
                await asyncio.sleep(pause)
            else:
                self._upload_wake.clear()
                await self._upload_wake.wait()

    def _query(self, event: str) -> AnnounceQuery:
        left = self.session.metainfo.total_length - sum(
            self.session.layout.piece_size(index) for index in self.store.have)
        return AnnounceQuery(self.session.metainfo.info_hash, self.session.peer_id,
                             self.listen_port, self.store.uploaded, self.store.downloaded, left,
                             event, self.settings.numwant)

    async def _announce_loop(self) -> None:
        event = "started"
        completed_told = self.session.complete  # a seeder from the start has nothing to tell
        while True:
            if not completed_told and self._completed.is_set() and event != "started":
                event = "completed"
            try:
                reply = await asyncio.to_thread(announce, self.settings.tracker_url,
                                                self._query(event),
                                                self.settings.announce_timeout_seconds)
            except AnnounceError as exc:
                self.announces_failed += 1
                self.log.warning("peer_announce_failed", announce_event=event or "update",
                                 problem=str(exc))
                wait = self.settings.announce_retry_seconds
            else:
                self.announces_ok += 1
                self.log.debug("peer_announced", announce_event=event or "update",
                               peers=len(reply.peers), interval=reply.interval)
                if event == "completed":
                    completed_told = True
                event = ""
                self.known_peers.update(reply.peers)
                self._dial_more()
                wait = reply.interval
            if not completed_told and not self._completed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._completed.wait(), wait)
            else:
                await asyncio.sleep(wait)

    # -- what it is doing ----------------------------------------------------------------

    def status(self) -> peer_pb2.StatusReply:
        layout = self.session.layout
        choker = self.session.choker
        connections = []
        for key, link in self.links.items():
            connection = self.session.connections.get(key)
            if connection is None:
                continue
            known = connection.handshake is not None
            connections.append(peer_pb2.Connection(
                address=f"{key[0]}:{key[1]}", client=client_name(link.peer_id or b""),
                peer_id=link.peer_id or b"", outbound=link.outbound,
                am_choking=connection.am_choking, am_interested=connection.am_interested,
                peer_choking=connection.peer_choking,
                peer_interested=connection.peer_interested,
                pieces=self.session.picker.pieces_of(key),
                uploaded=connection.uploaded, downloaded=connection.downloaded,
                upload_rate=choker.upload_rate(key) if known else 0.0,
                download_rate=choker.download_rate(key) if known else 0.0))
        have = len(self.store.have)
        return peer_pb2.StatusReply(
            peer_id=self.session.peer_id, client=client_name(self.session.peer_id),
            mode=self.settings.mode,
            state="stopping" if self.stopping else "seeding" if self.session.complete
            else "leeching",
            info_hash=self.session.metainfo.info_hash.hex(), name=self.session.metainfo.name,
            total_bytes=self.session.metainfo.total_length, pieces_total=layout.piece_count,
            pieces_have=have, progress=have / layout.piece_count if layout.piece_count else 1.0,
            complete=self.session.complete, uploaded=self.store.uploaded,
            downloaded=self.store.downloaded,
            upload_rate=sum(c.upload_rate for c in connections),
            download_rate=sum(c.download_rate for c in connections),
            pieces_bad=self.store.pieces_bad, banned=len(self.banned_ids),
            listen_port=self.listen_port, connections=connections,
            completed_seconds=(self.completed_at - self.started_at)
            if self.completed_at is not None else 0.0,
            have=Bitfield.of(self.store.have, layout.piece_count).bits)
