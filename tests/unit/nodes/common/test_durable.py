"""nodes/common/durable.py: a disk error never costs an acknowledged record, and replay
never drops bytes silently. Records are kv's (nodes/kv/store.py), a real framing."""

import errno
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.common import durable
from nodes.common.durable import AppendFailed, LogCorrupt, LogFile
from nodes.common.logs import EventLog
from nodes.kv.store import PUT, Record, decode_record
from tests.support.disk import FailingDisk


def record(n: int) -> Record:
    return Record(PUT, n, f"key-{n}", b"value-%d" % n * 3)


def open_log(path: Path, stream: io.StringIO | None = None) -> tuple[LogFile, list[Record]]:
    log = LogFile(path, log=EventLog("n", "kv", stream=stream or io.StringIO()))
    return log, log.recover(decode_record)


def events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("after_bytes", [0, 5, 30])
def test_a_failed_write_is_cut_back_and_the_next_record_follows_the_last_good_one(
        tmp_path, code, after_bytes):
    path = tmp_path / "kv.wal"
    log, _ = open_log(path)
    log.append(record(1).encode())
    with FailingDisk(tmp_path, "kv.wal") as disk:
        disk.fail_next_write(code, after_bytes=after_bytes)
        with pytest.raises(AppendFailed) as failed:
            log.append(record(2).encode())
    assert not failed.value.maybe_written  # definite: the log certainly does not hold it
    assert errno.errorcode[code] in str(failed.value)
    assert path.stat().st_size == len(record(1).encode())
    log.append(record(3).encode())  # the log still takes appends, right after record 1
    log.close()
    _, replayed = open_log(path)
    assert replayed == [record(1), record(3)]


def test_a_failed_fsync_stops_the_log_until_a_restart(tmp_path):
    path = tmp_path / "kv.wal"
    stream = io.StringIO()
    log, _ = open_log(path, stream)
    log.append(record(1).encode())
    with FailingDisk(tmp_path, "kv.wal") as disk:
        disk.fail_next_fsync(errno.EIO)
        with pytest.raises(AppendFailed) as failed:
            log.append(record(2).encode())
        assert failed.value.maybe_written  # it may be on disk: an indefinite failure
        size = path.stat().st_size
        with pytest.raises(AppendFailed) as refused:
            log.append(record(3).encode())
    assert not refused.value.maybe_written and "restarted" in str(refused.value)
    assert path.stat().st_size == size  # a stopped log writes nothing at all
    assert "EIO" in log.stopped_because
    assert [e["event"] for e in events(stream)] == ["wal_stopped"]
    with pytest.raises(AppendFailed):
        log.replace([record(1).encode()])  # not lifted in process, not even by a rewrite
    log.close()
    _, replayed = open_log(path)
    assert replayed[:1] == [record(1)] and record(3) not in replayed


def test_a_failed_cut_back_stops_the_log(tmp_path):
    path = tmp_path / "kv.wal"
    log, _ = open_log(path)
    log.append(record(1).encode())
    with FailingDisk(tmp_path, "kv.wal") as disk:
        disk.fail_next_write(errno.EIO, after_bytes=7)
        disk.fail_truncates(errno.EIO)
        with pytest.raises(AppendFailed) as failed:
            log.append(record(2).encode())
        assert failed.value.maybe_written
        assert "cutting the log back" in log.stopped_because
        with pytest.raises(AppendFailed):
            log.append(record(3).encode())
    log.close()
    stream = io.StringIO()
    _, replayed = open_log(path, stream)  # the torn bytes of record 2 are a torn tail now
    assert replayed == [record(1)]
    assert [e["event"] for e in events(stream)] == ["wal_torn_tail_dropped"]


def test_replay_keeps_a_copy_of_a_torn_tail_and_says_where_it_was(tmp_path):
    path = tmp_path / "kv.wal"
    log, _ = open_log(path)
    for n in (1, 2):
        log.append(record(n).encode())
    log.close()
    whole = path.stat().st_size
    torn = record(3).encode()[:11]
    with open(path, "ab") as out:
        out.write(torn)
    stream = io.StringIO()
    log, replayed = open_log(path, stream)
    assert replayed == [record(1), record(2)] and path.stat().st_size == whole
    (event,) = events(stream)
    assert (event["event"], event["offset"], event["dropped_bytes"]) == (
        "wal_torn_tail_dropped", whole, len(torn))
    copy = Path(event["copy"])
    assert copy.parent == tmp_path and copy.name.startswith("kv.wal.torn-")
    assert copy.read_bytes() == torn
    log.close()


