"""nodes/bittorrent/store.py: good pieces land in the files byte for byte, bad ones are
refused, and a restarted store resumes from what it verified (and only that)."""

from __future__ import annotations

import random

import pytest

from nodes.bittorrent.content import list_content
from nodes.bittorrent.layout import BLOCK_SIZE, Layout
from nodes.bittorrent.metainfo import build_metainfo
from nodes.bittorrent.store import PieceStore, StoreError

PIECE = 2 * BLOCK_SIZE


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_torrent(tmp_path, files: dict[str, int], seed=1):
    """A seed directory with `files` of random bytes, and its metainfo at 32 KiB pieces."""
    rng = random.Random(seed)
    source = tmp_path / "seed"
    if len(files) == 1 and "/" not in next(iter(files)):
        source.mkdir()
        (name, size), = files.items()
        path = source / name
        path.write_bytes(rng.randbytes(size))
        content = list_content(path)
    else:
        for name, size in files.items():
            path = source / "album" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(size))
        content = list_content(source / "album")
    metainfo = build_metainfo(content, announce="http://tracker:6969/announce",
                              piece_length=PIECE, created_by="test", creation_date=0)
    return source, metainfo


def piece_bytes(source, metainfo, index) -> bytes:
    stream = b"".join((source / metainfo.name).joinpath(*f.path).read_bytes()
                      if metainfo.multi_file else (source / metainfo.name).read_bytes()
                      for f in metainfo.files)
    return stream[index * PIECE:(index + 1) * PIECE]


def download(store: PieceStore, source, metainfo, pieces) -> None:
    layout = Layout.of(metainfo)
    for index in pieces:
        data = piece_bytes(source, metainfo, index)
        for block in reversed(layout.blocks(index)):  # order of arrival does not matter
            store.put_block(block, data[block.begin:block.begin + block.length])
        assert store.finish_piece(index)


@pytest.mark.parametrize("files", [{"movie.bin": 5 * PIECE + 123},
                                   {"a/one.bin": 40_000, "b.bin": 0, "c.bin": 70_000}])
def test_a_download_writes_files_byte_identical_to_the_seed(tmp_path, files):
    source, metainfo = make_torrent(tmp_path, files)
    store = PieceStore(metainfo, tmp_path / "leech", clock=Clock())
    assert store.open() == set()
    download(store, source, metainfo, range(Layout.of(metainfo).piece_count))
    store.close()
    assert store.complete
    for file in metainfo.files:
        relative = (metainfo.name, *file.path)
        assert (tmp_path / "leech").joinpath(*relative).read_bytes() == \
            source.joinpath(*relative).read_bytes()


def test_a_bad_piece_is_refused_and_not_written(tmp_path):
    source, metainfo = make_torrent(tmp_path, {"movie.bin": 3 * PIECE})
    store = PieceStore(metainfo, tmp_path / "leech", clock=Clock())
    store.open()
    for block in Layout.of(metainfo).blocks(1):
        store.put_block(block, b"\xee" * block.length)
    assert not store.finish_piece(1)
    assert store.have == set()
    with pytest.raises(StoreError, match="not in a verified piece"):
        store.read_block(Layout.of(metainfo).blocks(1)[0])
    download(store, source, metainfo, [1])  # fetched again elsewhere
    assert store.have == {1}


def test_blocks_are_served_from_disk(tmp_path):
    source, metainfo = make_torrent(tmp_path, {"a/x.bin": 20_000, "y.bin": 60_000})
    store = PieceStore(metainfo, tmp_path / "leech", clock=Clock())
    store.open()
    download(store, source, metainfo, [0])
    block = Layout.of(metainfo).blocks(0)[1]  # crosses from x.bin into y.bin
    assert store.read_block(block) == piece_bytes(source, metainfo, 0)[BLOCK_SIZE:PIECE]


def test_a_seeder_without_an_index_finds_every_piece_of_its_file(tmp_path):
    source, metainfo = make_torrent(tmp_path, {"movie.bin": 4 * PIECE + 7})
    store = PieceStore(metainfo, source, clock=Clock())
    assert store.open() == set(range(5)) and store.complete
    assert store.index_path.exists()


def test_a_restarted_store_resumes_from_what_it_checkpointed(tmp_path):
    source, metainfo = make_torrent(tmp_path, {"movie.bin": 6 * PIECE})
    clock = Clock()
    store = PieceStore(metainfo, tmp_path / "leech", clock=clock, checkpoint_seconds=10)
    store.open()
    download(store, source, metainfo, [0, 2])
    clock.now += 10
    download(store, source, metainfo, [4])  # the checkpoint is due: 0, 2, 4 are saved
    download(store, source, metainfo, [5])  # written but not yet in the index
    # a crash here: no close()
    again = PieceStore(metainfo, tmp_path / "leech", clock=clock)
    assert again.open() == {0, 2, 4}


def test_a_piece_damaged_on_disk_is_not_trusted_after_a_restart(tmp_path):
    source, metainfo = make_torrent(tmp_path, {"movie.bin": 3 * PIECE})
    store = PieceStore(metainfo, tmp_path / "leech", clock=Clock())
    store.open()
    download(store, source, metainfo, [0, 1])
    store.close()
    with open(tmp_path / "leech" / "movie.bin", "r+b") as damaged:
        damaged.seek(PIECE + 5)
        damaged.write(b"\0")
    again = PieceStore(metainfo, tmp_path / "leech", clock=Clock())
    assert again.open() == {0}
    assert PieceStore(metainfo, tmp_path / "leech", clock=Clock()).open() == {0}
