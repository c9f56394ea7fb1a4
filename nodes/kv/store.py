"""The key-value state machine and its log records. Sans-I/O.

`KVStore` validates requests and turns them into `Record`s; applying a
record is the only way state changes, so replaying the write-ahead log
rebuilds exactly the state that was acknowledged. The servicer and the
tests drive the same class.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from nodes.common.durable import decode_all

MAX_KEY_LENGTH = 256
# CHECKPOINT changes no key: it carries the store's version into a compacted log or a
# snapshot, so versions never go back after the records that raised them are dropped.
PUT, DELETE, CHECKPOINT = 1, 2, 3
OPS = (PUT, DELETE, CHECKPOINT)
_HEADER = struct.Struct(">BQHI")  # op, version, key length, value length
_FRAME = struct.Struct(">II")  # crc32 of the payload, payload length


class KVError(ValueError):
    """A request the store refuses; the message says why."""


@dataclass(frozen=True)
class Record:
    op: int
    version: int
    key: str
    value: bytes = b""

    def encode(self) -> bytes:
        key = self.key.encode()
        payload = _HEADER.pack(self.op, self.version, len(key), len(self.value)) + key + self.value
        return _FRAME.pack(zlib.crc32(payload), len(payload)) + payload


def decode_record(data: bytes, offset: int) -> tuple[Record, int] | None:
    """The whole, intact record starting at `offset` and the offset after it, else None."""
    if offset + _FRAME.size > len(data):
        return None
    crc, length = _FRAME.unpack_from(data, offset)
    start, end = offset + _FRAME.size, offset + _FRAME.size + length
    if end > len(data) or length < _HEADER.size:
        return None
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        return None
    op, version, key_length, value_length = _HEADER.unpack_from(payload)
    if op not in OPS or _HEADER.size + key_length + value_length != length:
        return None
    try:
        key = payload[_HEADER.size:_HEADER.size + key_length].decode()
    except UnicodeDecodeError:  # a crafted frame: its checksum holds, its key is not text
        return None
    return Record(op, version, key, payload[_HEADER.size + key_length:]), end


def decode_records(data: bytes) -> tuple[list[Record], int]:
    """Every intact record from the start of `data`, and the length they cover.

    Decoding stops at the first incomplete or corrupt frame; what to do about the
    bytes after it is the log's decision (nodes.common.durable.LogFile.recover).
    """
    return decode_all(data, decode_record)


def check_key(key: str) -> None:
    if not key:
        raise KVError("key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise KVError(f"key is {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    if not key.isprintable():
        raise KVError("key must be printable text")


class KVStore:
    def __init__(self, *, max_value_bytes: int) -> None:
        self.max_value_bytes = max_value_bytes
        self.version = 0
        self._data: dict[str, tuple[bytes, int]] = {}
        self.value_bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def prepare_put(self, key: str, value: bytes) -> Record:
        check_key(key)
        if len(value) > self.max_value_bytes:
            raise KVError(f"value is {len(value)} bytes; the limit is {self.max_value_bytes}")
        return Record(PUT, self.version + 1, key, value)

    def prepare_delete(self, key: str) -> Record | None:
        """The record deleting `key`, or None when there is nothing to delete."""
        check_key(key)
        return Record(DELETE, self.version + 1, key) if key in self._data else None

    def apply(self, record: Record) -> None:
        self.version = max(self.version, record.version)
        if record.op == CHECKPOINT:
            return
        old = self._data.pop(record.key, None)
        if old is not None:
            self.value_bytes -= len(old[0])
        if record.op == PUT:
            self._data[record.key] = (record.value, record.version)
            self.value_bytes += len(record.value)

    def get(self, key: str) -> tuple[bytes, int] | None:
        check_key(key)
        return self._data.get(key)

    def keys(self, prefix: str, limit: int) -> tuple[list[str], bool]:
        matching = sorted(k for k in self._data if k.startswith(prefix))
        return matching[:limit], len(matching) > limit

    def records(self) -> list[Record]:
        """The current state as records (a snapshot, and a compacted log): its version,
        then one PUT per key."""
        return [Record(CHECKPOINT, self.version, ""),
                *(Record(PUT, version, key, value)
                  for key, (value, version) in sorted(self._data.items()))]
