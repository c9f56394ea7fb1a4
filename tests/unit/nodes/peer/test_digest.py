"""nodes/peer/digest.py: the digest is of the files as they are on disk, in order, made again
when they change, never reported stale, and read a chunk at a time."""

from __future__ import annotations

import asyncio
import hashlib
import os

from nodes.peer import digest as digest_module
from nodes.peer.digest import ContentDigest, content_sha256


def test_the_digest_is_of_every_file_in_order(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"hello ")
    second.write_bytes(b"world")
    assert content_sha256([first, second]) == hashlib.sha256(b"hello world").hexdigest()
    assert content_sha256([second, first]) != content_sha256([first, second])


def test_files_are_read_a_chunk_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(digest_module, "READ_CHUNK", 4096)
    path = tmp_path / "big"
    data = os.urandom(4096 * 5 + 17)
    path.write_bytes(data)
    reads = []
    real_open = open

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, size):
            reads.append(size)
            return self.handle.read(size)

    monkeypatch.setattr(digest_module, "open", lambda p, mode: Counting(real_open(p, mode)),
                        raising=False)
    assert content_sha256([path]) == hashlib.sha256(data).hexdigest()
    assert set(reads) == {4096} and len(reads) == 7  # 6 with data, the last one empty


def test_a_file_changed_on_disk_is_hashed_again(tmp_path):
    path = tmp_path / "content"
    path.write_bytes(b"x" * 1000)
    digest = ContentDigest([path])
    assert digest.stale() and digest.value == ""
    asyncio.run(digest.refresh())
    assert digest.value == hashlib.sha256(b"x" * 1000).hexdigest() and not digest.stale()
    path.write_bytes(b"y" + b"x" * 999)  # same size: only the modification time tells
    os.utime(path, ns=(1, 1))  # whatever the clock's granularity, it is another time
    assert digest.stale()
    asyncio.run(digest.refresh())
    assert digest.value == hashlib.sha256(b"y" + b"x" * 999).hexdigest()


def test_missing_files_give_no_digest_and_say_why(tmp_path):
    digest = ContentDigest([tmp_path / "gone"])
    asyncio.run(digest.refresh())
    assert digest.value == "" and "cannot read" in digest.problem
