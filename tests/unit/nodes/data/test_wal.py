"""nodes/data/wal.py: what was appended (or replaced) is what a restart replays."""

import pytest

from nodes.common.durable import LogCorrupt, read_file, write_atomically
from nodes.data.wal import ChainLog, decode_log
from nodes.rpc import chain_pb2

UPDATES = [chain_pb2.Update(seq=n, puts=[chain_pb2.KeyValue(key=f"k{n}", value=b"v")])
           for n in range(1, 4)]
SNAPSHOT = [chain_pb2.SyncChunk(entries=[chain_pb2.KeyValue(key="a", value=b"1", version=5)],
                                seq=7),
            chain_pb2.SyncChunk(entries=[chain_pb2.KeyValue(key="b", value=b"2", version=7)],
                                seq=7, last=True)]


def test_appends_are_fsynced_and_replayed(tmp_path):
    fsyncs = []
    log = ChainLog(tmp_path / "sub" / "chain.wal", on_fsync=fsyncs.append)
    assert log.replay().updates == []
    for update in UPDATES:
        log.append(update)
    assert len(fsyncs) == 3 and log.updates_since_snapshot == 3
    log.close()
    replayed = ChainLog(tmp_path / "sub" / "chain.wal").replay()
    assert (replayed.updates, replayed.snapshot, replayed.snapshot_seq) == (UPDATES, [], 0)


def test_a_torn_tail_is_cut_and_later_appends_are_readable(tmp_path):
    path = tmp_path / "chain.wal"
    log = ChainLog(path)
    log.append(UPDATES[0])
    log.close()
    whole = path.stat().st_size
    with open(path, "ab") as out:
        out.write(b"\x00\x01\x02")
    log = ChainLog(path)
    assert log.replay().updates == UPDATES[:1]
    assert path.stat().st_size == whole
    log.append(UPDATES[1])
    log.close()
    assert ChainLog(path).replay().updates == UPDATES[:2]


def test_a_corrupt_record_ends_the_replay(tmp_path):
    path = tmp_path / "chain.wal"
    log = ChainLog(path)
    for update in UPDATES:
        log.append(update)
    log.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    replayed, intact = decode_log(bytes(data))
    assert replayed.updates == UPDATES[:len(replayed.updates)] and len(replayed.updates) < 3
    assert intact < len(data)


def test_replace_leaves_exactly_the_snapshot_then_new_appends(tmp_path):
    path = tmp_path / "chain.wal"
    log = ChainLog(path)
    for update in UPDATES:
        log.append(update)
    log.replace(SNAPSHOT)
    assert log.updates_since_snapshot == 0
    after = chain_pb2.Update(seq=8, deletes=["a"])
    log.append(after)
    log.close()
    assert not path.with_name("chain.wal.tmp").exists()
    replayed = ChainLog(path).replay()
    assert replayed.snapshot_seq == 7
    assert [e.key for e in replayed.snapshot] == ["a", "b"]
    assert replayed.updates == [after]


def test_write_atomically_replaces_a_small_file(tmp_path):
    path = tmp_path / "dir" / "marker.json"
    assert read_file(path) is None
    write_atomically(path, b"one")
    write_atomically(path, b"two")
    assert read_file(path) == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["marker.json"]


def test_a_torn_tail_is_kept_as_a_copy_and_damage_in_the_middle_refuses_the_replay(tmp_path):
    path = tmp_path / "chain.wal"
    log = ChainLog(path)
    for update in UPDATES:
        log.append(update)
    log.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b"\x00\x01\x02")
    ChainLog(path).replay()
    (copy,) = tmp_path.glob("chain.wal.torn-*")
    assert copy.read_bytes() == b"\x00\x01\x02" and path.read_bytes() == whole

    damaged = bytearray(whole)
    damaged[len(damaged) // 2] ^= 0xFF  # the second of three updates
    path.write_bytes(bytes(damaged))
    with pytest.raises(LogCorrupt, match="damage in the middle"):
        ChainLog(path).replay()
    assert path.read_bytes() == bytes(damaged)
