"""The peer node: one torrent's `PeerEngine` behind the node contract.

`PeerNode` (built by the node bootstrap, nodes.common.server, in asyncio mode so the
engine and the gRPC server share one event loop) waits for the .torrent at
PEER_TORRENT — or makes it from PEER_SEED_PATH — opens the pieces under its data
directory (re-verifying what is there, so a restarted peer resumes), and runs the
engine (nodes.peer.engine). It answers `distlab.peer.PeerStatus` and Control's
status from the loop, and exports the distlab_bittorrent_* metrics. Its one run-time
setting is PEER_MODE between normal and corrupt (Control's Reconfigure: a scenario
makes one machine serve corrupt blocks). On close
(SIGTERM) the engine announces `stopped`, closes its connections and makes the
verified pieces durable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import secrets
import shutil
import time
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from nodes.bittorrent.choker import Choker
from nodes.bittorrent.content import ContentError, list_content
from nodes.bittorrent.metainfo import (
    Metainfo,
    MetainfoError,
    build_metainfo,
    default_piece_length,
)
from nodes.bittorrent.session import TorrentSession
from nodes.common.durable import fsync_directory
from nodes.common.role import NodeContext, RoleError, RoleNode, ServerMode
from nodes.peer.digest import ContentDigest
from nodes.peer.engine import PeerEngine, PeerSettings
from nodes.peer.pieces import FreeRiderChoker, PeerStore
from nodes.rpc import peer_pb2, peer_pb2_grpc

SERVICE_NAME = peer_pb2.DESCRIPTOR.services_by_name["PeerStatus"].full_name
# PEER_MODE values a running peer may switch between (Control's Reconfigure): a scenario
# turns the corrupt test fault on for one machine. The free rider's choker is chosen at start.
RUN_TIME_MODES = ("normal", "corrupt")
PEER_ID_PREFIX = b"-DL0001-"  # Azureus style: client "DL" (distlab), version 0001
TORRENT_POLL_SECONDS = 1.0
CONNECTION_STATES = ("am_choking", "peer_choking", "am_interested", "peer_interested")


def _publish(path: Path, data: bytes) -> None:
    """Put a torrent at `path` durably and whole. Two seeders of one content may make it at
    once (their info hashes agree; only the creation date differs): each writes its own
    temporary file, so neither renames the other's away, and the last rename wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def _write_random(path: Path, count: int) -> None:
    """`count` random bytes at `path`: content for a lab with no file of its own to share."""
    chunk = 1024 * 1024
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "wb") as out:
        for offset in range(0, count, chunk):
            out.write(secrets.token_bytes(min(chunk, count - offset)))
    partial.replace(path)


