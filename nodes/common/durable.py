"""Durable files: what a role needs to keep state across a crash, in one place.

`write_atomically` makes a file hold exactly new content (write a temporary,
fsync it, rename over, fsync the directory): a crash leaves the old or the new
file, never a mix. `LogFile` is an append-only file whose `sync` returns only
after fsync. The write-ahead logs of kv and data, and the data-master's
configuration, are built on these.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_atomically(path: Path, blobs: bytes | Iterable[bytes]) -> None:
    """Make `path` hold exactly `blobs` (one bytes or several, concatenated), durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        for blob in ([blobs] if isinstance(blobs, bytes) else blobs):
            out.write(blob)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class LogFile:
    """An append-only file held open; `sync` flushes and fsyncs, timing it for a histogram."""

    def __init__(self, path: Path, *, on_fsync: Callable[[float], None] = lambda _: None) -> None:
        self.path = path
        self._on_fsync = on_fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - held open for the node's lifetime

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def truncate(self, size: int) -> None:
        """Cut the file to `size` bytes (a torn tail found on replay), durably."""
        self._file.truncate(size)
        self.sync()

    def sync(self) -> None:
        started = time.perf_counter()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._on_fsync(time.perf_counter() - started)

    def replace(self, blobs: Iterable[bytes]) -> None:
        """Atomically make the log hold exactly `blobs`, then go on appending after them."""
        write_atomically(self.path, blobs)
        self._file.close()
        self._file = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self._file.close()
