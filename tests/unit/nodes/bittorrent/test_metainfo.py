"""nodes/bittorrent/metainfo.py and content.py: torrents made here hash like torf's, and
hostile .torrent files are refused with a MetainfoError naming the field."""

from __future__ import annotations

import hashlib
import os

import pytest
import torf
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.bittorrent.bencode import decode, encode
from nodes.bittorrent.content import ContentError, list_content
from nodes.bittorrent.metainfo import (
    Metainfo,
    MetainfoError,
    build_metainfo,
    check_piece_length,
    default_piece_length,
    hash_pieces,
)

TRACKER = "http://tracker:6969/announce"


@pytest.fixture
def tree(tmp_path):
    """A directory as users have them: nested files, an empty one, hidden ones, mixed case."""
    root = tmp_path / "album"
    (root / "disc 2").mkdir(parents=True)
    (root / "disc").mkdir()
    (root / "disc" / "x").write_bytes(b"x")
    (root / ".git").mkdir()
    (root / "B-side.bin").write_bytes(os.urandom(300_000))
    (root / "a.txt").write_bytes(os.urandom(40_000))
    (root / "disc 2" / "track.bin").write_bytes(os.urandom(70_001))
    (root / "empty").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"junk")
    (root / ".git" / "HEAD").write_bytes(b"junk")
    return root


def make(path, piece_length: int) -> Metainfo:
    return build_metainfo(list_content(path), announce=TRACKER, piece_length=piece_length,
                          created_by="distlab test", creation_date=1_700_000_000)


@pytest.mark.parametrize("piece_length", [16 * 1024, 256 * 1024])
@pytest.mark.parametrize("what", ["directory", "single file"])
def test_infohash_equals_torfs(tree, what, piece_length):
    path = tree if what == "directory" else tree / "B-side.bin"
    ours = make(path, piece_length)
    theirs = torf.Torrent(str(path), trackers=[TRACKER], piece_size=piece_length)
    theirs.generate()
    assert ours.info_hash.hex() == theirs.infohash
    assert ours.piece_hashes == theirs.metainfo["info"]["pieces"]
    assert ours.multi_file == (what == "directory")


def test_a_directory_lists_files_like_other_tools(tree):
    made = make(tree, 16 * 1024)
    assert [file.path for file in made.files] == [
        ("B-side.bin",), ("a.txt",), ("disc", "x"), ("disc 2", "track.bin"), ("empty",)]
    assert made.name == "album" and made.total_length == 410_002
    assert made.piece_count == -(-410_002 // (16 * 1024))
    assert made.files[1].offset == 300_000


def test_a_torrent_reads_back_as_it_was_written(tree):
    made = make(tree, 16 * 1024)
    again = Metainfo.from_bytes(made.to_bytes())
    assert again == made
    assert again.announce == TRACKER
    assert decode(made.to_bytes())[b"creation date"] == 1_700_000_000
    assert made.magnet() == (f"magnet:?xt=urn:btih:{made.info_hash.hex()}&dn=album"
                             f"&tr=http%3A%2F%2Ftracker%3A6969%2Fannounce")


def test_pieces_are_sha1_of_the_concatenated_stream():
    data = os.urandom(50_000)
    expected = b"".join(hashlib.sha1(data[i:i + 16384]).digest()
                        for i in range(0, len(data), 16384))
    chunked = [data[i:i + 777] for i in range(0, len(data), 777)]
    assert hash_pieces(chunked, 16384) == expected
    assert hash_pieces([data], 16384) == expected
    assert hash_pieces([], 16384) == b""


@pytest.mark.parametrize("piece_length", [0, 8192, 16 * 1024 + 1, 3 * 16 * 1024,
                                          128 * 1024 * 1024])
def test_piece_length_must_be_a_power_of_two_from_16_kib(piece_length):
    with pytest.raises(MetainfoError, match="power of two"):
        check_piece_length(piece_length)


def test_default_piece_length_keeps_about_2048_pieces():
    assert default_piece_length(1) == 16 * 1024
    assert default_piece_length(4 * 1024 * 1024) == 16 * 1024
    assert default_piece_length(1024 ** 3) == 512 * 1024
    assert default_piece_length(1024 ** 5) == 64 * 1024 * 1024


def test_content_that_cannot_be_shared_is_refused(tmp_path):
    with pytest.raises(ContentError, match="does not exist"):
        list_content(tmp_path / "missing")
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(ContentError, match="no data to share"):
        list_content(tmp_path / "empty-dir")
    (tmp_path / "zero").write_bytes(b"")
    with pytest.raises(ContentError, match="is empty"):
        list_content(tmp_path / "zero")


def test_a_directory_link_back_up_the_tree_is_not_followed(tree):
    (tree / "loop").symlink_to(tree)
    (tree / "link.bin").symlink_to(tree / "a.txt")
    paths = [file.relative for file in list_content(tree).files]
    assert ("link.bin",) in paths
    assert not any(path[0] == "loop" for path in paths)


def info(**fields):
    base = {"name": "f", "piece length": 16384, "length": 10, "pieces": b"x" * 20}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


@pytest.mark.parametrize("torrent, fragment", [
    (b"i1e", "top level is not a dict"),
    (b"d4:infoi1ee", "no info dict"),
    (b"d4:info", "not a .torrent: bencode"),
    (b"d4:info9999999999:x", "claims 9999999999 bytes"),
    (b"d4:info" + b"l" * 10_000, "nested deeper than"),
    (b"d4:infod4:name" + b"i1" + b"0" * 5000 + b"e", "not a .torrent"),
    ({"info": info(name=None)}, "info.name is missing"),
    ({"info": info(name=b"\xff")}, "not UTF-8"),
    ({"info": info(name="..")}, "not a safe file name"),
    ({"info": info(name="a/b")}, "not a safe file name"),
    ({"info": info(**{"piece length": 0})}, "piece length 0"),
    ({"info": info(**{"piece length": b"16"})}, "not an integer"),
    ({"info": info(pieces=b"x" * 19)}, "20-byte SHA-1"),
    ({"info": info(pieces=b"x" * 40)}, "holds 2 hashes"),
    ({"info": info(length=-1)}, "negative"),
    ({"info": info(length=0, pieces=b"")}, "no data"),
    ({"info": info(files=[{"length": 10, "path": ["a"]}])}, "both or neither"),
    ({"info": info(length=None, files=[])}, "non-empty list"),
    ({"info": info(length=None, files=[{"length": 10, "path": []}])}, "path is not"),
    ({"info": info(length=None, files=[{"length": 10, "path": ["..", "etc"]}])}, "safe"),
    ({"info": info(length=None, files=[{"length": 5, "path": ["a"]},
                                       {"length": 5, "path": ["a"]}])}, "listed twice"),
    ({"info": info(length=None, files=[b"a"])}, r"files\[0\] is not a dict"),
    ({"announce": 5, "info": info()}, "announce is missing or not a byte string"),
])
def test_hostile_torrents_are_refused_naming_the_field(torrent, fragment):
    data = torrent if isinstance(torrent, bytes) else encode(torrent)
    with pytest.raises(MetainfoError, match=fragment):
        Metainfo.from_bytes(data)


def test_unknown_fields_are_kept_in_the_infohash():
    plain = Metainfo.from_bytes(encode({"info": info()}))
    private = Metainfo.from_bytes(encode({"info": info(private=1)}))
    assert plain.info_hash != private.info_hash
    assert private.to_bytes() == encode({"info": info(private=1)})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_reader(data):
    try:
        Metainfo.from_bytes(b"d4:info" + data + b"e")
    except MetainfoError:
        pass
