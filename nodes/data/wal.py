"""The replica's write-ahead log and its small durable files. The only file I/O of the role.

Called by the replica service (nodes/data/service.py) under its chain lock.
Same approach as nodes/kv/wal.py: every record is framed with its length and
a CRC32, `append` returns only after fsync (so nothing is acknowledged before
it is on disk), `replay` drops a torn tail, and `replace` swaps in a new
log atomically (write, fsync, rename, fsync the directory). A log is a
snapshot (SNAPSHOT records, written only by `replace`, at the start) followed
by updates in seq order. The durable-file mechanics and what a disk error or
a damaged log does (also for the membership marker and the master's
configuration) are nodes.common.durable's.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError, Message

from nodes.common.durable import LogFile, decode_all
from nodes.common.logs import EventLog
from nodes.rpc import chain_pb2

UPDATE, SNAPSHOT = 1, 2
_FRAME = struct.Struct(">IIB")  # crc32 of kind+payload, payload length, kind
_MESSAGE_OF_KIND = {UPDATE: chain_pb2.Update, SNAPSHOT: chain_pb2.SyncChunk}


@dataclass
class Replayed:
    """What a log holds: the snapshot it starts from (maybe empty at seq 0), then updates."""

    snapshot: list[chain_pb2.KeyValue] = field(default_factory=list)
    snapshot_seq: int = 0
    updates: list[chain_pb2.Update] = field(default_factory=list)


def _frame(kind: int, payload: bytes) -> bytes:
    header = bytes((kind,)) + payload
    return struct.pack(">II", zlib.crc32(header), len(payload)) + header


def decode_frame(data: bytes, offset: int) -> tuple[Message, int] | None:
    """The whole, intact record (an Update or a SyncChunk) at `offset` and the offset
    after it, else None."""
    if offset + _FRAME.size > len(data):
        return None
    crc, length, kind = _FRAME.unpack_from(data, offset)
    end = offset + _FRAME.size + length
    if end > len(data) or kind not in _MESSAGE_OF_KIND:
        return None
    if zlib.crc32(data[offset + 8:end]) != crc:
        return None
    try:  # a frame whose checksum holds but does not parse is no record either
        return _MESSAGE_OF_KIND[kind].FromString(data[offset + _FRAME.size:end]), end
    except DecodeError:
        return None


def replayed_from(records: list[Message]) -> Replayed:
    replayed = Replayed()
    for record in records:
        if isinstance(record, chain_pb2.Update):
            replayed.updates.append(record)
        else:
            replayed.snapshot.extend(record.entries)
            replayed.snapshot_seq = record.seq
    return replayed


def decode_log(data: bytes) -> tuple[Replayed, int]:
    """Every intact record from the start of `data`, and the length they cover.

    Decoding stops at the first incomplete or corrupt frame; what to do about the
    bytes after it is the log's decision (nodes.common.durable.LogFile.recover).
    """
    records, intact = decode_all(data, decode_frame)
    return replayed_from(records), intact


class ChainLog:
    def __init__(self, path: Path, *, on_fsync: Callable[[float], None] = lambda _: None,
                 log: EventLog | None = None,
                 on_stop: Callable[[str], None] = lambda _: None) -> None:
        self.path = path
        self._log = LogFile(path, on_fsync=on_fsync, log=log, on_stop=on_stop)
        self.updates_since_snapshot = 0

    @property
    def stopped_because(self) -> str | None:
        """Why the log takes no more appends (None: it does)."""
        return self._log.stopped_because

    def replay(self) -> Replayed:
        """What the log holds (LogCorrupt when it is damaged in the middle)."""
        replayed = replayed_from(self._log.recover(decode_frame))
        self.updates_since_snapshot = len(replayed.updates)
        return replayed

    def append(self, update: chain_pb2.Update) -> None:
        self._log.append(_frame(UPDATE, update.SerializeToString()))
        self.updates_since_snapshot += 1

    def replace(self, chunks: Iterable[chain_pb2.SyncChunk]) -> None:
        """Atomically make the log hold exactly this snapshot (install and compaction)."""
        self._log.replace(_frame(SNAPSHOT, chunk.SerializeToString()) for chunk in chunks)
        self.updates_since_snapshot = 0

    def close(self) -> None:
        self._log.close()
