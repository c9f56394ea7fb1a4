"""nodes/bittorrent/session.py: whole downloads between in-memory sessions joined by byte
pipes (bytes split at random, a hand-moved clock): a seeder and leechers end byte-identical,
a peer serving corrupt data is banned while the download completes, a restarted leecher
resumes without fetching its verified pieces again, and bad peers are closed."""

from __future__ import annotations

import random

import pytest

from nodes.bittorrent.content import list_content
from nodes.bittorrent.layout import BLOCK_SIZE, Block, Layout
from nodes.bittorrent.metainfo import build_metainfo
from nodes.bittorrent.session import Close, Send, TorrentSession
from nodes.bittorrent.store import PieceStore
from nodes.bittorrent.wire import (
    Bitfield,
    Cancel,
    Handshake,
    Have,
    Interested,
    KeepAlive,
    Request,
    Unchoke,
    WireDecoder,
    encode,
)

PIECE = 2 * BLOCK_SIZE
SIZE = 40 * PIECE + 1000  # 41 pieces, the last one short


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CorruptStore(PieceStore):
    """What a peer in the corrupt-data test mode serves: every block's bytes flipped."""

    def read_block(self, block: Block) -> bytes:
        return bytes(byte ^ 0xFF for byte in super().read_block(block))


class Network:
    """Sessions by name joined by byte pipes; each sends at most `upload_per_second` bytes
    a simulated second (so peers have a capacity, and trading among leechers pays), in
    slices of random size. Closes and bans are recorded."""

    def __init__(self, clock: Clock, seed: int = 1, upload_per_second: int = 64 * 1024) -> None:
        self.clock = clock
        self.rng = random.Random(seed)
        self.upload_per_second = upload_per_second
        self.sessions: dict[str, TorrentSession] = {}
        self.pipes: dict[tuple[str, str], bytearray] = {}
        self.closes: list[tuple[str, Close]] = []

    def add(self, name: str, session: TorrentSession) -> TorrentSession:
        self.sessions[name] = session
        return session

    def connect(self, a: str, b: str) -> None:
        for one, other in ((a, b), (b, a)):
            self.pipes[one, other] = bytearray()
            self.sessions[one].connection_made(other)

    def drop(self, name: str) -> None:
        """`name` crashed: its pipes vanish and its peers see the connections lost."""
        del self.sessions[name]
        for one, other in list(self.pipes):
            if name in (one, other):
                del self.pipes[one, other]
                if other == name:
                    self.sessions[one].connection_lost(name)

    def collect(self) -> None:
        for name, session in list(self.sessions.items()):
            for action in session.take_actions():
                if isinstance(action, Send):
                    if (name, action.peer) in self.pipes:
                        self.pipes[name, action.peer] += action.data
                    continue
                self.closes.append((name, action))
                self.pipes.pop((name, action.peer), None)
                self.pipes.pop((action.peer, name), None)
                if action.peer in self.sessions:
                    self.sessions[action.peer].connection_lost(name)

    def second(self) -> None:
        """One simulated second of traffic: every pipe drained as far as budgets allow."""
        budget = dict.fromkeys(self.sessions, self.upload_per_second)
        moved = True
        while moved:
            moved = False
            for (sender, target) in list(self.pipes):
                if sender in self.sessions and budget[sender] > 0:
                    self.sessions[sender].serve(target, budget[sender])
            self.collect()
            for (sender, target), pipe in list(self.pipes.items()):
                if not pipe or budget[sender] <= 0 or (sender, target) not in self.pipes:
                    continue
                size = min(len(pipe), budget[sender], self.rng.randint(1, 20_000))
                data = bytes(pipe[:size])
                del pipe[:size]
                budget[sender] -= size
                self.sessions[target].data_received(sender, data)
                moved = True

    def run(self, done, max_seconds: int = 900) -> None:
        for _ in range(max_seconds):
            self.second()
            if done():
                return
            self.clock.now += 1
            for session in list(self.sessions.values()):
                session.tick()
        raise AssertionError(f"not done after {max_seconds} simulated seconds")

    def bans(self) -> set[tuple[str, str]]:
        return {(name, close.peer) for name, close in self.closes if close.ban}


