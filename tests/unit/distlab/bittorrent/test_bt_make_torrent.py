"""distlab/bittorrent (torrents.py, cli.py): `distlab bt make-torrent` as a user runs it, through
the main command: a standard .torrent written, bad input one error line and a hint."""

from __future__ import annotations

import os

import pytest
import torf
from click.testing import CliRunner

from distlab.bittorrent.torrents import TorrentError, check_tracker_url, parse_piece_size
from distlab.cli import build_cli
from distlab.registry import load_registry
from nodes.bittorrent.metainfo import Metainfo

TRACKER = "http://tracker:6969/announce"


def distlab(*args: str):
    """Run `distlab ARGS` in this process, as the console script would."""
    return CliRunner().invoke(build_cli(load_registry()), list(args))


@pytest.fixture
def movie(tmp_path):
    path = tmp_path / "movie.bin"
    path.write_bytes(os.urandom(100_000))
    return path


def test_make_torrent_writes_a_standard_torrent(movie, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = distlab("bt", "make-torrent", str(movie), "--tracker", TRACKER,
                     "--piece-size", "16KiB")
    assert result.exit_code == 0, result.output
    written = tmp_path / "movie.bin.torrent"
    made = Metainfo.from_bytes(written.read_bytes())
    theirs = torf.Torrent.read(str(written))
    assert made.info_hash.hex() == theirs.infohash
    assert theirs.trackers == [[TRACKER]] and theirs.piece_size == 16 * 1024
    assert f"infohash {made.info_hash.hex()}" in result.output
    assert "7 piece(s) of 16 KiB" in result.output
    assert f"magnet:?xt=urn:btih:{made.info_hash.hex()}" in result.output


def test_an_existing_torrent_is_kept_unless_forced(movie, tmp_path):
    target = tmp_path / "out.torrent"
    target.write_bytes(b"mine")
    refused = distlab("bt", "make-torrent", str(movie), "--tracker", TRACKER, "--out",
                      str(target))
    assert refused.exit_code == 2 and target.read_bytes() == b"mine"
    assert "--force" in refused.stderr
    forced = distlab("bt", "make-torrent", str(movie), "--tracker", TRACKER, "--out",
                     str(target), "--force")
    assert forced.exit_code == 0 and target.read_bytes().startswith(b"d8:announce")


@pytest.mark.parametrize("args, error, hint", [
    (["{missing}", "--tracker", TRACKER], "does not exist", "give a file"),
    (["{empty}", "--tracker", TRACKER], "no data to share", "give a file"),
    (["{movie}", "--tracker", "ftp://tracker/announce"], "is not http://", "--tracker http"),
    (["{movie}", "--tracker", "tracker:6969"], "is not http://", "--tracker http"),
    (["{movie}", "--tracker", "http://:6969/announce"], "has no host", "--tracker http"),
    (["{movie}", "--tracker", "http://tracker:70000/announce"], "does not parse",
     "--tracker http"),
    (["{movie}", "--tracker", "http://tracker/ announce"], "white space", "--tracker http"),
    (["{movie}", "--tracker", TRACKER, "--piece-size", "3000"], "not a power of two",
     "--piece-size 256KiB"),
    (["{movie}", "--tracker", TRACKER, "--piece-size", "8KiB"], "not a power of two",
     "--piece-size 256KiB"),
    (["{movie}", "--tracker", TRACKER, "--piece-size", "big"], "is not a size",
     "--piece-size 256KiB"),
])
def test_bad_input_is_one_error_line_and_a_hint(movie, tmp_path, args, error, hint):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "movie": movie}
    result = distlab("bt", "make-torrent", *[arg.format(**paths) for arg in args],
                     "--out", str(tmp_path / "x.torrent"))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in result.output, result.stderr
    assert lines[0].startswith("distlab: error: ") and error in lines[0]
    assert lines[1].startswith("hint: ") and hint in lines[1]
    assert not (tmp_path / "x.torrent").exists()


@pytest.mark.parametrize("text, size", [("16384", 16384), ("16K", 16384), ("256kib", 262144),
                                        ("1MiB", 1 << 20), (" 4 MB ", 4 << 20)])
def test_piece_sizes_read_in_binary_units(text, size):
    assert parse_piece_size(text) == size


def test_udp_and_https_trackers_are_accepted():
    for url in ("udp://tracker:6969/announce", "https://tracker/announce",
                "http://10.0.0.2:6969/announce"):
        assert check_tracker_url(url) == url
    with pytest.raises(TorrentError):
        check_tracker_url("magnet:?xt=urn:btih:00")


def test_an_unwritable_target_is_a_clear_error(movie, tmp_path):
    result = distlab("bt", "make-torrent", str(movie), "--tracker", TRACKER, "--out",
                     str(tmp_path / "no" / "such" / "dir.torrent"))
    assert result.exit_code == 2 and "cannot write" in result.stderr
