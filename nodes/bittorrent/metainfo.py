"""Metainfo (BEP 3): a torrent's description, built from content or read from a .torrent.

`Metainfo.from_bytes` reads a .torrent strictly (canonical bencoding, every field of
the right type, names that are safe as file names, as many piece hashes as the
lengths need) and keeps the info dict exactly as read, so `info_hash` is the SHA-1
every client computes. `build_metainfo` makes one from `Content` (nodes.bittorrent.
content): single-file (`length`) or multi-file (`files`), SHA-1 of each piece of the
files read as one stream. Fields it does not know (`private`, `source`, ...) are kept.

Callers: `distlab bt make-torrent`, and later the peers. Pure apart from reading the
content it is handed; problems are `MetainfoError`s (a ValueError) saying which field.
"""

from __future__ import annotations

import hashlib
import math
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nodes.bittorrent.bencode import BencodeError, decode, encode
from nodes.bittorrent.content import Content, read_stream

PIECE_HASH_BYTES = 20
MIN_PIECE_LENGTH = 16 * 1024  # the block size peers request: a smaller piece has no point
MAX_PIECE_LENGTH = 64 * 1024 * 1024  # a piece is hashed and checked whole
MAX_READ_PIECE_LENGTH = 256 * 1024 * 1024  # what a torrent made elsewhere may use
INFO_KEY = b"info"


class MetainfoError(ValueError):
    """A .torrent, or what it would be made from, is not valid; the message says which field."""


def check_piece_length(piece_length: int) -> None:
    """What `build_metainfo` accepts: a power of two from 16 KiB to 64 MiB."""
    if not (MIN_PIECE_LENGTH <= piece_length <= MAX_PIECE_LENGTH) or \
            piece_length & (piece_length - 1):
        raise MetainfoError(f"piece length {piece_length} is not a power of two from "
                            f"{MIN_PIECE_LENGTH} (16 KiB) to {MAX_PIECE_LENGTH} (64 MiB)")


def default_piece_length(total_length: int) -> int:
    """The smallest allowed power of two giving at most 2048 pieces: small pieces spread
    through a swarm sooner, and 2048 keeps the .torrent near 40 KB."""
    piece_length = MIN_PIECE_LENGTH
    while piece_length < MAX_PIECE_LENGTH and math.ceil(total_length / piece_length) > 2048:
        piece_length *= 2
    return piece_length


@dataclass(frozen=True)
class FileEntry:
    path: tuple[str, ...]  # under the torrent's name; () in a single-file torrent
    length: int
    offset: int  # where it starts in the stream of all files


@dataclass(frozen=True)
class Metainfo:
    fields: dict[bytes, Any]  # the whole .torrent as decoded, the info dict untouched
    name: str
    piece_length: int
    piece_hashes: bytes  # 20 bytes per piece
    files: tuple[FileEntry, ...]
    multi_file: bool
    info_hash: bytes  # SHA-1 of the bencoded info dict: the swarm's identity

    @classmethod
    def from_bytes(cls, data: bytes) -> Metainfo:
        try:
            fields = decode(data)
        except BencodeError as exc:
            raise MetainfoError(f"not a .torrent: {exc}") from None
        if not isinstance(fields, dict):
            raise MetainfoError("not a .torrent: the top level is not a dict")
        info = fields.get(INFO_KEY)
        if not isinstance(info, dict):
            raise MetainfoError("no info dict")
        if b"announce" in fields:
            _text(fields[b"announce"], "announce")
        name = _file_name(info.get(b"name"), "info.name")
        piece_length = _integer(info.get(b"piece length"), "info.piece length")
        if not 0 < piece_length <= MAX_READ_PIECE_LENGTH:
            raise MetainfoError(f"info.piece length {piece_length} is not between 1 and "
                                f"{MAX_READ_PIECE_LENGTH}")
        pieces = info.get(b"pieces")
        if not isinstance(pieces, bytes) or len(pieces) % PIECE_HASH_BYTES:
            raise MetainfoError("info.pieces is not a byte string of 20-byte SHA-1 hashes")
        files, multi_file = _files(info)
        total = sum(file.length for file in files)
        if total == 0:
            raise MetainfoError("the torrent describes no data (total length 0)")
        expected = math.ceil(total / piece_length)
        if len(pieces) // PIECE_HASH_BYTES != expected:
            raise MetainfoError(f"info.pieces holds {len(pieces) // PIECE_HASH_BYTES} hashes; "
                                f"{total} bytes in pieces of {piece_length} need {expected}")
        return cls(fields, name, piece_length, pieces, files, multi_file,
                   hashlib.sha1(encode(info)).digest())

    def to_bytes(self) -> bytes:
        return encode(self.fields)

    @property
    def announce(self) -> str | None:
        raw = self.fields.get(b"announce")
        return raw.decode() if isinstance(raw, bytes) else None

    @property
    def total_length(self) -> int:
        return sum(file.length for file in self.files)

    @property
    def piece_count(self) -> int:
        return len(self.piece_hashes) // PIECE_HASH_BYTES

    def magnet(self) -> str:
        """A BEP 9 magnet link: the infohash, the name, and the tracker when there is one."""
        link = f"magnet:?xt=urn:btih:{self.info_hash.hex()}&dn={_quote(self.name)}"
        return f"{link}&tr={_quote(self.announce)}" if self.announce else link


