"""The BitTorrent lab's commands: `distlab bt make-torrent` and `distlab bt swarm`.

distlab.bittorrent.lab registers the `bt` group on the main command, which prints a
DistlabError as one line and a hint. `make-torrent` runs in this process and writes only
the .torrent; `swarm` reads the peer machines' status through the Testbed.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.live import Live

from distlab.bittorrent.swarm import fetch_swarm, swarm_table
from distlab.bittorrent.torrents import EXAMPLE_TRACKER, make_torrent, parse_piece_size
from distlab.console import out
from distlab.testbed import Testbed


@click.group()
def bt() -> None:
    """The BitTorrent lab: make torrents for its tracker (nodes.tracker) and swarm."""


@bt.command(name="make-torrent")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--tracker", required=True, metavar="URL",
              help=f"announce URL written into the torrent, e.g. {EXAMPLE_TRACKER}")
@click.option("--piece-size", metavar="SIZE",
              help="a power of two from 16KiB to 64MiB (256KiB, 1MiB, 262144); default: "
                   "the smallest giving at most 2048 pieces")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="where to write it [default: ./NAME.torrent]")
@click.option("--force", is_flag=True, help="overwrite --out if it exists")
def make_torrent_command(path: Path, tracker: str, piece_size: str | None, out_path: Path | None,
                         force: bool) -> None:
    """Write a standard .torrent (BEP 3) of PATH, a file or a directory (hidden files left
    out), and print its infohash and magnet link."""
    size = parse_piece_size(piece_size) if piece_size is not None else None
    metainfo, written = make_torrent(path, tracker, piece_size=size, out=out_path, force=force)
    kind = "multi-file" if metainfo.multi_file else "single-file"
    out.print(f"wrote {written}: {kind}, {len(metainfo.files)} file(s), "
              f"{metainfo.total_length} bytes, {metainfo.piece_count} piece(s) of "
              f"{metainfo.piece_length // 1024} KiB", highlight=False)
    out.print(f"infohash {metainfo.info_hash.hex()}", highlight=False)
    out.print(f"magnet   {metainfo.magnet()}", highlight=False, soft_wrap=True)


@bt.command(name="swarm")
@click.option("--once", is_flag=True, help="print the table once instead of refreshing it")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.2),
              help="seconds between refreshes")
def swarm_command(once: bool, interval: float) -> None:
    """A live table of the lab's peer machines: progress, up/down rates, choked and
    interested connections, bad pieces and bans, time to complete. Ctrl-C ends it."""
    testbed = Testbed()

    def render():
        views, silent = fetch_swarm(testbed.machines())
        title = f"swarm: {len(views)} peer(s), {sum(v.status.complete for v in views)} complete"
        if silent:
            title += " — " + "; ".join(silent)
        return swarm_table(views, title)

    if once:
        out.print(render())
        return
    try:
        with Live(render(), console=out, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                live.update(render())
    except KeyboardInterrupt:
        pass
