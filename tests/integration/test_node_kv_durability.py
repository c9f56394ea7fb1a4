"""A kv node whose disk fails (injected ENOSPC and EIO), and a kv node's log under overwrites.

What a user would notice: an acknowledged Put missing after a restart, a Put
answered "not applied" that is there anyway, a node that keeps acknowledging
writes its disk did not take, or a log that grows with every overwrite.
"""

import errno
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from distlab.history import FAIL, INFO, History
from distlab.tiers.register import RegisterConfig, RegisterWorkload
from nodes.common.server import main
from nodes.kv.__main__ import SPEC as KV_SPEC
from nodes.rpc import control_pb2, kv_pb2
from tests.support.disk import FailingDisk

VALUE_1KIB = 1024


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    return caught.value


def test_no_acknowledged_put_is_lost_to_a_failing_disk(lab, tmp_path):
    data_dir = tmp_path / "disk"
    node = lab.start("kv-a", data_dir=str(data_dir))
    kv = lab.kv(node)
    acked: dict[str, tuple[bytes, int]] = {}

    def put(key: str) -> None:
        value = f"value of {key}".encode()
        acked[key] = (value, kv.Put(kv_pb2.PutRequest(key=key, value=value), timeout=5).version)

    for n in range(3):
        put(f"before/{n}")
    health = lab.health(node)
    with FailingDisk(data_dir / "kv-a", "kv.wal") as disk:
        disk.fail_next_write(errno.ENOSPC, after_bytes=9)
        full = refused(kv.Put, kv_pb2.PutRequest(key="disk-full", value=b"x"))
        assert full.code() == grpc.StatusCode.UNAVAILABLE
        assert full.details().startswith("not applied") and "ENOSPC" in full.details()
        for n in range(3):
            put(f"after-full/{n}")  # the node still takes writes once the log is cut back
        # A cut-back log is no reason to be routed around.
        assert health.Check(HealthCheckRequest(), timeout=5).status == \
            HealthCheckResponse.SERVING

        disk.fail_next_fsync(errno.EIO)
        failed = refused(kv.Put, kv_pb2.PutRequest(key="fsync-failed", value=b"x"))
        assert failed.code() == grpc.StatusCode.UNAVAILABLE
        assert failed.details().startswith("may or may not be applied")
        later = refused(kv.Put, kv_pb2.PutRequest(key="after-stop", value=b"x"))
        assert later.details().startswith("not applied") and "restarted" in later.details()
        assert refused(kv.Delete, kv_pb2.DeleteRequest(key="before/0")).details().startswith(
            "not applied")
        state = lab.control(node).Status(control_pb2.StatusRequest(), timeout=5).state
        assert "fsync of kv.wal failed: EIO" in state["wal_stopped"]
        # It can only refuse writes now: health checkers (the switch, clients) route around it.
        for service in ("", "distlab.kv.KV"):
            assert health.Check(HealthCheckRequest(service=service), timeout=5).status == \
                HealthCheckResponse.NOT_SERVING, service
        # Reads go on: memory holds exactly what was acknowledged.
        assert kv.Get(kv_pb2.GetRequest(key="before/0"), timeout=5).value == acked["before/0"][0]

    lab.stop(node)
    again = lab.start("kv-a", data_dir=str(data_dir))
    assert lab.health(again).Check(HealthCheckRequest(), timeout=5).status == \
        HealthCheckResponse.SERVING
    restarted = lab.kv(again)
    for key, (value, version) in acked.items():
        got = restarted.Get(kv_pb2.GetRequest(key=key), timeout=5)
        assert (got.value, got.version) == (value, version), key
    for key in ("disk-full", "after-stop"):
        assert refused(restarted.Get, kv_pb2.GetRequest(key=key)).code() == \
            grpc.StatusCode.NOT_FOUND
    newest = max(version for _, version in acked.values())
    assert restarted.Put(kv_pb2.PutRequest(key="next", value=b"1"), timeout=5).version > newest


