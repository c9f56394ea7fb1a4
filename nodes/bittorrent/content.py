"""The files a torrent describes, on disk: which ones, in which order, read as one stream.

`list_content(path)` decides what goes into a torrent made from a path: one file, or
every file under a directory. The choice and the order are torf's, so an infohash
made here equals torf's for the same input: paths sorted name by name, in code point
(= UTF-8 byte) order, so "B" comes before "a" and "a b/x" after "a/x"; hidden files
and directories (a name starting with ".") left out, empty files kept, symbolic
links to files followed. Symbolic links to directories are not followed, so a link back up
the tree cannot make the listing endless. `read_stream(content)` yields the files'
bytes one after the other, in bounded chunks.

Callers: `distlab bt make-torrent` (distlab.bittorrent) and, later, a seeding peer.
Reads only under the path it is given; problems are `ContentError`s (a ValueError)
that name the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 1024 * 1024


class ContentError(ValueError):
    """The path does not exist, cannot be read, or holds nothing to share."""


@dataclass(frozen=True)
class ContentFile:
    relative: tuple[str, ...]  # its path under the torrent's name; () for a single file
    length: int


@dataclass(frozen=True)
class Content:
    root: Path
    files: tuple[ContentFile, ...]
    single_file: bool

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def total_length(self) -> int:
        return sum(file.length for file in self.files)


def list_content(path: str | os.PathLike) -> Content:
    root = Path(path).absolute()
    if not root.exists():
        raise ContentError(f"{path} does not exist")
    if root.is_file():
        length = _size(root)
        if length == 0:
            raise ContentError(f"{path} is empty: a torrent needs at least one byte")
        return Content(root, (ContentFile((), length),), single_file=True)
    if not root.is_dir():
        raise ContentError(f"{path} is neither a file nor a directory")
    found: list[ContentFile] = []

    def refuse(exc: OSError) -> None:
        raise ContentError(f"cannot read {exc.filename}: {exc.strerror}")

    for directory, subdirectories, names in os.walk(root, onerror=refuse):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        for name in names:
            file = Path(directory, name)
            if name.startswith(".") or not file.is_file():
                continue  # hidden, or a dangling link, a socket, a fifo ...
            found.append(ContentFile(file.relative_to(root).parts, _size(file)))
    if not any(file.length for file in found):
        raise ContentError(f"{path} holds no data to share: no file that is neither empty "
                           f"nor hidden")
    found.sort(key=lambda file: file.relative)
    return Content(root, tuple(found), single_file=False)


def _size(file: Path) -> int:
    try:
        if not os.access(file, os.R_OK):
            raise ContentError(f"cannot read {file}: permission denied")
        return file.stat().st_size
    except OSError as exc:
        raise ContentError(f"cannot read {file}: {exc.strerror}") from None


def read_stream(content: Content, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Every file's bytes in torrent order; ContentError when a file changed size meanwhile
    (the piece hashes would describe data that is not there)."""
    for file in content.files:
        path = content.root.joinpath(*file.relative)
        remaining = file.length
        try:
            with path.open("rb") as stream:
                while remaining:
                    chunk = stream.read(min(chunk_bytes, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    yield chunk
        except OSError as exc:
            raise ContentError(f"cannot read {path}: {exc.strerror}") from None
        if remaining:
            raise ContentError(f"{path} shrank while it was being read")
