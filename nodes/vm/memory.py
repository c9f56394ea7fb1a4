"""A guest's memory: an image of fixed-size pages with a dirty-page bitmap.

`MemoryImage` is plain data (no I/O, no threads of its own) with one lock, so a
guest thread, client handlers and a migration sender may share it: a write
changes its page and sets the page's dirty bit under the lock, so a page read
for sending before a write is always marked dirty after it, which is what
makes pre-copy correct. `DirtyBitmap` is the tracker itself: one bit a page,
taken and cleared in one step at each round boundary, as Xen's log-dirty
bitmap is.
"""

from __future__ import annotations

import hashlib
import threading

PAGE_SIZE = 4096
MIB = 1024 * 1024


class PageError(ValueError):
    """An access outside the image or of the wrong size; the message says which."""


class DirtyBitmap:
    """One bit per page: set by a write, read and cleared together by `take`."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self._bits = bytearray((pages + 7) // 8)

    def mark(self, page: int) -> None:
        self._bits[page >> 3] |= 1 << (page & 7)

    def is_dirty(self, page: int) -> bool:
        return bool(self._bits[page >> 3] & (1 << (page & 7)))

    def count(self) -> int:
        return sum(bin(byte).count("1") for byte in self._bits if byte)

    def take(self) -> list[int]:
        """The dirty pages in ascending order; the bitmap is clear afterwards."""
        bits, self._bits = self._bits, bytearray(len(self._bits))
        pages = []
        for index, byte in enumerate(bits):
            while byte:
                low = byte & -byte
                pages.append(index * 8 + low.bit_length() - 1)
                byte ^= low
        return pages

    def fill(self) -> None:
        self._bits = bytearray(b"\xff" * len(self._bits))
        if self.pages % 8:
            self._bits[-1] = (1 << (self.pages % 8)) - 1


class DirtyTracking:
    """A dirty bit per unit of an image, on while a migration runs; `lock` guards the
    image and its bits together."""

    def __init__(self, units: int) -> None:
        self.dirty = DirtyBitmap(units)
        self.tracking = False
        self.lock = threading.RLock()

    def start_tracking(self) -> None:
        with self.lock:
            self.dirty.take()
            self.tracking = True

    def stop_tracking(self) -> None:
        with self.lock:
            self.tracking = False
            self.dirty.take()

    def take_dirty(self) -> list[int]:
        with self.lock:
            return self.dirty.take()


class MemoryImage(DirtyTracking):
    """`pages` pages of PAGE_SIZE bytes, zero at start, with dirty tracking.

    Tracking is on while a migration runs (`start_tracking`/`stop_tracking`);
    a write always changes the page, and marks it only while tracking is on.
    """

    def __init__(self, pages: int) -> None:
        if pages <= 0:
            raise PageError(f"an image needs at least one page, got {pages}")
        super().__init__(pages)
        self.pages = pages
        self._data = bytearray(pages * PAGE_SIZE)
        self.sparse = False  # every page exists: a destination waits for each one

    @classmethod
    def of_mib(cls, mib: float) -> MemoryImage:
        return cls(int(mib * MIB) // PAGE_SIZE)

    @property
    def size_bytes(self) -> int:
        return self.pages * PAGE_SIZE

    def units(self) -> range:
        return range(self.pages)

    def check_page(self, page: int) -> None:
        if not 0 <= page < self.pages:
            raise PageError(f"page {page} is outside the image (0-{self.pages - 1})")

    def read(self, page: int, offset: int = 0, length: int = PAGE_SIZE) -> bytes:
        self.check_page(page)
        if offset < 0 or length < 0 or offset + length > PAGE_SIZE:
            raise PageError(f"bytes {offset}..{offset + length} are outside a "
                               f"{PAGE_SIZE}-byte page")
        start = page * PAGE_SIZE + offset
        with self.lock:
            return bytes(self._data[start:start + length])

    def write(self, page: int, offset: int, data: bytes) -> None:
        self.check_page(page)
        if offset < 0 or offset + len(data) > PAGE_SIZE:
            raise PageError(f"bytes {offset}..{offset + len(data)} are outside a "
                               f"{PAGE_SIZE}-byte page")
        start = page * PAGE_SIZE + offset
        with self.lock:
            self._data[start:start + len(data)] = data
            if self.tracking:
                self.dirty.mark(page)

    def page(self, page: int) -> bytes:
        return self.read(page)

    def install(self, page: int, data: bytes) -> None:
        """Put a whole page received from a migration; never marks it dirty."""
        self.check_page(page)
        if len(data) != PAGE_SIZE:
            raise PageError(f"a page is {PAGE_SIZE} bytes, got {len(data)}")
        start = page * PAGE_SIZE
        with self.lock:
            self._data[start:start + PAGE_SIZE] = data

    def checksum(self) -> str:
        with self.lock:
            return hashlib.sha256(self._data).hexdigest()

    def image(self) -> bytes:
        with self.lock:
            return bytes(self._data)
