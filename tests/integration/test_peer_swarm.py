"""Peer nodes trading a real torrent on loopback: an in-process tracker, one seeder and three
leechers over real TCP, with choking rounds sped up. Every leecher ends byte-identical to the
seed; a corrupt peer is banned and everyone still completes; a leecher restarted halfway
fetches only what it had not verified; the seeder killed once every piece exists somewhere
leaves the leechers to finish among themselves; hostile bytes on the wire close only that
connection."""

from __future__ import annotations

import hashlib
import socket
import struct
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from distlab.bittorrent.swarm import fetch_swarm, swarm_table
from distlab.machine import Machine
from distlab.runtime.base import MachineInfo
from nodes.bittorrent.bencode import decode
from nodes.bittorrent.metainfo import Metainfo
from nodes.bittorrent.wire import PROTOCOL, Bitfield
from nodes.peer.__main__ import SPEC as PEER_SPEC
from nodes.rpc import control_pb2, peer_pb2, peer_pb2_grpc
from nodes.tracker.__main__ import SPEC as TRACKER_SPEC

FILE_BYTES = 3 * 1024 * 1024 + 12345  # a short last piece
PIECE_BYTES = 32 * 1024
COMPLETE_SECONDS = 30.0
FAST = {"PEER_PORT": 0, "PEER_TICK_SECONDS": 0.2, "PEER_RECHOKE_SECONDS": 1,
        "PEER_OPTIMISTIC_SECONDS": 2, "PEER_REDIAL_SECONDS": 0.5,
        "PEER_ANNOUNCE_RETRY_SECONDS": 0.5}


class Swarm:
    """A tracker and the peers of one torrent, started through the lab fixture."""

    def __init__(self, lab, tmp_path: Path) -> None:
        self.lab = lab
        self.tmp_path = tmp_path
        self.tracker = lab.start("tracker-1", spec=TRACKER_SPEC, TRACKER_HTTP_PORT=0,
                                 TRACKER_UDP_PORT=0, TRACKER_INTERVAL_SECONDS=1,
                                 TRACKER_MIN_INTERVAL_SECONDS=1)
        self.url = f"http://127.0.0.1:{self.tracker.role.http.port}/announce"
        self.seed = tmp_path / "movie.bin"
        self.seed.write_bytes(_random_bytes(FILE_BYTES))
        self.torrent = tmp_path / "movie.bin.torrent"
        self.data_dir = tmp_path / "data"

    def seeder(self, name: str = "seeder-1", **env):
        """A seeder: it makes the torrent from the seed the first time."""
        return self.peer(name, PEER_SEED_PATH=self.seed, PEER_TRACKER_URL=self.url,
                         PEER_PIECE_BYTES=PIECE_BYTES, **env)

    def peer(self, name: str, **env):
        return self.lab.start(name, spec=PEER_SPEC, data_dir=str(self.data_dir),
                              PEER_TORRENT=self.torrent, **{**FAST, **env})

    def engine(self, node):
        return self.lab.wait_until(lambda: node.role.engine, what=f"{node.name} started")

    def wait_complete(self, *nodes, timeout: float = COMPLETE_SECONDS) -> None:
        for node in nodes:
            self.lab.wait_until(lambda n=node: n.role.engine and n.role.engine.session.complete,
                                timeout=timeout, what=f"{node.name} complete")

    def content(self, node) -> bytes:
        return (self.data_dir / node.name / self.seed.name).read_bytes()

    def scrape(self) -> dict:
        info_hash = Metainfo.from_bytes(self.torrent.read_bytes()).info_hash
        url = self.url.replace("/announce", "/scrape") + "?info_hash=" + \
            urllib.parse.quote_from_bytes(info_hash, safe="")
        with urllib.request.urlopen(url, timeout=5) as reply:
            return decode(reply.read())[b"files"][info_hash]

    def status(self, node) -> peer_pb2.StatusReply:
        return peer_pb2_grpc.PeerStatusStub(self.lab.channel(node)).Status(
            peer_pb2.StatusRequest(), timeout=5)


def _random_bytes(count: int) -> bytes:
    blocks, seed = [], b"distlab"
    while sum(map(len, blocks)) < count:
        seed = hashlib.sha256(seed).digest()
        blocks.append(hashlib.sha512(seed).digest() * 16)
    return b"".join(blocks)[:count]


def _have(node) -> set[int]:
    while True:
        try:
            return set(node.role.engine.store.have)
        except RuntimeError:  # the loop thread added a piece while we copied
            continue


@pytest.fixture
def swarm(lab, tmp_path):
    return Swarm(lab, tmp_path)


