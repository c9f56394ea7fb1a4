"""Bencoding (BEP 3): a small strict codec for .torrent files and tracker responses.

`encode` turns ints, byte strings (str is encoded as UTF-8), lists and dicts into
bencoded bytes, keys sorted as BEP 3 requires. `decode` accepts only the canonical
form, so `encode(decode(data)) == data` for everything it accepts and an infohash
computed from a decoded info dict is the hash of the bytes on disk: integers
without leading zeros or `-0`, string lengths without leading zeros, dict keys
byte strings in strictly increasing order, nothing after the value.

Hostile input (a .torrent from anywhere, a tracker's reply) gets a `BencodeError`
(a ValueError) saying where and what: nesting is bounded by `max_depth`, the input
by `max_bytes`, a length or integer by its number of digits, and a string never
claims more bytes than are there, so decoding uses memory in proportion to the
input and never recurses past the bound. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 64  # real metainfo nests 4 deep (dict > info > files > path)
MAX_BYTES = 64 * 1024 * 1024  # 20 bytes per piece: room for 3 million pieces
MAX_INT_DIGITS = 32  # beyond 64-bit, and far below the cost of converting huge digit strings
MAX_LENGTH_DIGITS = 10  # a string of up to 9.9 GB: more than max_bytes allows anyway

Value = int | bytes | list | dict


class BencodeError(ValueError):
    """The input is not canonical bencoding within the bounds; the message says where."""


def encode(value: Any) -> bytes:
    """The bencoding of `value`: int, bytes, str (as UTF-8), list/tuple, dict with bytes
    or str keys. Raises TypeError for anything else (a bug in the caller, not input)."""
    parts: list[bytes] = []
    _encode(value, parts)
    return b"".join(parts)


def _encode(value: Any, parts: list[bytes]) -> None:
    if isinstance(value, bool):  # a bool is an int to Python, never intended here
        raise TypeError("bencoding has no booleans; use 0 or 1")
    if isinstance(value, int):
        parts.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        parts.append(b"%d:" % len(raw))
        parts.append(raw)
    elif isinstance(value, str):
        _encode(value.encode("utf-8"), parts)
    elif isinstance(value, list | tuple):
        parts.append(b"l")
        for item in value:
            _encode(item, parts)
        parts.append(b"e")
    elif isinstance(value, Mapping):
        items: dict[bytes, Any] = {}
        for key, item in value.items():
            raw_key = key.encode("utf-8") if isinstance(key, str) else key
            if not isinstance(raw_key, bytes):
                raise TypeError(f"bencoded dict keys are strings, not {type(key).__name__}")
            if raw_key in items:
                raise ValueError(f"dict key {raw_key!r} appears twice (as str and bytes)")
            items[raw_key] = item
        parts.append(b"d")
        for raw_key in sorted(items):
            _encode(raw_key, parts)
            _encode(items[raw_key], parts)
        parts.append(b"e")
    else:
        raise TypeError(f"cannot bencode a {type(value).__name__}")


def decode(data: bytes, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> Value:
    """The one value `data` encodes; BencodeError when it is not canonical bencoding, is
    nested deeper than `max_depth`, is longer than `max_bytes`, or has bytes left over."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode takes bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise BencodeError(f"bencode: input is {len(data)} bytes; the limit is {max_bytes}")
    decoder = _Decoder(data, max_depth)
    value = decoder.value(0)
    if decoder.position != len(data):
        raise decoder.error(f"{len(data) - decoder.position} bytes left after the value")
    return value


class _Decoder:
    """A cursor over one input; each method reads one item and leaves the cursor after it."""

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.position = 0
        self.max_depth = max_depth

    def error(self, problem: str, at: int | None = None) -> BencodeError:
        return BencodeError(f"bencode: at byte {self.position if at is None else at}: {problem}")

    def value(self, depth: int) -> Value:
        if self.position >= len(self.data):
            raise self.error("input ends where a value should start")
        lead = self.data[self.position]
        if lead == ord("i"):
            return self.integer()
        if 0x30 <= lead <= 0x39:
            return self.string()
        if lead in (ord("l"), ord("d")):
            if depth >= self.max_depth:
                raise self.error(f"nested deeper than {self.max_depth}")
            return self.listing(depth + 1) if lead == ord("l") else self.dictionary(depth + 1)
        raise self.error(f"{bytes([lead])!r} does not start a value")

    def digits(self, end_marker: int, limit: int, what: str) -> tuple[bytes, int]:
        """The bytes before the next `end_marker`, at most `limit` of them, and where
        the marker is."""
        start = self.position
        end = self.data.find(bytes([end_marker]), start, start + limit + 1)
        if end < 0:
            raise self.error(f"{what} is unterminated or longer than {limit} digits")
        return self.data[start:end], end

    def integer(self) -> int:
        start = self.position
        self.position += 1  # the "i"
        text, end = self.digits(ord("e"), MAX_INT_DIGITS + 1, "integer")
        negative = text.startswith(b"-")
        magnitude = text[1:] if negative else text
        if not magnitude or not magnitude.isdigit():
            raise self.error(f"integer {text!r} is not a decimal number", start)
        if len(magnitude) > MAX_INT_DIGITS:
            raise self.error(f"integer has more than {MAX_INT_DIGITS} digits", start)
        if magnitude.startswith(b"0") and (len(magnitude) > 1 or negative):
            raise self.error(f"integer {text.decode()} is not canonical (leading zero or -0)",
                             start)
        self.position = end + 1
        return int(text)

    def string(self) -> bytes:
        start = self.position
        text, colon = self.digits(ord(":"), MAX_LENGTH_DIGITS, "string length")
        if not text.isdigit():
            raise self.error(f"string length {text!r} is not a decimal number", start)
        if text.startswith(b"0") and len(text) > 1:
            raise self.error(f"string length {text.decode()} has a leading zero", start)
        length = int(text)
        first = colon + 1
        if first + length > len(self.data):
            raise self.error(f"string claims {length} bytes; only {len(self.data) - first} remain",
                      start)
        self.position = first + length
        return self.data[first:self.position]

    def listing(self, depth: int) -> list:
        self.position += 1  # the "l"
        items = []
        while True:
            if self.position >= len(self.data):
                raise self.error("list is not terminated")
            if self.data[self.position] == ord("e"):
                self.position += 1
                return items
            items.append(self.value(depth))

    def dictionary(self, depth: int) -> dict:
        self.position += 1  # the "d"
        items: dict[bytes, Value] = {}
        previous: bytes | None = None
        while True:
            if self.position >= len(self.data):
                raise self.error("dict is not terminated")
            lead = self.data[self.position]
            if lead == ord("e"):
                self.position += 1
                return items
            at = self.position
            if not 0x30 <= lead <= 0x39:
                raise self.error("dict key is not a byte string")
            key = self.string()
            if previous is not None and key <= previous:
                raise self.error(f"dict key {key[:40]!r} is "
                          f"{'repeated' if key == previous else 'out of order'}", at)
            previous = key
            items[key] = self.value(depth)
