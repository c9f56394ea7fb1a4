"""Live migration between `python -m nodes.vm` processes on loopback: each strategy moves a
vm while its guest runs and a client calls it; the destination's image equals what a run
without migration holds; the source serves nothing after; a destination killed mid-way
leaves the source serving; a source killed mid-way leaves nothing half-done serving."""

from __future__ import annotations

import grpc
import pytest

from nodes.rpc import vm_pb2
from tests.integration.conftest import wait_until
from tests.integration.vm_support import (  # noqa: F401 - vms is a fixture
    GUEST,
    FollowingClient,
    expected_checksum,
    settled,
    vms,
)

STEPS = int(GUEST["VM_GUEST_STEPS"])


@pytest.mark.parametrize("strategy", ["stop-and-copy", "pre-copy", "post-copy"])
def test_a_running_vm_moves_with_its_guest_and_a_client_and_its_image_is_exact(
        vms, strategy):  # noqa: F811
    source = vms.start("vm-1", **GUEST)
    destination = vms.start("vm-2", VM_INCOMING="true")
    client = FollowingClient(vms, source, destination.address).start()
    wait_until(lambda: len(client.acked) >= 20 and vms.status(source).guest_step > 1000,
               what="the guest and the client under way")
    progress = vms.migrate(source, destination.address, strategy,
                           min_rate=8 * 2**20, max_rate=64 * 2**20)
    wait_until(lambda: len(client.acked) >= client.moved_at + 20 if client.moved_at else False,
               what="the client served at the destination")
    client.stop()

    result = progress[-1].result
    assert progress[-1].phase == "done" and result.strategy == strategy
    assert result.guest_step > 0 and result.image_bytes == 16 * 2**20
    assert result.bytes_sent >= result.image_bytes
    if strategy == "pre-copy":
        assert [r.live for r in result.rounds][-1] is False and len(result.rounds) >= 2
        assert result.stop_reason in ("few-pages", "round-limit", "sent-factor",
                                      "not-converging")
    else:
        assert len(result.rounds) == 1
    assert client.failures == []
    assert all("not applied" in refusal for refusal in client.refusals)

    status = settled(vms, destination, STEPS)
    assert status.state == "running"
    assert status.checksum == expected_checksum(GUEST, client.acked)
    gone = vms.status(source)
    assert gone.state == "moved" and gone.moved_to == destination.address
    with pytest.raises(grpc.RpcError) as refused:
        vms.data(source).Get(vm_pb2.GetRequest(key=b"key-1"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "moved to" in refused.value.details()


def test_a_destination_killed_mid_way_fails_the_migration_and_the_source_serves_on(
        vms):  # noqa: F811
    source = vms.start("vm-1", **{**GUEST, "VM_GUEST_STEPS": "0", "VM_DIRTY_RATE": "500"})
    doomed = vms.start("vm-2", VM_INCOMING="true")
    client = FollowingClient(vms, source, doomed.address).start()
    slow = 2 * 2**20  # 16 MiB at 2 MiB/s: eight seconds of round 1
    request = vm_pb2.MigrateRequest(destination=doomed.address, strategy="pre-copy",
                                    min_rate=slow, max_rate=slow)
    call = vms.migration(source).Migrate(request, timeout=120)
    wait_until(lambda: vms.status(source).migration.pages_sent > 256,
               what="round 1 under way")
    steps_before = vms.status(source).guest_step
    doomed.kill()
    with pytest.raises(grpc.RpcError) as failed:
        list(call)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1" in failed.value.details()

    status = vms.status(source)
    assert status.state == "running" and status.moved_to == ""
    assert "UNAVAILABLE" in status.last_error or "destination" in status.last_error
    acked = len(client.acked)
    wait_until(lambda: len(client.acked) > acked + 20, what="the client served on")
    wait_until(lambda: vms.status(source).guest_step > steps_before + 100,
               what="the guest running on")
    client.stop()
    assert client.failures == [] and client.moved_at is None

    # Nothing was left half-done: the same vm migrates to a fresh destination.
    fresh = vms.start("vm-3", VM_INCOMING="true")
    done = vms.migrate(source, fresh.address, "pre-copy")
    assert done[-1].phase == "done"
    assert vms.status(fresh).state == "running"


def test_a_source_killed_mid_way_leaves_the_destination_empty_and_waiting(vms):  # noqa: F811
    source = vms.start("vm-1", **GUEST)
    destination = vms.start("vm-2", VM_INCOMING="true")
    slow = 2 * 2**20
    request = vm_pb2.MigrateRequest(destination=destination.address, strategy="pre-copy",
                                    min_rate=slow, max_rate=slow)
    call = vms.migration(source).Migrate(request, timeout=120)
    wait_until(lambda: vms.status(destination).state == "receiving", what="receiving")
    source.kill()
    with pytest.raises(grpc.RpcError):
        list(call)
    wait_until(lambda: vms.status(destination).state == "incoming",
               what="the destination dropped the half-received vm")
    with pytest.raises(grpc.RpcError) as refused:
        vms.data(destination).Get(vm_pb2.GetRequest(key=b"k"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no vm here" in refused.value.details()
    # ... and it takes the next migration in.
    other = vms.start("vm-3", **{**GUEST, "VM_GUEST_STEPS": "100"})
    assert vms.migrate(other, destination.address, "stop-and-copy")[-1].phase == "done"
    assert vms.status(destination).state == "running"


def test_stop_and_copy_pauses_for_the_whole_image_and_pre_copy_only_for_what_is_dirty(
        vms):  # noqa: F811
    """What each strategy sends while the guest is paused (the rate limiter makes stop-and-
    copy's blackout at least image / rate); downtimes compared are `make bench`'s."""
    results = {}
    for strategy in ("stop-and-copy", "pre-copy"):
        source = vms.start(f"src-{strategy}", **{**GUEST, "VM_DIRTY_RATE": "200",
                                                  "VM_GUEST_STEPS": "0"})
        destination = vms.start(f"dst-{strategy}", VM_INCOMING="true")
        rate = 16 * 2**20  # one second for the image
        results[strategy] = vms.migrate(source, destination.address, strategy, min_rate=rate,
                                        max_rate=rate)[-1].result
    stop, pre = results["stop-and-copy"], results["pre-copy"]
    pages = stop.image_bytes // 4096
    assert [(r.live, r.pages_sent) for r in stop.rounds] == [(False, pages)]
    assert stop.downtime_seconds >= (pages - 64) * 4096 / (16 * 2**20)
    paused = [r for r in pre.rounds if not r.live]
    assert len(paused) == 1 and paused[0].pages_sent < pages // 4
    assert pre.rounds[0].live and pre.rounds[0].pages_sent + pre.rounds[0].pages_skipped == pages
