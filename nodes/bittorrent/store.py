"""The pieces a peer holds, on disk: verified by SHA-1, written in place, resumable.

A `PieceStore` keeps a torrent's files where a user expects them — `DIR/NAME` for a
single file, `DIR/NAME/PATH...` for several — and a resume index beside them
(`DIR/.distlab-<infohash>.pieces`: the bitfield of verified pieces). `open()` finds
what is already there: the pieces the index names, or every piece when there is no
index (a seeder handed a finished file), each re-hashed before it counts. Blocks of a
piece being downloaded are held in memory (`put_block`) until `finish_piece` checks
the piece's SHA-1 against the metainfo: a good piece is written to its files, a bad
one dropped (the picker says who sent it). `read_block` serves verified pieces from
disk, so memory does not grow with the file.

Durability: the files and then the index are fsync'd (`checkpoint`) at most every
`checkpoint_seconds` and when the last piece is in, so a crash costs at most that
much of the download, never a piece marked verified that is not on disk.

Callers: the session (nodes.bittorrent.session). The one module of the peer's cores
that does I/O, and only under its directory; problems are `StoreError`s.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from nodes.bittorrent.layout import Block, Layout
from nodes.bittorrent.metainfo import PIECE_HASH_BYTES, Metainfo
from nodes.bittorrent.wire import Bitfield
from nodes.common.durable import write_atomically

READ_CHUNK = 1024 * 1024  # re-hashing reads a piece this much at a time


class StoreError(Exception):
    """A piece asked for that is not verified, or a file that cannot be read or written."""


class PieceStore:
    def __init__(self, metainfo: Metainfo, directory: Path, *, clock: Callable[[], float],
                 checkpoint_seconds: float = 1.0) -> None:
        self.metainfo = metainfo
        self.layout = Layout.of(metainfo)
        self.directory = Path(directory)
        self.clock = clock
        self.checkpoint_seconds = checkpoint_seconds
        self.have: set[int] = set()
        self.index_path = self.directory / f".distlab-{metainfo.info_hash.hex()}.pieces"
        root = self.directory / metainfo.name
        self._paths = [root.joinpath(*file.path) for file in metainfo.files]
        self._handles: dict[int, int] = {}  # file number -> descriptor, opened when used
        self._blocks: dict[int, dict[int, bytes]] = {}  # piece -> begin -> data
        self._dirty = False
        self._last_checkpoint = clock()

    # -- start and stop ------------------------------------------------------------------

    def open(self) -> set[int]:
        """Creates what is missing, re-verifies what is there; the verified pieces."""
        for path, file in zip(self._paths, self.metainfo.files, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            if file.length == 0:
                path.touch()
        claimed = self._read_index()
        candidates = claimed if claimed is not None else range(self.layout.piece_count)
        self.have = {index for index in candidates if self._on_disk_and_good(index)}
        if self.have != claimed:
            self._dirty = True
            self.checkpoint()
        return set(self.have)

    def close(self) -> None:
        self.checkpoint()
        for handle in self._handles.values():
            os.close(handle)
        self._handles.clear()

    @property
    def complete(self) -> bool:
        return len(self.have) == self.layout.piece_count

    @property
    def files(self) -> tuple[Path, ...]:
        """The content's files on disk, in the torrent's order."""
        return tuple(self._paths)

    # -- downloading ---------------------------------------------------------------------

    def put_block(self, block: Block, data: bytes) -> None:
        self._blocks.setdefault(block.index, {})[block.begin] = data

    def finish_piece(self, index: int) -> bool:
        """Check the piece's SHA-1; write it when good (True), drop its blocks when not."""
        blocks = self._blocks.pop(index, {})
        data = b"".join(blocks[begin] for begin in sorted(blocks))
        if len(data) != self.layout.piece_size(index) or \
                hashlib.sha1(data).digest() != self._expected_hash(index):
            return False
        self._write(index * self.layout.piece_length, data)
        self.have.add(index)
        self._dirty = True
        if self.complete or self.clock() - self._last_checkpoint >= self.checkpoint_seconds:
            self.checkpoint()
        return True

    def checkpoint(self) -> None:
        """Make the verified pieces durable: the files first, then the index naming them."""
        if not self._dirty:
            return
        try:
            for handle in self._handles.values():
                os.fsync(handle)
            write_atomically(self.index_path,
                             Bitfield.of(self.have, self.layout.piece_count).bits)
        except OSError as exc:
            raise StoreError(f"cannot save the pieces under {self.directory}: "
                             f"{exc.strerror}") from None
        self._dirty = False
        self._last_checkpoint = self.clock()

    # -- serving -------------------------------------------------------------------------

    def read_block(self, block: Block) -> bytes:
        if block.index not in self.have or not self.layout.holds(block):
            raise StoreError(f"block {tuple(block)} is not in a verified piece")
        return b"".join(self._read(block.index * self.layout.piece_length + block.begin,
                                   block.length))

    # -- files ---------------------------------------------------------------------------

    def _expected_hash(self, index: int) -> bytes:
        return self.metainfo.piece_hashes[index * PIECE_HASH_BYTES:(index + 1) * PIECE_HASH_BYTES]

    def _read_index(self) -> set[int] | None:
        try:
            bits = self.index_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.index_path}: {exc.strerror}") from None
        if len(bits) != self.layout.bitfield_bytes:
            return None  # not ours, or damaged: look at everything instead
        return {index for index in Bitfield(bits).pieces() if index < self.layout.piece_count}

    def _on_disk_and_good(self, index: int) -> bool:
        hasher = hashlib.sha1()
        start = index * self.layout.piece_length
        size = self.layout.piece_size(index)
        try:
            for offset in range(start, start + size, READ_CHUNK):
                for chunk in self._read(offset, min(READ_CHUNK, start + size - offset)):
                    hasher.update(chunk)
        except StoreError:
            return False
        return hasher.digest() == self._expected_hash(index)

    def _spans(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(file number, offset in that file, length) covering the torrent's byte range."""
        end = offset + length
        for number, file in enumerate(self.metainfo.files):
            low, high = max(offset, file.offset), min(end, file.offset + file.length)
            if low < high:
                yield number, low - file.offset, high - low

    def _handle(self, number: int, *, create: bool) -> int:
        if number not in self._handles:
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            self._handles[number] = os.open(self._paths[number], flags, 0o644)
        return self._handles[number]

    def _write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            for number, file_offset, length in self._spans(offset, len(data)):
                handle = self._handle(number, create=True)
                written = 0
                while written < length:  # pwrite may write less than asked
                    written += os.pwrite(handle, view[written:length], file_offset + written)
                view = view[length:]
        except OSError as exc:
            raise StoreError(f"cannot write under {self.directory}: {exc.strerror}") from None

    def _read(self, offset: int, length: int) -> list[bytes]:
        chunks = []
        try:
            for number, file_offset, span in self._spans(offset, length):
                chunk = os.pread(self._handle(number, create=False), span, file_offset)
                if len(chunk) != span:
                    raise StoreError(f"{self._paths[number]} is shorter than the torrent says")
                chunks.append(chunk)
        except OSError as exc:
            raise StoreError(f"cannot read under {self.directory}: {exc.strerror}") from None
        return chunks
