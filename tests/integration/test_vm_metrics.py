"""A vm's /metrics while it migrates and after: the round and pages left of the running
migration, then the migrations counted by outcome and the downtime observed."""

from __future__ import annotations

import grpc
import pytest

from nodes.rpc import vm_pb2, vm_pb2_grpc
from nodes.vm.__main__ import SPEC

GUEST = {"VM_IMAGE_MIB": "4", "VM_DIRTY_RATE": "200", "VM_HOT_PAGES": "64"}


def test_a_migration_shows_in_the_metrics_while_it_runs_and_is_counted_after(lab):
    source = lab.start("vm-1", spec=SPEC, **GUEST)
    slow_target = lab.start("vm-2", spec=SPEC, VM_INCOMING="true")
    stub = vm_pb2_grpc.MigrationStub(lab.channel(source))
    slow = 256 * 1024.0  # 4 MiB at 256 KiB/s: round 1 lasts 16 s, cut short below
    call = stub.Migrate(vm_pb2.MigrateRequest(destination=lab.address(slow_target),
                                              strategy="pre-copy", min_rate=slow,
                                              max_rate=slow), timeout=60)
    running = lab.wait_until(
        lambda: (s := lab.scrape(source)).get("distlab_vm_migration_round") == 1 and s,
        what="round 1 in the metrics")
    assert 0 < running.get("distlab_vm_migration_pages_left") <= 1024
    lab.stop(slow_target)
    with pytest.raises(grpc.RpcError):
        list(call)

    target = lab.start("vm-3", spec=SPEC, VM_INCOMING="true")
    list(stub.Migrate(vm_pb2.MigrateRequest(destination=lab.address(target),
                                            strategy="stop-and-copy"), timeout=60))
    after = lab.scrape(source)
    assert after.get("distlab_vm_migrations_total", strategy="pre-copy", outcome="failed") == 1
    assert after.get("distlab_vm_migrations_total", strategy="stop-and-copy",
                     outcome="done") == 1
    assert after.get("distlab_vm_migration_downtime_seconds_count") == 1
    assert after.get("distlab_vm_migration_sent_bytes_total") == 4 * 2**20
    assert after.get("distlab_vm_migration_round") == 0  # nothing running any more
    assert lab.scrape(target).get("distlab_vm_image_bytes") == 4 * 2**20