def test_damage_in_the_middle_refuses_the_start_and_leaves_the_file(tmp_path):
    path = tmp_path / "kv.wal"
    log, _ = open_log(path)
    for n in (1, 2, 3):
        log.append(record(n).encode())
    log.close()
    data = bytearray(path.read_bytes())
    first = len(record(1).encode())
    data[first + 10] ^= 0xFF  # inside record 2; record 3 after it is intact
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt) as refused:
        open_log(path)
    assert f"byte {first} is damaged" in str(refused.value)
    assert "move it aside" in str(refused.value)
    assert path.read_bytes() == bytes(data)
    assert [p.name for p in tmp_path.iterdir()] == ["kv.wal"]


def test_a_failed_replace_leaves_the_old_log_in_use(tmp_path):
    path = tmp_path / "kv.wal"
    log, _ = open_log(path)
    log.append(record(1).encode())
    with FailingDisk(tmp_path, "kv.wal.tmp") as disk:
        disk.fail_next_fsync(errno.ENOSPC)
        with pytest.raises(AppendFailed) as failed:
            log.replace([record(9).encode()])
    assert not failed.value.maybe_written and log.stopped_because is None
    log.append(record(2).encode())
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["kv.wal"]
    _, replayed = open_log(path)
    assert replayed == [record(1), record(2)]


def test_a_failed_directory_fsync_after_a_replace_stops_the_log(tmp_path):
    directory = tmp_path / "data"
    path = directory / "kv.wal"
    log, _ = open_log(path)
    log.append(record(1).encode())
    with FailingDisk(tmp_path, "data") as disk:
        disk.fail_next_fsync(errno.EIO)
        log.replace([record(1).encode()])
    # A crash could bring the old file back: appends to the new one would be lost.
    assert "directory" in log.stopped_because
    with pytest.raises(AppendFailed):
        log.append(record(2).encode())
    log.close()


FAULTS = st.sampled_from(["ok", "ok", "ok", "write-ENOSPC", "write-EIO", "fsync-EIO",
                          "write-and-truncate-EIO"])


@given(faults=st.lists(st.tuples(FAULTS, st.integers(0, 40)), min_size=1, max_size=25))
def test_every_acknowledged_record_survives_any_sequence_of_disk_errors(faults):
    """The register invariant at the log's level: after a restart every record whose
    append returned is there, in order; a definite failure is not; at most the one
    indefinite failure that stopped the log may be there, last."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "kv.wal"
        log, _ = open_log(path)
        acknowledged, definite, maybe = [], [], []
        with FailingDisk(directory, "kv.wal") as disk:
            for n, (fault, after_bytes) in enumerate(faults, start=1):
                if fault.startswith("write"):
                    disk.fail_next_write(errno.EIO if "EIO" in fault else errno.ENOSPC,
                                         after_bytes=after_bytes)
                if fault == "fsync-EIO":
                    disk.fail_next_fsync(errno.EIO)
                if fault == "write-and-truncate-EIO":
                    disk.fail_truncates(errno.EIO)
                try:
                    log.append(record(n).encode())
                    acknowledged.append(record(n))
                except AppendFailed as exc:
                    (maybe if exc.maybe_written else definite).append(record(n))
                disk.heal()
        log.close()
        _, replayed = open_log(path)
        assert replayed in (acknowledged, acknowledged + maybe)
        assert len(maybe) <= 1 and not set(definite) & set(replayed)


def test_a_torn_tail_that_cannot_be_kept_aside_is_not_dropped(tmp_path, monkeypatch):
    path = tmp_path / "kv.wal"
    log, _ = open_log(path)
    log.append(record(1).encode())
    log.close()
    with open(path, "ab") as out:
        out.write(b"torn")
    before = path.read_bytes()

    def disk_full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "write_atomically", disk_full)
    with pytest.raises(LogCorrupt, match="could not be kept aside.*ENOSPC"):
        open_log(path)
    assert path.read_bytes() == before
