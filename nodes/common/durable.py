"""Durable files: what a role needs to keep state across a crash, in one place.

`write_atomically` makes a file hold exactly new content (write a temporary,
fsync it, rename over, fsync the directory): a crash leaves the old or the new
file, never a mix. `LogFile` is an append-only log of framed records: `recover`
reads it back at start, `append` returns only after fsync, `replace` swaps in
new content atomically. The write-ahead logs of kv and data, and the
data-master's configuration, are built on these; this module touches only the
files it is given (and copies of their damaged bytes beside them).

What a disk error does (the failure policy of `LogFile`):

- A failed *write* leaves an unknown number of the record's bytes in the file.
  The log is cut back (ftruncate, fsync) to the end of the last good record
  before anything else is written, so a later record can never sit behind a
  torn one, and the append fails definitely (`AppendFailed`, not written).
- A failed *fsync* is not retried and nothing is cut back: since PostgreSQL's
  "fsyncgate" (2018) we know the kernel may have dropped the dirty pages and
  marked them clean, so a second fsync can succeed without the data being on
  disk, and reading the file back only shows the page cache. The log is
  *stopped*: this append fails indefinitely (it may be on disk) and every
  later one is refused without touching the file, until the process restarts
  and replays what is really there. So is a failed cut-back, and a rename
  whose directory could not be fsync'd.
- Stopping beats exiting here: the node keeps answering reads of what it
  acknowledged and says why it refuses writes (Status, one error log line),
  and a restart (`distlab restart`, or the machine's restart policy) is the
  explicit way back. The page-cache doubt is why the stop is not lifted in
  process, not even by a successful `replace`.

Replay (`recover`) drops a torn tail (a crash or a stopped log mid-write),
and keeps the dropped bytes as `<log>.torn-<UTC time>` and reports them; a
damaged record with an intact one after it is not a torn tail but damage in
the middle, which could hide acknowledged records: `LogCorrupt`, the node
refuses to start and the file is left as it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nodes.common.logs import EventLog

#: Decodes the one record starting at an offset: the record and the offset just past it,
#: or None when no whole, intact record starts there.
DecodeOne = Callable[[bytes, int], "tuple[Any, int] | None"]


class AppendFailed(Exception):
    """A record the log did not make durable; the message says why.

    `maybe_written` False: the log certainly does not hold it (a definite failure).
    True: it may be on disk after a restart (the caller must answer indefinitely).
    """

    def __init__(self, message: str, *, maybe_written: bool) -> None:
        super().__init__(message)
        self.maybe_written = maybe_written


class LogCorrupt(Exception):
    """A log that cannot be replayed without losing bytes unseen: damaged in the middle
    (starting would drop records that may be acknowledged), or with a torn tail that
    could not be kept aside. The node refuses to start; the message says what to do."""


def fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_atomically(path: Path, blobs: bytes | Iterable[bytes]) -> None:
    """Make `path` hold exactly `blobs` (one bytes or several, concatenated), durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        for blob in ([blobs] if isinstance(blobs, bytes) else blobs):
            out.write(blob)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def describe_os_error(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{name} ({exc.strerror})" if name else str(exc)


def decode_all(data: bytes, decode_one: DecodeOne) -> tuple[list, int]:
    """Every intact record from the start of `data`, and the length they cover."""
    records, offset = [], 0
    while (found := decode_one(data, offset)) is not None:
        record, offset = found
        records.append(record)
    return records, offset


class LogFile:
    """An append-only file held open without buffering; see the module docstring for
    what a disk error does. Appends go through one file descriptor, so callers
    serialize them (both write-ahead logs append under their node's write lock)."""

    def __init__(self, path: Path, *, on_fsync: Callable[[float], None] = lambda _: None,
                 log: EventLog | None = None,
                 on_stop: Callable[[str], None] = lambda _: None) -> None:
        self.path = path
        self._on_fsync = on_fsync
        self._on_stop = on_stop  # told once, with the reason, when the log stops
        self._log = log
        #: Why the log takes no more appends (None: it does).
        self.stopped_because: str | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        # The end of the last record known durable: where a failed write is cut back to.
        self._good_size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._good_size

    def recover(self, decode_one: DecodeOne) -> list:
        """Every record in the log, after dropping a torn tail (reported, a copy kept).

        Raises LogCorrupt when an intact record follows a damaged one."""
        data = self.path.read_bytes()
        records, intact = decode_all(data, decode_one)
        if intact < len(data):
            later = next((offset for offset in range(intact + 1, len(data))
                          if decode_one(data, offset) is not None), None)
            if later is not None:
                raise LogCorrupt(
                    f"{self.path}: the record at byte {intact} is damaged, yet an intact record "
                    f"follows at byte {later} (the log is {len(data)} bytes): damage in the "
                    f"middle, not a torn tail. Refusing to start rather than drop records that "
                    f"may have been acknowledged. The file is left as it is; to start anyway, "
                    f"move it aside (a kv node then starts empty, a chain replica re-syncs "
                    f"from the tail)")
            try:
                self._drop_torn_tail(data, intact)
            except OSError as exc:
                raise LogCorrupt(
                    f"{self.path}: a torn tail of {len(data) - intact} bytes at byte {intact} "
                    f"could not be kept aside ({describe_os_error(exc)}); refusing to drop it "
                    f"unseen. Free some space, or move the file aside") from exc
        self._good_size = intact
        return records

    def _drop_torn_tail(self, data: bytes, intact: int) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        copy = self.path.with_name(f"{self.path.name}.torn-{stamp}-{time.time_ns() % 10**9:09d}")
        write_atomically(copy, data[intact:])
        os.ftruncate(self._fd, intact)
        os.fsync(self._fd)
        if self._log is not None:
            self._log.warning("wal_torn_tail_dropped", path=str(self.path), offset=intact,
                              dropped_bytes=len(data) - intact, copy=str(copy))

    def append(self, data: bytes) -> None:
        """Write `data` at the end and return once it is fsync'd; else AppendFailed."""
        if self.stopped_because is not None:
            raise AppendFailed(f"not written: {self.stopped_because}", maybe_written=False)
        try:
            self._write_all(data)
        except OSError as exc:
            self._cut_back(f"write to {self.path.name} failed: {describe_os_error(exc)}")
        try:
            self._fsync()
        except OSError as exc:
            self._stop(f"fsync of {self.path.name} failed: {describe_os_error(exc)}; what "
                       f"the log holds past byte {self._good_size} cannot be trusted")
            raise AppendFailed(f"may or may not be on disk: {self.stopped_because}",
                               maybe_written=True) from exc
        self._good_size += len(data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def _fsync(self) -> None:
        started = time.perf_counter()
        os.fsync(self._fd)
        self._on_fsync(time.perf_counter() - started)

    def _cut_back(self, problem: str) -> None:
        """After a failed write: back to the last good record, then AppendFailed (not written)."""
        try:
            os.ftruncate(self._fd, self._good_size)
            os.fsync(self._fd)
        except OSError as exc:
            self._stop(f"{problem}, and cutting the log back to byte {self._good_size} failed "
                       f"too: {describe_os_error(exc)}")
            raise AppendFailed(f"may or may not be on disk: {self.stopped_because}",
                               maybe_written=True) from exc
        raise AppendFailed(f"not written: {problem}; the log was cut back to its last good "
                           f"record", maybe_written=False)

    def _stop(self, reason: str) -> None:
        self.stopped_because = (f"{reason}. This node acknowledges no more writes until it is "
                                f"restarted and replays its log")
        if self._log is not None:
            self._log.error("wal_stopped", path=str(self.path), reason=self.stopped_because)
        self._on_stop(self.stopped_because)

    def replace(self, blobs: Iterable[bytes]) -> None:
        """Atomically make the log hold exactly `blobs`, then go on appending after them.

        AppendFailed(maybe_written=False) when the new content could not be written: the
        old log is untouched and still appended to."""
        if self.stopped_because is not None:
            raise AppendFailed(f"not replaced: {self.stopped_because}", maybe_written=False)
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(temporary, "wb") as out:
                for blob in blobs:
                    out.write(blob)
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise AppendFailed(f"not replaced: writing {temporary.name} failed: "
                               f"{describe_os_error(exc)}", maybe_written=False) from exc
        try:
            reopened = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:  # the old descriptor stays open; stopped, it is never written
            self._stop(f"reopening {self.path.name} after replacing it failed: "
                       f"{describe_os_error(exc)}")
            return
        os.close(self._fd)
        self._fd, self._good_size = reopened, size
        try:
            fsync_directory(self.path.parent)
        except OSError as exc:
            # A crash may bring back the old log: appends to the new one would be lost.
            self._stop(f"fsync of the directory after replacing {self.path.name} failed: "
                       f"{describe_os_error(exc)}")

    def close(self) -> None:
        os.close(self._fd)
