"""Files the host side shares between processes: written whole, locked, durably.

Who calls it: the fault journal (distlab.faults.nemesis.Journal) and run
histories (distlab.history.History.write). It touches only the path it is
given, its `<name>.lock` beside it, and temporary files in the same directory.

`locked(path)` holds an exclusive fcntl.flock on `<path>.lock` (released when
the lock file closes, even if the process dies). `replace_durably(path, ...)`
writes a temporary file of its own (a unique name: two writers never share
one), fsyncs it, renames it over `path` and fsyncs the directory, so a crash
leaves the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from nodes.common.durable import fsync_directory


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of `path` (on `<path>.lock`) for the `with` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        yield


def replace_durably(path: Path, chunks: Iterable[str]) -> None:
    """Make `path` hold exactly the concatenated `chunks`, durably and atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)
