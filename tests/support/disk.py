"""A disk that fails on cue, for the write-ahead-log tests: ENOSPC and EIO on chosen files.

`FailingDisk` patches `os.write`, `os.fsync` and `os.ftruncate` (the calls
nodes.common.durable makes on a log) while it is entered, and fails a call
only when it is armed for that call and the file descriptor is a file named
`name` under `directory`. Every other call passes through untouched, so
pytest, gRPC and a node's other files (its membership marker) keep working.
A failed write behaves as the kernel's does on a full disk: the first call
writes part of the data and returns a short count, the next one raises.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class FailingDisk:
    def __init__(self, directory: Path | str, name: str) -> None:
        self.directory = str(Path(directory).resolve())
        self.name = name
        self._lock = threading.Lock()
        self._write_failure: tuple[int, int] | None = None  # errno, bytes written before it
        self._fsync_failures: list[int] = []
        self._truncate_failure: int | None = None
        self.failed_calls: list[str] = []
        self._real = {"write": os.write, "fsync": os.fsync, "ftruncate": os.ftruncate}

    # -- arming ----------------------------------------------------------------------------

    def fail_next_write(self, code: int = errno.ENOSPC, *, after_bytes: int = 0) -> None:
        """The next write to the file stores `after_bytes` of its data, then fails with `code`."""
        self._write_failure = (code, after_bytes)

    def fail_next_fsync(self, code: int = errno.EIO) -> None:
        self._fsync_failures.append(code)

    def fail_truncates(self, code: int = errno.EIO) -> None:
        """Every ftruncate of the file fails until `heal`."""
        self._truncate_failure = code

    def heal(self) -> None:
        self._write_failure, self._fsync_failures, self._truncate_failure = None, [], None

    # -- the patched calls -----------------------------------------------------------------

    def _targets(self, fd: int) -> bool:
        path = _path_of(fd)
        return path.startswith(self.directory + os.sep) and os.path.basename(path) == self.name

    def _write(self, fd: int, data) -> int:
        with self._lock:
            armed = self._write_failure if self._write_failure and self._targets(fd) else None
            if armed is not None:
                code, before = armed
                self._write_failure = (code, 0) if before > 0 else None
                if before == 0:
                    self.failed_calls.append(f"write {errno.errorcode[code]}")
        if armed is None:
            return self._real["write"](fd, data)
        if before > 0:  # a full disk takes part of a write, then fails the rest
            return self._real["write"](fd, bytes(data[:before]))
        raise OSError(code, os.strerror(code))

    def _fsync(self, fd: int) -> None:
        with self._lock:
            code = self._fsync_failures.pop(0) if self._fsync_failures and self._targets(fd) \
                else None
            if code is not None:
                self.failed_calls.append(f"fsync {errno.errorcode[code]}")
        if code is None:
            return self._real["fsync"](fd)
        raise OSError(code, os.strerror(code))

    def _ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            code = self._truncate_failure if self._truncate_failure and self._targets(fd) \
                else None
            if code is not None:
                self.failed_calls.append(f"ftruncate {errno.errorcode[code]}")
        if code is None:
            return self._real["ftruncate"](fd, length)
        raise OSError(code, os.strerror(code))

    def __enter__(self) -> FailingDisk:
        os.write, os.fsync, os.ftruncate = self._write, self._fsync, self._ftruncate
        return self

    def __exit__(self, *_) -> None:
        os.write, os.fsync, os.ftruncate = (self._real["write"], self._real["fsync"],
                                            self._real["ftruncate"])
