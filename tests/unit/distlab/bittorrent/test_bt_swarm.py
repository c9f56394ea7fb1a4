"""distlab/bittorrent/swarm.py: the `distlab bt swarm` table from PeerStatus replies."""

from __future__ import annotations

from rich.console import Console

from distlab.bittorrent.swarm import PeerView, pieces_spread, rate, swarm_table
from nodes.bittorrent.wire import Bitfield
from nodes.rpc import peer_pb2


def render(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_a_row_says_progress_rates_choking_and_completion():
    leecher = peer_pb2.StatusReply(
        client="DL 0001", mode="normal", state="leeching", pieces_total=200, pieces_have=50,
        progress=0.25, upload_rate=3 * 1024 * 1024, download_rate=512 * 1024, pieces_bad=1,
        banned=1, connections=[
            peer_pb2.Connection(peer_choking=True, am_choking=False, am_interested=True),
            peer_pb2.Connection(peer_choking=False, am_choking=True, peer_interested=True)])
    seeder = peer_pb2.StatusReply(client="DL 0001", mode="corrupt", state="seeding",
                                  pieces_total=200, pieces_have=200, progress=1.0,
                                  complete=True)
    waiting = peer_pb2.StatusReply(mode="normal", state="waiting-for-torrent")
    text = render(swarm_table([PeerView("leecher-1", leecher), PeerView("seeder-1", seeder),
                               PeerView("leecher-2", waiting)]))
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert "25% (50/200)" in rows["leecher-1"] and "3.0 MiB/s" in rows["leecher-1"]
    assert "512.0 KiB/s" in rows["leecher-1"] and "1/1" in rows["leecher-1"]
    assert "100% (200/200)" in rows["seeder-1"] and "seed" in rows["seeder-1"]
    assert "corrupt" in rows["seeder-1"]
    assert "waiting-for-torrent" in rows["leecher-2"]


def test_rates_in_readable_units():
    assert rate(0) == "0 B/s"
    assert rate(2048) == "2.0 KiB/s"
    assert rate(1.5 * 1024 * 1024) == "1.5 MiB/s"


def test_the_spread_counts_the_pieces_some_peer_holds():
    def view(name, pieces, total=10):
        status = peer_pb2.StatusReply(pieces_total=total,
                                      have=Bitfield.of(pieces, total).bits)
        return PeerView(name, status)

    assert pieces_spread([view("a", {0, 1, 2}), view("b", {2, 3})]) == (4, 10)
    assert pieces_spread([view("a", set(range(5))), view("b", set(range(5, 10)))]) == (10, 10)
    waiting = PeerView("c", peer_pb2.StatusReply(state="waiting-for-torrent"))
    assert pieces_spread([waiting]) == (0, 0)