@pytest.fixture
def torrent(tmp_path):
    seed_dir = tmp_path / "seeder"
    seed_dir.mkdir()
    (seed_dir / "movie.bin").write_bytes(random.Random(9).randbytes(SIZE))
    metainfo = build_metainfo(list_content(seed_dir / "movie.bin"), announce="http://t/announce",
                              piece_length=PIECE, created_by="test", creation_date=0)
    return metainfo, seed_dir


def peer_id(name: str) -> bytes:
    return f"-DL0001-{name:>12}".encode()


def session(name, metainfo, directory, clock, *, store_class=PieceStore, seed=0):
    store = store_class(metainfo, directory, clock=clock)
    store.open()
    return TorrentSession(store, peer_id=peer_id(name), clock=clock,
                          rng=random.Random(f"{name}{seed}"), pipeline_depth=6)


def test_a_seeder_and_three_leechers_end_byte_identical(tmp_path, torrent):
    metainfo, seed_dir = torrent
    clock = Clock()
    net = Network(clock)
    net.add("seeder", session("seeder", metainfo, seed_dir, clock))
    leechers = ["l1", "l2", "l3"]
    for name in leechers:
        net.add(name, session(name, metainfo, tmp_path / name, clock))
    for a, b in [("seeder", "l1"), ("seeder", "l2"), ("seeder", "l3"), ("l1", "l2"),
                 ("l1", "l3"), ("l2", "l3")]:
        net.connect(a, b)
    net.run(lambda: all(net.sessions[name].complete for name in leechers))
    original = (seed_dir / "movie.bin").read_bytes()
    for name in leechers:
        net.sessions[name].store.close()
        assert (tmp_path / name / "movie.bin").read_bytes() == original
    assert not net.bans()
    # the leechers traded among themselves, not only with the seeder
    assert any(net.sessions[a].connections[b].uploaded for a in leechers for b in leechers
               if a != b)


def test_a_peer_serving_corrupt_data_is_banned_and_the_download_completes(tmp_path, torrent):
    metainfo, seed_dir = torrent
    clock = Clock()
    net = Network(clock, seed=4)
    net.add("seeder", session("seeder", metainfo, seed_dir, clock))
    net.add("liar", session("liar", metainfo, seed_dir, clock, store_class=CorruptStore))
    leecher = net.add("leecher", session("leecher", metainfo, tmp_path / "leecher", clock))
    net.connect("seeder", "leecher")
    net.connect("liar", "leecher")
    net.run(lambda: leecher.complete)
    leecher.store.close()
    assert (tmp_path / "leecher" / "movie.bin").read_bytes() == \
        (seed_dir / "movie.bin").read_bytes()
    assert net.bans() == {("leecher", "liar")}
    assert leecher.bad_pieces >= 1 and "seeder" in leecher.connections


def test_a_restarted_leecher_resumes_without_fetching_its_verified_pieces(tmp_path, torrent):
    metainfo, seed_dir = torrent
    clock = Clock()
    net = Network(clock)
    seeder = net.add("seeder", session("seeder", metainfo, seed_dir, clock))
    leecher = net.add("leecher", session("leecher", metainfo, tmp_path / "leecher", clock))
    net.connect("seeder", "leecher")
    net.run(lambda: len(leecher.store.have) >= 20)
    # a crash: the leecher's connection drops, nothing is closed cleanly
    net.drop("leecher")
    clock.now += 5
    again = net.add("leecher", session("leecher", metainfo, tmp_path / "leecher", clock, seed=1))
    resumed = set(again.store.have)
    assert len(resumed) >= 15
    net.connect("seeder", "leecher")
    net.run(lambda: again.complete)
    layout = Layout.of(metainfo)
    assert seeder.connections["leecher"].uploaded == sum(
        layout.piece_size(index) for index in range(layout.piece_count) if index not in resumed)
    again.store.close()
    assert (tmp_path / "leecher" / "movie.bin").read_bytes() == \
        (seed_dir / "movie.bin").read_bytes()


# -- one session against a scripted peer ----------------------------------------------------


