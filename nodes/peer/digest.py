"""The content digest a peer reports once complete: SHA-256 of its files as they are on disk.

The host's `pieces` check (distlab.bittorrent.download) compares every leecher's digest
with the seeder's, so "byte for byte the seed" is checked without copying files off the
machines. `ContentDigest.refresh` runs on the peer's event loop at each tick once the
download is complete: it looks at the files' sizes and modification times (a few
`stat`s) and, when they are not what the last digest was made from, hashes them again in
a worker thread, a chunk at a time, so memory does not grow with the file. A file changed
on disk after completion (bit rot, a hand edit) is therefore reported as it now is; while
a digest is being made, or the files cannot be read, `value` is empty, never stale.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

READ_CHUNK = 1024 * 1024

Signature = tuple[tuple[int, int], ...]


def content_sha256(paths: Sequence[Path]) -> str:
    """SHA-256 of the files' bytes one after another, read `READ_CHUNK` at a time."""
    hasher = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as content:
            while chunk := content.read(READ_CHUNK):
                hasher.update(chunk)
    return hasher.hexdigest()


class ContentDigest:
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        self.value = ""  # hex digest of the files as they were at `_made_from`
        self.problem = ""  # why the files could not be hashed, the last time it was tried
        self._made_from: Signature | None = None
        self._running = False

    def signature(self) -> Signature | None:
        """Size and modification time of every file; None when one cannot be looked at."""
        try:
            stats = [os.stat(path) for path in self.paths]
        except OSError:
            return None
        return tuple((stat.st_size, stat.st_mtime_ns) for stat in stats)

    def stale(self) -> bool:
        return not self._running and self.signature() != self._made_from

    async def refresh(self) -> None:
        """Hash the files again if they changed since the last digest (or there is none)."""
        if self._running:
            return
        before = self.signature()
        if before is not None and before == self._made_from:
            return
        self._running = True
        self.value = ""
        try:
            value = await asyncio.to_thread(content_sha256, self.paths)
        except OSError as exc:
            self.problem = f"cannot read the content: {exc.strerror}"
            return
        finally:
            self._running = False
        if self.signature() == before:  # else they changed while read: next tick again
            self.value, self._made_from, self.problem = value, before, ""