def build_metainfo(content: Content, *, announce: str, piece_length: int,
                   created_by: str, creation_date: int | None = None) -> Metainfo:
    """The metainfo of `content`, its pieces hashed from the files on disk."""
    check_piece_length(piece_length)
    info: dict[str, Any] = {"name": content.name, "piece length": piece_length,
                            "pieces": hash_pieces(read_stream(content), piece_length)}
    if content.single_file:
        info["length"] = content.files[0].length
    else:
        info["files"] = [{"length": file.length, "path": list(file.relative)}
                         for file in content.files]
    fields = {"announce": announce, "created by": created_by,
              "creation date": int(time.time()) if creation_date is None else creation_date,
              "info": info}
    return Metainfo.from_bytes(encode(fields))


def hash_pieces(chunks: Iterable[bytes], piece_length: int) -> bytes:
    """The concatenated SHA-1 of each `piece_length` slice of the stream `chunks` makes
    (the last piece may be shorter); holds one chunk at a time."""
    hashes = []
    hasher = hashlib.sha1()
    filled = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            take = min(piece_length - filled, len(view))
            hasher.update(view[:take])
            filled += take
            view = view[take:]
            if filled == piece_length:
                hashes.append(hasher.digest())
                hasher, filled = hashlib.sha1(), 0
    if filled:
        hashes.append(hasher.digest())
    return b"".join(hashes)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# -- field checks ---------------------------------------------------------------------------


def _integer(value: Any, field: str) -> int:
    if not isinstance(value, int):
        raise MetainfoError(f"{field} is missing or not an integer")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, bytes):
        raise MetainfoError(f"{field} is missing or not a byte string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MetainfoError(f"{field} is not UTF-8") from None


def _file_name(value: Any, field: str) -> str:
    """A name a peer can write to disk without leaving its download directory."""
    name = _text(value, field)
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise MetainfoError(f"{field} {name[:60]!r} is not a safe file name")
    return name


def _files(info: dict[bytes, Any]) -> tuple[tuple[FileEntry, ...], bool]:
    if (b"length" in info) == (b"files" in info):
        raise MetainfoError("info has both or neither of length (one file) and files")
    if b"length" in info:
        length = _integer(info[b"length"], "info.length")
        if length < 0:
            raise MetainfoError("info.length is negative")
        return (FileEntry((), length, 0),), False
    listed = info[b"files"]
    if not isinstance(listed, list) or not listed:
        raise MetainfoError("info.files is not a non-empty list")
    files = []
    offset = 0
    seen: set[tuple[str, ...]] = set()
    for index, entry in enumerate(listed):
        where = f"info.files[{index}]"
        if not isinstance(entry, dict):
            raise MetainfoError(f"{where} is not a dict")
        length = _integer(entry.get(b"length"), f"{where}.length")
        if length < 0:
            raise MetainfoError(f"{where}.length is negative")
        parts = entry.get(b"path")
        if not isinstance(parts, list) or not parts:
            raise MetainfoError(f"{where}.path is not a non-empty list")
        path = tuple(_file_name(part, f"{where}.path") for part in parts)
        if path in seen:
            raise MetainfoError(f"{where}.path {'/'.join(path)!r} is listed twice")
        seen.add(path)
        files.append(FileEntry(path, length, offset))
        offset += length
    return tuple(files), True
