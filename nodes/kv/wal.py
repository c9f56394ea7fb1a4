"""The kv write-ahead log: append, fsync, replay, replace. The only file I/O of the role.

A record is acknowledged only after `append` returned, i.e. after fsync.
On open, a torn tail (a crash mid-write) is cut off so new records follow
the last intact one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from nodes.kv.store import Record, decode_records


class WriteAheadLog:
    def __init__(self, path: Path, *, on_fsync: Callable[[float], None] = lambda _: None) -> None:
        self.path = path
        self._on_fsync = on_fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - held open for the node's lifetime

    def replay(self) -> list[Record]:
        data = self.path.read_bytes()
        records, intact = decode_records(data)
        if intact < len(data):
            self._file.truncate(intact)
            self._sync()
        return records

    def append(self, record: Record) -> None:
        self._file.write(record.encode())
        self._sync()

    def replace(self, records: list[Record]) -> None:
        """Atomically make the log hold exactly `records` (restore and compaction)."""
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as out:
            for record in records:
                out.write(record.encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._file.close()
        self._file = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self._file.close()

    def _sync(self) -> None:
        started = time.perf_counter()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._on_fsync(time.perf_counter() - started)
