"""The kv write-ahead log: append, fsync, replay, replace. The only file I/O of the role.

A record is acknowledged only after `append` returned, i.e. after fsync.
On open, a torn tail (a crash mid-write) is cut off so new records follow
the last intact one. The durable-file mechanics are nodes.common.durable's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nodes.common.durable import LogFile
from nodes.kv.store import Record, decode_records


class WriteAheadLog:
    def __init__(self, path: Path, *, on_fsync: Callable[[float], None] = lambda _: None) -> None:
        self.path = path
        self._log = LogFile(path, on_fsync=on_fsync)

    def replay(self) -> list[Record]:
        data = self.path.read_bytes()
        records, intact = decode_records(data)
        if intact < len(data):
            self._log.truncate(intact)
        return records

    def append(self, record: Record) -> None:
        self._log.write(record.encode())
        self._log.sync()

    def replace(self, records: list[Record]) -> None:
        """Atomically make the log hold exactly `records` (restore and compaction)."""
        self._log.replace(record.encode() for record in records)

    def close(self) -> None:
        self._log.close()
