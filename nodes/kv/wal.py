"""The kv write-ahead log: append, fsync, replay, compact. The only file I/O of the role.

Called by the KV servicer (nodes/kv/service.py) under its write lock. A
record is acknowledged only after `append` returned, i.e. after fsync. The
log is a snapshot (a CHECKPOINT and one PUT per key, written by `replace`)
followed by the records appended since; `bytes_since_snapshot` tells the
servicer when rewriting it pays. What a torn tail, damage in the middle or a
disk error does is nodes.common.durable's policy (`LogFile`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nodes.common.durable import LogFile
from nodes.common.logs import EventLog
from nodes.kv.store import Record, decode_record


class WriteAheadLog:
    def __init__(self, path: Path, *, on_fsync: Callable[[float], None] = lambda _: None,
                 log: EventLog | None = None,
                 on_stop: Callable[[str], None] = lambda _: None) -> None:
        self.path = path
        self._log = LogFile(path, on_fsync=on_fsync, log=log, on_stop=on_stop)
        self._snapshot_bytes = 0

    @property
    def size(self) -> int:
        return self._log.size

    @property
    def bytes_since_snapshot(self) -> int:
        return self._log.size - self._snapshot_bytes

    @property
    def stopped_because(self) -> str | None:
        """Why the log takes no more appends (None: it does)."""
        return self._log.stopped_because

    def replay(self) -> list[Record]:
        """Every record in the log (LogCorrupt when it is damaged in the middle)."""
        return self._log.recover(decode_record)

    def append(self, record: Record) -> None:
        self._log.append(record.encode())

    def replace(self, records: list[Record]) -> None:
        """Atomically make the log hold exactly `records` (restore and compaction)."""
        self._log.replace(record.encode() for record in records)
        self._snapshot_bytes = self._log.size

    def close(self) -> None:
        self._log.close()
