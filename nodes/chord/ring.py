"""Identifier maths of a Chord ring: ids, intervals, fingers, who owns a key. Sans-I/O.

Identifiers are points on a ring of 2**bits (SHA-1 of a key or an address,
cut to its top `bits` bits; 160 keeps all of SHA-1, 8 makes a ring small
enough to draw). Every routing and membership decision is made of the two
interval tests `between` (open) and `between_right` (half-open, right end
included). `successor_index` and `replica_indices` place keys when every id is
known (the simulator, the tests, the host's ring check); a running peer decides
from its own predecessor instead. Called by `membership`, `keyspace`, the peer
and `distlab.chord`; touches nothing.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

MAX_BITS = 160
MAX_KEY_LENGTH = 256


class RingError(ValueError):
    """A key or an identifier that cannot be placed on the ring; the message says why."""


@dataclass(frozen=True, order=True)
class NodeRef:
    """A ring member as others know it: its identifier and the address it answers on."""

    id: int
    address: str


def check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise RingError(f"the ring has 2**bits identifiers with 1 <= bits <= {MAX_BITS}, "
                        f"not bits={bits}")


def hash_id(text: str, bits: int) -> int:
    """SHA-1 of `text`, its top `bits` bits: the id of an address or a key."""
    digest = int.from_bytes(hashlib.sha1(text.encode()).digest(), "big")
    return digest >> (MAX_BITS - bits)


def check_key(key: str) -> None:
    if not key:
        raise RingError("key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise RingError(f"key is {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    if not key.isprintable():
        raise RingError("key must be printable text")


def key_id(key: str, bits: int) -> int:
    check_key(key)
    return hash_id(key, bits)


def id_width(bits: int) -> int:
    """Hex digits of a formatted id: every id of a ring prints with the same width."""
    return (bits + 3) // 4


def format_id(value: int, bits: int) -> str:
    return f"{value:0{id_width(bits)}x}"


def short_id(value: int, bits: int) -> str:
    """The first 8 hex digits: enough to tell members of a lab apart at a glance."""
    return format_id(value, bits)[:8]


def parse_id(text: str, bits: int) -> int:
    """An identifier written in hex ("0x" optional); RingError when it is not one of this ring."""
    digits = text.strip().lower().removeprefix("0x")
    if not digits:
        raise RingError("id must not be empty")
    if any(c not in "0123456789abcdef" for c in digits):
        raise RingError(f"id {text[:40]!r} is not a hex number")
    significant = digits.lstrip("0") or "0"
    if len(significant) > id_width(bits) or int(significant, 16) >= 1 << bits:
        raise RingError(f"id {text[:40]!r} is out of range: this ring's ids are below "
                        f"2**{bits}")
    return int(significant, 16)


def distance(a: int, b: int, bits: int) -> int:
    """How far clockwise `b` is from `a`."""
    return (b - a) % (1 << bits)


def between(a: int, x: int, b: int) -> bool:
    """x in the open interval (a, b), clockwise; (a, a) is the whole ring but a."""
    if a < b:
        return a < x < b
    return x > a or x < b if a > b else x != a


def between_right(a: int, x: int, b: int) -> bool:
    """x in (a, b], clockwise; (a, a] is the whole ring (a lone node owns every key)."""
    if a < b:
        return a < x <= b
    return x > a or x <= b if a > b else True


def finger_start(node: int, index: int, bits: int) -> int:
    """Where finger `index` of `node` points: the successor of this id is the finger."""
    return (node + (1 << index)) % (1 << bits)


def successor_index(sorted_ids: Sequence[int], ident: int) -> int:
    """Index of the first id at or after `ident`, clockwise: the owner of `ident`."""
    if not sorted_ids:
        raise RingError("an empty ring owns nothing")
    return bisect_left(sorted_ids, ident) % len(sorted_ids)


def replica_indices(sorted_ids: Sequence[int], ident: int, replicas: int) -> list[int]:
    """The owner of `ident` then its next `replicas` successors: every node holding a copy."""
    first = successor_index(sorted_ids, ident)
    count = min(len(sorted_ids), replicas + 1)
    return [(first + step) % len(sorted_ids) for step in range(count)]