class PeerMetrics:
    """distlab_bittorrent_*: counters follow the engine's totals once per tick."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.progress = Gauge("distlab_bittorrent_progress_ratio",
                              "Verified pieces over all pieces (1: seeding).", registry=registry)
        self.uploaded = Counter("distlab_bittorrent_uploaded_bytes",
                                "Piece bytes sent to peers.", registry=registry)
        self.downloaded = Counter("distlab_bittorrent_downloaded_bytes",
                                  "Piece bytes accepted from peers.", registry=registry)
        self.verified = Counter("distlab_bittorrent_pieces_verified",
                                "Pieces downloaded whose SHA-1 matched.", registry=registry)
        self.bad = Counter("distlab_bittorrent_pieces_bad",
                           "Pieces downloaded whose SHA-1 did not match (fetched again).",
                           registry=registry)
        self.banned = Gauge("distlab_bittorrent_banned_peers",
                            "Peers refused for sending a bad piece.", registry=registry)
        self.peers = Gauge("distlab_bittorrent_peers",
                           "Connected peers (handshake done).", registry=registry)
        self.connections = Gauge(
            "distlab_bittorrent_connections",
            "Connections by BEP 3 flag: am_choking (we choke it), peer_choking (it chokes "
            "us), am_interested, peer_interested.", ["state"], registry=registry)
        self.announces = Counter("distlab_bittorrent_announces",
                                 "Announces to the tracker, by result.", ["result"],
                                 registry=registry)
        self.rate_limit = Gauge("distlab_bittorrent_rate_limit_bytes_per_second",
                                "Configured cap per direction (0: none).", ["direction"],
                                registry=registry)
        for state in CONNECTION_STATES:
            self.connections.labels(state=state)
        for result in ("ok", "failed"):
            self.announces.labels(result=result)
        self._seen = {"up": 0, "down": 0, "ok": 0, "bad": 0, "ann_ok": 0, "ann_failed": 0}

    def attach(self, engine: PeerEngine) -> None:
        """Progress is read at scrape time: len() of a set is safe from another thread."""
        pieces = engine.session.layout.piece_count
        self.progress.set_function(lambda: len(engine.store.have) / pieces if pieces else 1.0)
        self.update(engine)

    def update(self, engine: PeerEngine) -> None:
        store = engine.store
        for key, total, counter in (
                ("up", store.uploaded, self.uploaded), ("down", store.downloaded, self.downloaded),
                ("ok", store.pieces_verified, self.verified), ("bad", store.pieces_bad, self.bad),
                ("ann_ok", engine.announces_ok, self.announces.labels(result="ok")),
                ("ann_failed", engine.announces_failed, self.announces.labels(result="failed"))):
            if total > self._seen[key]:
                counter.inc(total - self._seen[key])
                self._seen[key] = total
        self.banned.set(len(engine.banned_ids))
        handshaken = [connection for connection in engine.session.connections.values()
                      if connection.handshake is not None]
        self.peers.set(len(handshaken))
        for state in CONNECTION_STATES:
            self.connections.labels(state=state).set(
                sum(1 for connection in handshaken if getattr(connection, state)))


class PeerNode(RoleNode, peer_pb2_grpc.PeerStatusServicer):
    service_names = (SERVICE_NAME,)
    server_mode = ServerMode(asyncio=True)

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self.config = config = ctx.config
        self.metrics = PeerMetrics(ctx.registry)
        self.metrics.rate_limit.labels(direction="up").set(config["PEER_UPLOAD_RATE_BYTES"])
        self.metrics.rate_limit.labels(direction="down").set(config["PEER_DOWNLOAD_RATE_BYTES"])
        self.peer_id = PEER_ID_PREFIX + secrets.token_hex(6).encode()
        self.mode = config["PEER_MODE"]  # changed on the loop only (reconfigure)
        self.engine: PeerEngine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Future | None = None
        self._problem = ""  # why the torrent or its pieces could not be opened
        self.digest: ContentDigest | None = None  # of the content on disk, once complete
        self._digesting: asyncio.Task | None = None

    def register(self, server: grpc.aio.Server) -> None:
        self._loop = asyncio.get_running_loop()  # register runs on the node's event loop
        peer_pb2_grpc.add_PeerStatusServicer_to_server(self, server)

    def serving(self, grpc_port: int) -> None:
        self._main = asyncio.run_coroutine_threadsafe(self._start(), self._loop)

    async def _start(self) -> None:
        try:
            metainfo = await self._torrent()
            store = await asyncio.to_thread(self._open_store, metainfo)
        except (OSError, MetainfoError, ContentError) as exc:
            self._problem = str(exc)
            self._ctx.log.error("peer_cannot_start", problem=str(exc))
            return
        config = self.config
        tracker_url = config["PEER_TRACKER_URL"] or metainfo.announce or ""
        if not tracker_url.startswith(("http://", "https://")):
            self._ctx.log.error("peer_no_http_tracker", announce=tracker_url,
                                effect="no announces; only peers that dial us are traded with")
        rng = random.Random()
        clock = time.monotonic
        choker_class = FreeRiderChoker if self.mode == "free-rider" else Choker
        choker = choker_class(clock=clock, rng=rng, regular_slots=config["PEER_UPLOAD_SLOTS"],
                              rechoke_seconds=config["PEER_RECHOKE_SECONDS"],
                              optimistic_seconds=config["PEER_OPTIMISTIC_SECONDS"])
        session = TorrentSession(store, peer_id=self.peer_id, clock=clock, rng=rng,
                                 pipeline_depth=config["PEER_PIPELINE_DEPTH"],
                                 keepalive_seconds=config["PEER_KEEPALIVE_SECONDS"],
                                 idle_timeout_seconds=config["PEER_IDLE_TIMEOUT_SECONDS"],
                                 choker=choker)
        settings = PeerSettings(
            tracker_url=tracker_url, listen_port=config["PEER_PORT"],
            upload_rate=config["PEER_UPLOAD_RATE_BYTES"],
            download_rate=config["PEER_DOWNLOAD_RATE_BYTES"], max_peers=config["PEER_MAX_PEERS"],
            numwant=config["PEER_NUMWANT"], tick_seconds=config["PEER_TICK_SECONDS"],
            redial_seconds=config["PEER_REDIAL_SECONDS"],
            announce_retry_seconds=config["PEER_ANNOUNCE_RETRY_SECONDS"],
            mode=self.mode)
        self.digest = ContentDigest(store.files)
        self.engine = PeerEngine(session, store, settings, log=self._ctx.log, clock=clock,
                                 on_tick=self._tick)
        store.corrupt = self.mode == "corrupt"  # reconfigured while the store was opened
        await self.engine.start()
        self.metrics.attach(self.engine)

    def _tick(self, engine: PeerEngine) -> None:
        """On the loop, each engine tick: metrics, and the content digest once complete."""
        self.metrics.update(engine)
        if engine.session.complete and self.digest.stale() and \
                (self._digesting is None or self._digesting.done()):
            self._digesting = asyncio.get_running_loop().create_task(self.digest.refresh())

    async def _torrent(self) -> Metainfo:
        """The torrent: read from PEER_TORRENT, made there from PEER_SEED_PATH when missing,
        or waited for (another machine, the seeder, may be writing it)."""
        path = Path(self.config["PEER_TORRENT"])
        seed = self.config["PEER_SEED_PATH"]
        if seed and not Path(seed).exists() and self.config["PEER_SEED_BYTES"]:
            await asyncio.to_thread(_write_random, Path(seed), self.config["PEER_SEED_BYTES"])
            self._ctx.log.info("peer_seed_made", seed=seed, bytes=self.config["PEER_SEED_BYTES"])
        if not path.exists() and seed:
            metainfo = await asyncio.to_thread(self._make_torrent, Path(seed))
            _publish(path, metainfo.to_bytes())
            self._ctx.log.info("peer_torrent_made", torrent=str(path),
                               info_hash=metainfo.info_hash.hex(), magnet=metainfo.magnet())
            return metainfo
        waited = False
        while not path.exists():
            if not waited:
                self._ctx.log.info("peer_waiting_for_torrent", torrent=str(path))
                waited = True
            await asyncio.sleep(TORRENT_POLL_SECONDS)
        return Metainfo.from_bytes(path.read_bytes())

    def _make_torrent(self, seed: Path) -> Metainfo:
        content = list_content(seed)
        piece_length = self.config["PEER_PIECE_BYTES"] or default_piece_length(
            content.total_length)
        if not self.config["PEER_TRACKER_URL"]:
            raise MetainfoError("PEER_SEED_PATH makes a torrent only with PEER_TRACKER_URL set")
        return build_metainfo(content, announce=self.config["PEER_TRACKER_URL"],
                              piece_length=piece_length, created_by="distlab peer")

    def _open_store(self, metainfo: Metainfo) -> PeerStore:
        """The pieces under this machine's data directory, the seed copied in the first time."""
        directory = self._ctx.data_dir
        seed = self.config["PEER_SEED_PATH"]
        target = directory / metainfo.name
        if seed and not target.exists():
            directory.mkdir(parents=True, exist_ok=True)
            if Path(seed).is_dir():
                shutil.copytree(seed, target)
            else:
                shutil.copyfile(seed, target)
        store = PeerStore(metainfo, directory, clock=time.monotonic,
                          corrupt=self.mode == "corrupt")
        have = store.open()
        self._ctx.log.info("peer_pieces_found", directory=str(directory), pieces_have=len(have),
                           pieces_total=store.layout.piece_count)
        return store

    # -- status --------------------------------------------------------------------------

    def _status(self) -> peer_pb2.StatusReply:
        if self.engine is None:
            return peer_pb2.StatusReply(node=self._ctx.name, peer_id=self.peer_id,
                                        mode=self.mode,
                                        state=f"failed: {self._problem}" if self._problem
                                        else "waiting-for-torrent")
        reply = self.engine.status()
        reply.node = self._ctx.name
        if self.engine.session.complete and not self.digest.stale():  # a few stats: cheap
            reply.content_sha256 = self.digest.value
        return reply

    async def Status(self, request, context):
        return self._status()

    def status(self) -> dict[str, str]:
        async def read() -> peer_pb2.StatusReply:
            return self._status()

        reply = asyncio.run_coroutine_threadsafe(read(), self._loop).result(5)
        return {"state": reply.state, "mode": reply.mode, "info_hash": reply.info_hash,
                "progress": f"{reply.progress:.3f}",
                "pieces": f"{reply.pieces_have}/{reply.pieces_total}",
                "peers": str(len(reply.connections)), "uploaded": str(reply.uploaded),
                "downloaded": str(reply.downloaded), "pieces_bad": str(reply.pieces_bad),
                "banned": str(reply.banned), "listen_port": str(reply.listen_port),
                "upload_rate": f"{reply.upload_rate:.0f}",
                "download_rate": f"{reply.download_rate:.0f}",
                "choked_by": str(sum(1 for c in reply.connections if c.peer_choking)),
                "choking": str(sum(1 for c in reply.connections if c.am_choking))}

    def reconfigure(self, settings: dict[str, str]) -> dict[str, str]:
        """PEER_MODE between normal and corrupt, while the peer runs; nothing else."""
        unknown = sorted(set(settings) - {"PEER_MODE"})
        if unknown:
            raise RoleError(f"no run-time setting {', '.join(unknown)}: a peer changes only "
                            f"PEER_MODE ({' or '.join(RUN_TIME_MODES)}) while it runs")
        wanted = settings.get("PEER_MODE", self.mode)
        if wanted != self.mode:
            if wanted not in RUN_TIME_MODES or self.mode not in RUN_TIME_MODES:
                raise RoleError(f"PEER_MODE {self.mode} -> {wanted}: only "
                                f"{' and '.join(RUN_TIME_MODES)} switch while the peer runs "
                                f"(free-rider is chosen at start)")
            asyncio.run_coroutine_threadsafe(self._switch_mode(wanted), self._loop).result(5)
        return {"PEER_MODE": self.mode}

    async def _switch_mode(self, mode: str) -> None:
        self.mode = mode
        if self.engine is not None:
            self.engine.store.corrupt = mode == "corrupt"
            self.engine.settings = dataclasses.replace(self.engine.settings, mode=mode)
        self._ctx.log.warning("peer_mode_changed", mode=mode)

    def close(self) -> None:
        if self._loop is None:
            return
        grace = self.config["GRACE_SECONDS"]
        asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop).result(grace + 10)

    async def _stop(self, grace: float) -> None:
        if self._main is not None and not self._main.done():
            self._main.cancel()
        if self._digesting is not None:
            self._digesting.cancel()
        if self.engine is not None:
            await self.engine.stop(announce_seconds=min(2.0, grace))
