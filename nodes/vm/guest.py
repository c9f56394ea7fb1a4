"""What runs inside a vm: a deterministic guest workload and a small KV kept in pages.

Both work through a `Memory` (read/write of page bytes), so the vm role can
put a post-copy page fault behind every access. Neither keeps state outside
the memory except the guest's step counter, which is its whole execution
state: step k writes 64 bytes derived from (seed, k) into a page chosen from
the hot working set with probability `hot_fraction`, else from every guest
page. So the image after N steps is known without running the vm (`expected
_image`), which is how tests check that a migrated image is byte-identical
to one that never moved.

Layout: pages [0, kv_pages) hold the KV as 256-byte slots with linear
probing; the guest writes only pages [kv_pages, pages).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Protocol

from nodes.vm.memory import PAGE_SIZE, MemoryImage

SLOT_BYTES = 256
SLOTS_PER_PAGE = PAGE_SIZE // SLOT_BYTES
MAX_KEY_BYTES = 60
MAX_VALUE_BYTES = SLOT_BYTES - 4 - MAX_KEY_BYTES
_SLOT_HEADER = struct.Struct(">BBH")  # used, key length, value length
WRITE_BYTES = 64


class Memory(Protocol):
    def read(self, page: int, offset: int, length: int) -> bytes: ...

    def write(self, page: int, offset: int, data: bytes) -> None: ...


class KVFull(Exception):
    """Every slot of the KV region holds another key."""


@dataclass(frozen=True)
class GuestLayout:
    pages: int
    kv_pages: int
    hot_pages: int
    hot_fraction: float
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.kv_pages < self.pages:
            raise ValueError(f"kv_pages must leave guest pages: 0 <= {self.kv_pages} "
                             f"< {self.pages}")
        if not 1 <= self.hot_pages <= self.guest_pages:
            raise ValueError(f"hot_pages must be 1..{self.guest_pages}")
        if not 0 <= self.hot_fraction <= 1:  # NaN fails this too
            raise ValueError("hot_fraction must be in [0, 1]")

    @property
    def guest_pages(self) -> int:
        return self.pages - self.kv_pages

    def step(self, k: int) -> tuple[int, int, bytes]:
        """Guest step k: (page, offset, data), from (seed, k) alone."""
        digest = hashlib.blake2b(struct.pack(">QQ", self.seed, k), digest_size=16).digest()
        choice, pick, where = struct.unpack(">IIB", digest[:9])
        span = self.hot_pages if choice < self.hot_fraction * 2**32 else self.guest_pages
        page = self.kv_pages + pick % span
        offset = (where % (PAGE_SIZE // WRITE_BYTES)) * WRITE_BYTES
        return page, offset, digest * (WRITE_BYTES // len(digest))


def run_guest(layout: GuestLayout, memory: Memory, first: int, last: int) -> None:
    """Steps first..last-1 of the guest, on `memory`."""
    for k in range(first, last):
        page, offset, data = layout.step(k)
        memory.write(page, offset, data)


def expected_image(layout: GuestLayout, steps: int, puts=()) -> MemoryImage:
    """The image a vm holds after `steps` guest steps and the KV `puts` in order."""
    image = MemoryImage(layout.pages)
    run_guest(layout, image, 0, steps)
    kv = PageKV(image, layout.kv_pages)
    for key, value in puts:
        kv.put(key, value)
    return image


class PageKV:
    """A KV of short keys and values in the pages [0, kv_pages) of a `Memory`."""

    def __init__(self, memory: Memory, kv_pages: int) -> None:
        self._memory = memory
        self.slots = kv_pages * SLOTS_PER_PAGE

    @staticmethod
    def check(key: bytes, value: bytes = b"") -> None:
        if not 0 < len(key) <= MAX_KEY_BYTES:
            raise ValueError(f"a key is 1-{MAX_KEY_BYTES} bytes, got {len(key)}")
        if len(value) > MAX_VALUE_BYTES:
            raise ValueError(f"a value is at most {MAX_VALUE_BYTES} bytes, got {len(value)}")

    def _home(self, key: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % self.slots

    def _slot(self, slot: int) -> tuple[bool, bytes, bytes]:
        page, index = divmod(slot, SLOTS_PER_PAGE)
        raw = self._memory.read(page, index * SLOT_BYTES, SLOT_BYTES)
        used, key_length, value_length = _SLOT_HEADER.unpack_from(raw)
        key = raw[4:4 + key_length]
        value = raw[4 + MAX_KEY_BYTES:4 + MAX_KEY_BYTES + value_length]
        return bool(used), key, value

    def _find(self, key: bytes) -> tuple[int | None, bytes | None]:
        """(slot holding key or the first free one on its probe path, its value or None)."""
        if not self.slots:
            return None, None
        start = self._home(key)
        for step in range(self.slots):
            slot = (start + step) % self.slots
            used, found, value = self._slot(slot)
            if not used:
                return slot, None
            if found == key:
                return slot, value
        return None, None

    def get(self, key: bytes) -> bytes | None:
        self.check(key)
        return self._find(key)[1]

    def keys(self) -> list[bytes]:
        """Every key held, in slot order."""
        return [key for used, key, _ in map(self._slot, range(self.slots)) if used]

    def put(self, key: bytes, value: bytes) -> None:
        self.check(key, value)
        slot, _ = self._find(key)
        if slot is None:
            raise KVFull(f"all {self.slots} KV slots hold other keys")
        page, index = divmod(slot, SLOTS_PER_PAGE)
        raw = (_SLOT_HEADER.pack(1, len(key), len(value)) + key.ljust(MAX_KEY_BYTES, b"\0")
               + value.ljust(MAX_VALUE_BYTES, b"\0"))
        self._memory.write(page, index * SLOT_BYTES, raw)
