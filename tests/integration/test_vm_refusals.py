"""Bad migrations are refused with a clear status and change nothing: an unknown or the same
destination, one that already runs a vm, a bad strategy, two at once, no credential, and
Transfer streams that break the protocol. In-process vm nodes (the `lab` fixture)."""

from __future__ import annotations

import grpc
import pytest

from nodes.rpc import vm_pb2, vm_pb2_grpc
from nodes.vm.__main__ import SPEC
from tests.integration.vm_support import still_serving

GUEST = {"VM_IMAGE_MIB": "4", "VM_DIRTY_RATE": "200", "VM_HOT_PAGES": "64"}


def start_vm(lab, name, **env):
    return lab.start(name, spec=SPEC, **env)


def migrate(lab, source, destination: str, strategy: str = "pre-copy", **options):
    stub = vm_pb2_grpc.MigrationStub(lab.channel(source))
    return list(stub.Migrate(vm_pb2.MigrateRequest(destination=destination, strategy=strategy,
                                                   **options), timeout=60))


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value



@pytest.fixture
def source(lab):
    return start_vm(lab, "vm-1", **GUEST)


@pytest.mark.parametrize("destination,code,words", [
    ("no-such-host.invalid:50051", grpc.StatusCode.NOT_FOUND, "no machine named"),
    ("nonsense", grpc.StatusCode.INVALID_ARGUMENT, "host:port"),
    ("127.0.0.1:1", grpc.StatusCode.UNAVAILABLE, "127.0.0.1:1"),
])
def test_an_unknown_or_unreachable_destination_is_refused_and_nothing_changes(
        lab, source, destination, code, words):
    error = refused(lambda: migrate(lab, source, destination))
    assert error.code() == code and words in error.details()
    still_serving(lab, source)


def test_migrating_to_itself_is_refused(lab, source):
    error = refused(lambda: migrate(lab, source, lab.address(source)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot migrate to itself" in error.details()
    still_serving(lab, source)


def test_a_destination_that_already_runs_a_vm_is_refused(lab, source):
    busy = start_vm(lab, "vm-2", **GUEST)
    error = refused(lambda: migrate(lab, source, lab.address(busy)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already holds a vm" in error.details()
    still_serving(lab, source)
    still_serving(lab, busy)


def test_a_bad_strategy_or_rate_is_refused(lab, source):
    target = lab.address(start_vm(lab, "vm-2", VM_INCOMING="true"))
    error = refused(lambda: migrate(lab, source, target, strategy="teleport"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "teleport" in error.details()
    error = refused(lambda: migrate(lab, source, target, min_rate=10.0, max_rate=5.0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_rate" in error.details()
    error = refused(lambda: migrate(lab, source, target, min_rate=float("nan")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "finite" in error.details()
    still_serving(lab, source)


def test_two_migrations_of_one_vm_at_once_the_second_is_refused(lab, source):
    first = lab.address(start_vm(lab, "vm-2", VM_INCOMING="true"))
    second = lab.address(start_vm(lab, "vm-3", VM_INCOMING="true"))
    slow = 256 * 1024.0  # 4 MiB at 256 KiB/s: 16 s, stopped below
    stub = vm_pb2_grpc.MigrationStub(lab.channel(source))
    running = stub.Migrate(vm_pb2.MigrateRequest(destination=first, strategy="pre-copy",
                                                 min_rate=slow, max_rate=slow), timeout=60)
    lab.wait_until(lambda: stub.Status(vm_pb2.VmStatusRequest()).state == "migrating",
                   what="the first migration running")
    error = refused(lambda: migrate(lab, source, second))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"a migration to {first} is already running" in error.details()
    running.cancel()  # the caller leaving does not stop the migration
    assert stub.Status(vm_pb2.VmStatusRequest()).state == "migrating"


def test_a_migration_into_a_process_that_is_receiving_one_is_refused(lab):
    target = start_vm(lab, "vm-9", VM_INCOMING="true")
    slow = 256 * 1024.0
    one = start_vm(lab, "vm-1", **GUEST)
    other = start_vm(lab, "vm-2", **GUEST)
    stub = vm_pb2_grpc.MigrationStub(lab.channel(one))
    running = stub.Migrate(vm_pb2.MigrateRequest(destination=lab.address(target),
                                                 strategy="pre-copy", min_rate=slow,
                                                 max_rate=slow), timeout=60)
    status = vm_pb2_grpc.MigrationStub(lab.channel(target)).Status
    lab.wait_until(lambda: status(vm_pb2.VmStatusRequest()).state == "receiving",
                   what="receiving")
    error = refused(lambda: migrate(lab, other, lab.address(target)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already running" in error.details()
    still_serving(lab, other)
    running.cancel()


def test_migration_needs_the_lab_credential_and_the_data_plane_does_not(lab, source):
    stranger = vm_pb2_grpc.MigrationStub(lab.bare_channel(source))
    error = refused(lambda: list(stranger.Migrate(
        vm_pb2.MigrateRequest(destination="127.0.0.1:1"), timeout=10)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    still_serving(lab, source)


def transfer(lab, node, *messages):
    stub = vm_pb2_grpc.MigrationStub(lab.channel(node))
    return list(stub.Transfer(iter(messages), timeout=10))


def begin(**fields) -> vm_pb2.TransferMessage:
    defaults = dict(migration_id="m", strategy="pre-copy", pages=16, page_size=4096,
                    source_node="vm-x", kv_pages=1, hot_pages=4, hot_fraction=0.5, seed=1)
    return vm_pb2.TransferMessage(begin=vm_pb2.TransferBegin(**{**defaults, **fields}))


@pytest.mark.parametrize("messages,words", [
    ((vm_pb2.TransferMessage(commit=vm_pb2.TransferCommit()),), "starts with begin"),
    ((begin(page_size=512),), "page_size"),
    ((begin(pages=10**9),), "does not fit"),
    ((begin(strategy="warp"),), "warp"),
    ((begin(kv_pages=16),), "kv_pages"),
    ((begin(), vm_pb2.TransferMessage(pages=vm_pb2.TransferPages(index=[0], data=b"x"))),
     "need 4096 bytes"),
    ((begin(), vm_pb2.TransferMessage(pages=vm_pb2.TransferPages(index=[99],
                                                                  data=b"\0" * 4096))),
     "outside the image"),
    ((begin(), vm_pb2.TransferMessage(commit=vm_pb2.TransferCommit())), "have not arrived"),
])
def test_a_transfer_that_breaks_the_protocol_is_refused_and_the_process_waits_again(
        lab, messages, words):
    target = start_vm(lab, "vm-9", VM_INCOMING="true")
    error = refused(lambda: transfer(lab, target, *messages))
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.FAILED_PRECONDITION)
    assert words in error.details()
    status = vm_pb2_grpc.MigrationStub(lab.channel(target)).Status
    lab.wait_until(lambda: status(vm_pb2.VmStatusRequest()).state == "incoming",
                   what="waiting for a migration again")
