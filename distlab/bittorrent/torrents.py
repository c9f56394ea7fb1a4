"""Making a .torrent on the host: what `distlab bt make-torrent` checks, builds and writes.

`make_torrent` lists the content (nodes.bittorrent.content), hashes it into metainfo
(nodes.bittorrent.metainfo) and writes the file; `parse_piece_size` and
`check_tracker_url` read what the user typed. Every problem is a `TorrentError`, a
UsageError the CLI prints as one line and a hint. Reads the content, writes one file.
"""

from __future__ import annotations

import re
import urllib.parse
from importlib.metadata import version
from pathlib import Path

from distlab.errors import UsageError
from nodes.bittorrent.content import ContentError, list_content
from nodes.bittorrent.metainfo import (
    MAX_PIECE_LENGTH,
    MIN_PIECE_LENGTH,
    Metainfo,
    MetainfoError,
    build_metainfo,
    check_piece_length,
    default_piece_length,
)

TRACKER_SCHEMES = ("http", "https", "udp")
EXAMPLE_TRACKER = "http://tracker:6969/announce"
_SIZE = re.compile(r"^\s*(\d+)\s*(k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)
_UNITS = {"k": 1024, "m": 1024 * 1024}


class TorrentError(UsageError):
    """The content, the tracker URL or the piece size cannot make a torrent."""


def parse_piece_size(text: str) -> int:
    """Bytes from "262144", "256K", "256KiB" or "1MiB" (binary units, as piece sizes are);
    TorrentError unless a power of two from 16 KiB to 64 MiB."""
    match = _SIZE.match(text)
    hint = (f"a power of two from {MIN_PIECE_LENGTH // 1024} KiB to "
            f"{MAX_PIECE_LENGTH // (1024 * 1024)} MiB, e.g. --piece-size 256KiB")
    if not match:
        raise TorrentError(f"piece size {text!r} is not a size", hint=hint)
    number, unit = match.groups()
    size = int(number) * _UNITS.get((unit or " ")[0].lower(), 1)
    try:
        check_piece_length(size)
    except MetainfoError:
        raise TorrentError(f"piece size {text} ({size} bytes) is not a power of two from "
                           f"16 KiB to 64 MiB", hint=hint) from None
    return size


def check_tracker_url(url: str) -> str:
    """`url` when it is an announce URL a client can use: http, https or udp, a host, a
    valid port, no spaces; TorrentError otherwise."""
    hint = f"an announce URL, e.g. --tracker {EXAMPLE_TRACKER}"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise TorrentError(f"tracker URL {url!r} does not parse: {exc}", hint=hint) from None
    if parts.scheme not in TRACKER_SCHEMES:
        raise TorrentError(f"tracker URL {url!r} is not http://, https:// or udp://",
                           hint=hint)
    if not parts.hostname:
        raise TorrentError(f"tracker URL {url!r} has no host", hint=hint)
    if any(char.isspace() for char in url):
        raise TorrentError(f"tracker URL {url!r} contains white space", hint=hint)
    return url


def make_torrent(path: Path, tracker: str, *, piece_size: int | None = None,
                 out: Path | None = None, force: bool = False,
                 creation_date: int | None = None) -> tuple[Metainfo, Path]:
    """Hash `path` (a file or a directory) into a .torrent announcing to `tracker`, write
    it to `out` (default: ./<name>.torrent) and return the metainfo and where it went."""
    check_tracker_url(tracker)
    try:
        content = list_content(path)
    except ContentError as exc:
        raise TorrentError(str(exc), hint="give a file, or a directory holding files") \
            from None
    target = out or Path(f"{content.name}.torrent")
    if target.exists() and not force:
        raise TorrentError(f"{target} exists", hint="--force to overwrite it, or --out FILE")
    piece_length = piece_size or default_piece_length(content.total_length)
    try:
        metainfo = build_metainfo(content, announce=tracker, piece_length=piece_length,
                                  created_by=f"distlab {version('distlab')}",
                                  creation_date=creation_date)
    except (ContentError, MetainfoError) as exc:
        raise TorrentError(str(exc), hint="make sure nothing writes to the content meanwhile") \
            from None
    try:
        target.write_bytes(metainfo.to_bytes())
    except OSError as exc:
        raise TorrentError(f"cannot write {target}: {exc.strerror}",
                           hint="--out FILE somewhere writable") from None
    return metainfo, target