def test_three_leechers_end_with_the_seed_and_the_tracker_counts_four_complete(swarm, lab):
    # Capped, so the seeder alone cannot feed everyone: the leechers must trade.
    seeder = swarm.seeder(PEER_UPLOAD_RATE_BYTES=4 * 1024 * 1024)
    leechers = [swarm.peer(f"leecher-{i}") for i in (1, 2, 3)]
    swarm.wait_complete(*leechers)
    original = swarm.seed.read_bytes()
    for leecher in leechers:
        assert swarm.content(leecher) == original
    lab.wait_until(lambda: swarm.scrape()[b"complete"] == 4, what="scrape complete = 4")

    status = swarm.status(leechers[0])
    assert status.complete and status.progress == 1.0 and status.state == "seeding"
    assert status.pieces_total == status.pieces_have == -(-FILE_BYTES // PIECE_BYTES)
    assert status.client == "DL 0001" and status.connections
    assert {c.client for c in status.connections} <= {"DL 0001", ""}
    assert swarm.status(seeder).uploaded > 0
    statuses = [swarm.status(leecher) for leecher in leechers]
    assert sum(status.uploaded for status in statuses) > 0  # leechers traded among themselves
    for status in statuses:  # peers that dialled each other at once kept one connection
        ids = [c.peer_id for c in status.connections if c.peer_id]
        assert len(ids) == len(set(ids))
    with pytest.raises(grpc.RpcError) as refused:
        peer_pb2_grpc.PeerStatusStub(lab.bare_channel(seeder)).Status(peer_pb2.StatusRequest(),
                                                                      timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    machines = [Machine(None, MachineInfo(node.name, f"distlab-{node.name}", "bittorrent", "peer",
                                          "peer", "running", "healthy", (), lab.address(node)),
                        credential=lab.credential) for node in (seeder, *leechers)]
    views, silent = fetch_swarm(machines)
    assert not silent and sorted(v.machine for v in views) == ["leecher-1", "leecher-2",
                                                               "leecher-3", "seeder-1"]
    table = swarm_table(views)
    assert table.row_count == 4 and all(v.status.complete for v in views)

    state = lab.control(leechers[2]).Status(control_pb2.StatusRequest(), timeout=5).state
    assert state["state"] == "seeding" and state["progress"] == "1.000"
    assert state["pieces"] == f"{status.pieces_total}/{status.pieces_total}"

    assert lab.scrape(leechers[1]).get("distlab_bittorrent_progress_ratio") == 1.0
    metrics = lab.wait_until(
        lambda: (m := lab.scrape(leechers[1])).get("distlab_bittorrent_downloaded_bytes_total")
        >= FILE_BYTES and m, what="downloads counted")
    assert metrics.get("distlab_bittorrent_pieces_verified_total") == \
        -(-FILE_BYTES // PIECE_BYTES)
    assert metrics.get("distlab_bittorrent_pieces_bad_total") == 0
    assert lab.scrape(seeder).get("distlab_bittorrent_uploaded_bytes_total") > 0


def test_a_corrupt_peer_is_banned_and_everyone_still_completes(swarm, lab):
    seeder = swarm.seeder(PEER_UPLOAD_RATE_BYTES=2 * 1024 * 1024)
    swarm.engine(seeder)  # the torrent is made: the corrupt peer seeds the same one
    swarm.seeder("corrupt-1", PEER_MODE="corrupt")
    leechers = [swarm.peer(f"leecher-{i}") for i in (1, 2, 3)]
    swarm.wait_complete(*leechers, timeout=45)
    original = swarm.seed.read_bytes()
    statuses = [swarm.status(leecher) for leecher in leechers]
    for leecher in leechers:
        assert swarm.content(leecher) == original
    assert sum(status.pieces_bad for status in statuses) >= 1
    assert sum(status.banned for status in statuses) >= 1
    for status in statuses:
        assert status.pieces_bad <= status.banned * 2  # a banned peer sends no more bad pieces


def test_a_leecher_restarted_halfway_fetches_only_what_it_had_not_verified(swarm, lab):
    swarm.seeder(PEER_UPLOAD_RATE_BYTES=1024 * 1024)
    first = swarm.peer("leecher-1")
    lab.wait_until(lambda: len(_have(first)) * PIECE_BYTES >= FILE_BYTES // 3
                   if first.role.engine else False, what="a third downloaded")
    lab.stop(first)
    kept = first.role.engine.store.have
    assert 0 < len(kept) < -(-FILE_BYTES // PIECE_BYTES)

    again = swarm.peer("leecher-1")
    swarm.wait_complete(again)
    assert swarm.content(again) == swarm.seed.read_bytes()
    assert again.role.engine.store.have >= kept
    downloaded = again.role.engine.store.downloaded
    missing = FILE_BYTES - sum(again.role.engine.session.layout.piece_size(i) for i in kept)
    # Endgame may fetch a few blocks twice; the kept pieces are never fetched again.
    assert missing <= downloaded <= missing + 8 * 16 * 1024


def test_the_seeder_killed_once_every_piece_is_out_leechers_finish_among_themselves(swarm,
                                                                                      lab):
    seeder = swarm.seeder(PEER_UPLOAD_RATE_BYTES=1536 * 1024)
    leechers = [swarm.peer(f"leecher-{i}") for i in (1, 2, 3)]
    pieces = -(-FILE_BYTES // PIECE_BYTES)

    def spread() -> bool:
        if not all(leecher.role.engine for leecher in leechers):
            return False
        return len(set().union(*(_have(leecher) for leecher in leechers))) == pieces

    lab.wait_until(spread, timeout=COMPLETE_SECONDS, what="every piece at some leecher")
    lab.stop(seeder)
    swarm.wait_complete(*leechers)
    for leecher in leechers:
        assert swarm.content(leecher) == swarm.seed.read_bytes()


def _handshake(info_hash: bytes, peer_id: bytes = b"-XX0001-hostile00000") -> bytes:
    return bytes([len(PROTOCOL)]) + PROTOCOL + bytes(8) + info_hash + peer_id


def _closed_after(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data`, read until the peer closes; fail when it keeps the connection open."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except TimeoutError:
            pytest.fail(f"the peer kept the connection open after {data[:80]!r}")
        except ConnectionResetError:
            pass
    return received


def test_hostile_bytes_close_that_connection_only_and_the_seeder_keeps_serving(swarm, lab):
    seeder = swarm.seeder()
    port = swarm.engine(seeder).listen_port
    info_hash = Metainfo.from_bytes(swarm.torrent.read_bytes()).info_hash
    hello = _handshake(info_hash)

    _closed_after(port, b"GET / HTTP/1.1\r\n\r\n")  # not BitTorrent at all
    _closed_after(port, struct.pack(">IB", 1, 2))  # a message before the handshake
    _closed_after(port, _handshake(bytes(20)))  # a torrent not served here
    for hostile in (struct.pack(">IB", 1 << 30, 7),  # an oversized length prefix
                    struct.pack(">IBIII", 13, 6, 0, 0, 32 * 1024),  # a request over 16 KiB
                    struct.pack(">IBIII", 13, 6, 10_000, 0, 16 * 1024),  # no such piece
                    struct.pack(">IBIII", 13, 6, 0, PIECE_BYTES, 16 * 1024)):  # past its end
        reply = _closed_after(port, hello + hostile)
        assert reply.startswith(bytes([19]) + PROTOCOL)  # it answered, then hung up
        assert reply[68 + 4] == 5 and Bitfield(reply[68 + 5:]).pieces()  # and its bitfield

    leecher = swarm.peer("leecher-1")
    swarm.wait_complete(leecher)
    assert swarm.content(leecher) == swarm.seed.read_bytes()
    assert swarm.status(seeder).state == "seeding"


def test_a_download_cap_bounds_the_transfer_and_a_free_rider_never_uploads(swarm, lab):
    swarm.seeder()
    cap = 1536 * 1024
    capped = swarm.peer("leecher-1", PEER_DOWNLOAD_RATE_BYTES=cap)
    rider = swarm.peer("rider-1", PEER_MODE="free-rider")
    swarm.wait_complete(capped, rider)
    for node in (capped, rider):
        assert swarm.content(node) == swarm.seed.read_bytes()
    # The bucket holds a quarter second's worth at most: the rest came at the cap or slower.
    assert swarm.status(capped).completed_seconds >= (FILE_BYTES - cap / 4) / cap
    assert rider.role.engine.store.uploaded == 0
    assert swarm.status(rider).mode == "free-rider"


def test_with_the_tracker_down_peers_keep_trading_with_the_peers_they_know(swarm, lab):
    swarm.seeder(PEER_UPLOAD_RATE_BYTES=1024 * 1024)
    leechers = [swarm.peer(f"leecher-{i}") for i in (1, 2, 3)]
    lab.wait_until(lambda: all(leecher.role.engine and len(leecher.role.engine.links) >= 3
                               for leecher in leechers), what="everyone connected")
    lab.stop(swarm.tracker)
    swarm.wait_complete(*leechers)
    for leecher in leechers:
        assert swarm.content(leecher) == swarm.seed.read_bytes()
        assert leecher.role.engine.announces_failed >= 1  # it did try, and kept trading


def test_two_seeders_making_the_torrent_at_once_both_serve_it(swarm, lab):
    first, second = swarm.seeder("seeder-1"), swarm.seeder("seeder-2")
    hashes = {swarm.engine(node).session.metainfo.info_hash for node in (first, second)}
    assert len(hashes) == 1  # the creation date differs, the info dict does not
    leecher = swarm.peer("leecher-1")
    swarm.wait_complete(leecher)
    assert swarm.content(leecher) == swarm.seed.read_bytes()
    assert not list(swarm.tmp_path.glob(".*.tmp"))
