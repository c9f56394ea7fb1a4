"""The replica's write-ahead log and its small durable files. The only file I/O of the role.

Same approach as nodes/kv/wal.py: every record is framed with its length and
a CRC32, `append` returns only after fsync (so nothing is acknowledged before
it is on disk), `replay` cuts a torn tail off, and `replace` swaps in a new
log atomically (write, fsync, rename, fsync the directory). A log is a
snapshot (SNAPSHOT records, written only by `replace`, at the start) followed
by updates in seq order. The durable-file mechanics (also used for the
membership marker and the master's configuration) are nodes.common.durable's.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nodes.common.durable import LogFile
from nodes.rpc import chain_pb2

UPDATE, SNAPSHOT = 1, 2
_FRAME = struct.Struct(">IIB")  # crc32 of kind+payload, payload length, kind


@dataclass
class Replayed:
    """What a log holds: the snapshot it starts from (maybe empty at seq 0), then updates."""

    snapshot: list[chain_pb2.KeyValue] = field(default_factory=list)
    snapshot_seq: int = 0
    updates: list[chain_pb2.Update] = field(default_factory=list)


def _frame(kind: int, payload: bytes) -> bytes:
    header = bytes((kind,)) + payload
    return struct.pack(">II", zlib.crc32(header), len(payload)) + header


def decode_log(data: bytes) -> tuple[Replayed, int]:
    """Every intact record from the start of `data`, and the length they cover.

    Decoding stops at the first incomplete or corrupt frame: acknowledgements
    wait for fsync, so what follows it was never acknowledged.
    """
    replayed, offset = Replayed(), 0
    while offset + _FRAME.size <= len(data):
        crc, length, kind = _FRAME.unpack_from(data, offset)
        end = offset + _FRAME.size + length
        if end > len(data) or zlib.crc32(data[offset + 8:end]) != crc:
            break
        payload = data[offset + _FRAME.size:end]
        try:
            if kind == UPDATE:
                replayed.updates.append(chain_pb2.Update.FromString(payload))
            elif kind == SNAPSHOT:
                chunk = chain_pb2.SyncChunk.FromString(payload)
                replayed.snapshot.extend(chunk.entries)
                replayed.snapshot_seq = chunk.seq
            else:
                break
        except Exception:  # noqa: BLE001 - a frame whose checksum holds but does not parse
            break
        offset = end
    return replayed, offset


class ChainLog:
    def __init__(self, path: Path, *, on_fsync: Callable[[float], None] = lambda _: None) -> None:
        self.path = path
        self._log = LogFile(path, on_fsync=on_fsync)
        self.updates_since_snapshot = 0

    def replay(self) -> Replayed:
        data = self.path.read_bytes()
        replayed, intact = decode_log(data)
        if intact < len(data):
            self._log.truncate(intact)
        self.updates_since_snapshot = len(replayed.updates)
        return replayed

    def append(self, update: chain_pb2.Update) -> None:
        self._log.write(_frame(UPDATE, update.SerializeToString()))
        self._log.sync()
        self.updates_since_snapshot += 1

    def replace(self, chunks: Iterable[chain_pb2.SyncChunk]) -> None:
        """Atomically make the log hold exactly this snapshot (install and compaction)."""
        self._log.replace(_frame(SNAPSHOT, chunk.SerializeToString()) for chunk in chunks)
        self.updates_since_snapshot = 0

    def close(self) -> None:
        self._log.close()