class ScriptedPeer:
    """Talks to one session as peer "x": sends bytes, reads back the decoded replies."""

    def __init__(self, session: TorrentSession, metainfo) -> None:
        self.session = session
        self.metainfo = metainfo
        self.decoder = WireDecoder(Layout.of(metainfo), metainfo.info_hash)
        session.connection_made("x")

    def send(self, data: bytes) -> None:
        self.session.data_received("x", data)

    def hello(self) -> None:
        self.send(encode(Handshake(self.metainfo.info_hash, peer_id("x"))))

    def replies(self) -> list:
        out = []
        for action in self.session.take_actions():
            out += self.decoder.feed(action.data) if isinstance(action, Send) else [action]
        return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def x(torrent, clock) -> ScriptedPeer:
    metainfo, seed_dir = torrent
    return ScriptedPeer(session("seeder", metainfo, seed_dir, clock), metainfo)


def test_a_seeder_greets_with_its_bitfield_and_serves_an_unchoked_peer(x, torrent):
    _, seed_dir = torrent
    assert x.replies()[1] == Bitfield.of(range(41), 41)
    block = Block(3, BLOCK_SIZE, BLOCK_SIZE)
    x.hello()
    x.send(encode(Request(block)))
    assert x.replies() == []  # choked: the request is dropped
    x.send(encode(Interested()))
    x.session.tick()
    assert x.replies() == [Unchoke()]
    x.send(encode(Request(block)))
    assert x.replies() == []  # queued until the adapter says the socket can take more
    assert x.session.serve("x", BLOCK_SIZE - 1) == 0
    assert x.session.serve("x", BLOCK_SIZE) == BLOCK_SIZE
    (piece,) = x.replies()
    start = 3 * PIECE + BLOCK_SIZE
    assert piece.data == (seed_dir / "movie.bin").read_bytes()[start:start + BLOCK_SIZE]


def test_a_flood_of_requests_closes_the_connection_and_a_cancel_unqueues(x):
    x.hello()
    x.send(encode(Interested()))
    x.session.tick()
    block = Block(0, 0, BLOCK_SIZE)
    x.send(encode(Request(block)) + encode(Cancel(block)))
    assert x.session.serve("x", 10**9) == 0
    x.replies()
    x.send(encode(Request(block)) * 501)
    assert any(isinstance(a, Close) and "requests queued" in a.reason for a in x.replies())


@pytest.mark.parametrize("data, reason", [
    (b"GET /announce HTTP/1.1\r\n", "not a BitTorrent handshake"),
    (encode(Interested()), "not a BitTorrent handshake"),
    (encode(Request(Block(0, 0, BLOCK_SIZE))), "not a BitTorrent handshake"),
])
def test_an_unreadable_handshake_closes_at_once(x, data, reason):
    x.replies()
    x.send(data)
    (close,) = x.replies()
    assert isinstance(close, Close) and reason in close.reason and not close.ban
    assert "x" not in x.session.connections


@pytest.mark.parametrize("message, reason", [
    (encode(Request(Block(0, 0, BLOCK_SIZE * 2))), "not a block of at most"),
    (encode(Have(41)), "has 41 pieces"),
    ((10**6).to_bytes(4, "big") + b"\x07", "longer than any"),
])
def test_a_peer_breaking_the_protocol_is_closed(x, message, reason):
    x.hello()
    x.send(message)
    assert any(isinstance(a, Close) and reason in a.reason for a in x.replies())


def test_a_second_bitfield_adds_pieces_as_aria2_sends_it(x):
    x.hello()
    x.send(encode(Bitfield.of({1}, 41)) + encode(Interested()) + encode(Bitfield.of({1, 2}, 41)))
    assert not any(isinstance(a, Close) for a in x.replies())
    assert x.session.picker.pieces_of("x") == 2


def test_a_silent_peer_is_closed_and_a_quiet_link_kept_alive(x, clock):
    x.hello()
    x.replies()
    clock.now += 90
    x.send(encode(Interested()))
    x.session.tick()
    assert KeepAlive() in x.replies()
    clock.now += 180
    x.session.tick()
    assert any(isinstance(a, Close) and "silent" in a.reason for a in x.replies())


def test_a_connection_to_ourselves_is_closed(torrent, clock):
    metainfo, seed_dir = torrent
    me = ScriptedPeer(session("x", metainfo, seed_dir, clock), metainfo)
    me.hello()
    assert any(isinstance(a, Close) and "ourselves" in a.reason for a in me.replies())