def test_registers_stay_linearizable_through_a_full_disk_a_failed_fsync_and_a_restart(
        lab, tmp_path):
    """The register workload (3 keys, 3 clients) runs while the disk fills up and then an
    fsync fails; the node is restarted and the workload goes on against it. The register
    checker judges the whole history, before and after the restart: an acknowledged write
    lost, or one answered "not applied" that shows up, makes it invalid."""
    data_dir = tmp_path / "disk"
    node = lab.start("kv-a", data_dir=str(data_dir))
    history, run_id = History(), "disk"
    config = RegisterConfig(keys=3, processes=3, max_ops=100_000, seconds=60, timeout=2)

    def writes(kind: str) -> int:
        return sum(op.type == kind for op in history.of("write"))

    before = RegisterWorkload(lab.channel(node), config, history=history, run_id=run_id)
    stop = threading.Event()
    running = threading.Thread(target=before.run, args=(stop,))
    with FailingDisk(data_dir / "kv-a", "kv.wal") as disk:
        running.start()
        try:
            lab.wait_until(lambda: len(history) >= 30, what="30 operations")
            disk.fail_next_write(errno.ENOSPC, after_bytes=7)
            lab.wait_until(lambda: disk.failed_calls, what="the injected ENOSPC")
            settled = len(history)
            lab.wait_until(lambda: len(history) >= settled + 30, what="30 more operations")
            disk.fail_next_fsync(errno.EIO)
            lab.wait_until(lambda: writes(FAIL) >= 3, what="writes refused by the stopped log")
        finally:
            stop.set()
            running.join()
    assert disk.failed_calls == ["write ENOSPC", "fsync EIO"]
    assert writes(INFO) >= 1  # the write whose fsync failed: it may or may not be there

    lab.stop(node)
    again = lab.start("kv-a", data_dir=str(data_dir))
    after = RegisterWorkload(lab.channel(again), RegisterConfig(
        keys=3, processes=3, max_ops=60, seconds=30, timeout=2), history=history,
        run_id=run_id, first_process=3)
    after.run()
    verdict = after.check(time_limit=30)
    assert verdict.valid is True, verdict.problems
    assert verdict.figures["keys"] == 3


def test_overwriting_one_key_1500_times_leaves_a_small_log(lab, tmp_path):
    data_dir = tmp_path / "disk"
    node = lab.start("kv-a", data_dir=str(data_dir))
    kv = lab.kv(node)
    for n in range(1500):
        last = kv.Put(kv_pb2.PutRequest(key="k", value=bytes([n % 256]) * VALUE_1KIB),
                      timeout=5)
    wal = Path(data_dir / "kv-a" / "kv.wal")
    # Compacted once appends reach KV_WAL_COMPACT_BYTES (1 MiB by default): never the
    # 1.6 MB that 1500 records of 1 KiB take, and replay reads no more than that.
    assert wal.stat().st_size < 1024 * 1024
    lab.stop(node)
    restarted = lab.kv(lab.start("kv-a", data_dir=str(data_dir)))
    got = restarted.Get(kv_pb2.GetRequest(key="k"), timeout=5)
    assert (got.value, got.version) == (bytes([1499 % 256]) * VALUE_1KIB, last.version)


def test_a_compacted_log_keeps_versions_going_forward_after_deletes(lab, tmp_path):
    data_dir = tmp_path / "disk"
    node = lab.start("kv-a", data_dir=str(data_dir), KV_WAL_COMPACT_BYTES=1)
    kv = lab.kv(node)
    kv.Put(kv_pb2.PutRequest(key="kept", value=b"1"), timeout=5)
    kv.Put(kv_pb2.PutRequest(key="gone", value=b"2"), timeout=5)
    kv.Delete(kv_pb2.DeleteRequest(key="gone"), timeout=5)  # version 3, then compacted away
    lab.stop(node)
    restarted = lab.kv(lab.start("kv-a", data_dir=str(data_dir)))
    assert restarted.Put(kv_pb2.PutRequest(key="new", value=b"3"), timeout=5).version == 4


def test_a_log_damaged_in_the_middle_stops_the_start_with_a_clear_message(lab, tmp_path,
                                                                          capsys):
    data_dir = tmp_path / "disk"
    node = lab.start("kv-a", data_dir=str(data_dir))
    kv = lab.kv(node)
    for n in range(3):
        kv.Put(kv_pb2.PutRequest(key=f"k{n}", value=b"v" * 40), timeout=5)
    lab.stop(node)
    wal = data_dir / "kv-a" / "kv.wal"
    damaged = bytearray(wal.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # the middle record; the last one stays intact
    wal.write_bytes(bytes(damaged))

    environ = {"NODE_NAME": "kv-a", "DATA_DIR": str(data_dir), "GRPC_PORT": "0",
               "METRICS_PORT": "0", "CREDENTIAL_FILE": lab.credential_file}
    assert main(KV_SPEC, [], environ) == 1
    message = capsys.readouterr().err
    assert "nodes.kv: cannot start:" in message and "damaged" in message
    assert "Traceback" not in message
    assert wal.read_bytes() == bytes(damaged)  # left for whoever investigates
