"""nodes/kv/wal.py: what was appended is what a restart replays."""

import os

from nodes.kv.store import DELETE, PUT, Record
from nodes.kv.wal import WriteAheadLog

RECORDS = [Record(PUT, 1, "a", b"one"), Record(PUT, 2, "b", b"two"), Record(DELETE, 3, "a")]


def test_append_then_reopen_replays(tmp_path):
    path = tmp_path / "sub" / "kv.wal"
    fsyncs = []
    wal = WriteAheadLog(path, on_fsync=fsyncs.append)
    assert wal.replay() == []
    for record in RECORDS:
        wal.append(record)
    assert len(fsyncs) == len(RECORDS)  # every append is fsync'd before it returns
    wal.close()
    reopened = WriteAheadLog(path)
    assert reopened.replay() == RECORDS
    reopened.close()


def test_torn_tail_is_cut_and_later_appends_are_readable(tmp_path):
    path = tmp_path / "kv.wal"
    wal = WriteAheadLog(path)
    for record in RECORDS[:2]:
        wal.append(record)
    wal.close()
    whole = path.stat().st_size
    torn = RECORDS[2].encode()[:7]
    with open(path, "ab") as out:
        out.write(torn)

    wal = WriteAheadLog(path)
    assert wal.replay() == RECORDS[:2]
    assert path.stat().st_size == whole
    later = Record(PUT, 3, "c", b"three")
    wal.append(later)
    wal.close()

    wal = WriteAheadLog(path)
    assert wal.replay() == [*RECORDS[:2], later]
    wal.close()


def test_replace_leaves_exactly_the_new_records(tmp_path):
    path = tmp_path / "kv.wal"
    wal = WriteAheadLog(path)
    for record in RECORDS:
        wal.append(record)
    compacted = [Record(PUT, 2, "b", b"two")]
    wal.replace(compacted)
    assert not path.with_suffix(".tmp").exists()
    after = Record(PUT, 4, "d", b"four")
    wal.append(after)  # appends go to the new file, not the replaced one
    wal.close()
    wal = WriteAheadLog(path)
    assert wal.replay() == [*compacted, after]
    wal.close()


def test_replace_is_atomic_a_leftover_temporary_does_not_matter(tmp_path):
    path = tmp_path / "kv.wal"
    wal = WriteAheadLog(path)
    wal.append(RECORDS[0])
    wal.close()
    # A crash while writing the temporary file leaves the old log intact.
    path.with_name(path.name + ".tmp").write_bytes(b"half-written garbage")
    wal = WriteAheadLog(path)
    assert wal.replay() == RECORDS[:1]
    wal.replace([RECORDS[1]])
    wal.close()
    wal = WriteAheadLog(path)
    assert wal.replay() == [RECORDS[1]]
    wal.close()
    assert sorted(os.listdir(tmp_path)) == ["kv.wal"]


def test_replace_with_nothing_empties_the_log(tmp_path):
    path = tmp_path / "kv.wal"
    wal = WriteAheadLog(path)
    wal.append(RECORDS[0])
    wal.replace([])
    wal.close()
    assert path.read_bytes() == b""


def test_append_returns_only_after_fsync_of_the_written_bytes(tmp_path, monkeypatch):
    path = tmp_path / "kv.wal"
    wal = WriteAheadLog(path)
    synced_sizes = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        real_fsync(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fsync", watching_fsync)
    wal.append(RECORDS[0])
    assert synced_sizes == [len(RECORDS[0].encode())]  # the record was on disk when fsync'd
    wal.close()


def test_bytes_since_snapshot_count_what_a_compaction_would_save(tmp_path):
    wal = WriteAheadLog(tmp_path / "kv.wal")
    wal.replay()
    for record in RECORDS:
        wal.append(record)
    assert wal.bytes_since_snapshot == wal.size == sum(len(r.encode()) for r in RECORDS)
    wal.replace([RECORDS[1]])
    assert (wal.size, wal.bytes_since_snapshot) == (len(RECORDS[1].encode()), 0)
    wal.append(RECORDS[0])
    assert wal.bytes_since_snapshot == len(RECORDS[0].encode())
    wal.close()
