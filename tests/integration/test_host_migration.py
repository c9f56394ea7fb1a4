"""Two hypervisors (in-process `host` nodes) that start real vm processes and move one between
them: the vm runs at the destination host and its process at the source has exited; a
failed migration leaves it running where it was and nothing at the destination; bad
requests are refused with what was wrong."""

from __future__ import annotations

import grpc
import pytest

from nodes.host.__main__ import SPEC as HOST_SPEC
from nodes.rpc import vm_pb2, vm_pb2_grpc
from tests.integration.vm_support import free_port_range

VM_SETTINGS = {"VM_IMAGE_MIB": "4", "VM_DIRTY_RATE": "500", "VM_HOT_PAGES": "64"}


def start_host(lab, name: str):
    return lab.start(name, spec=HOST_SPEC, HOST_ADVERTISE="127.0.0.1",
                     HOST_VM_PORTS=free_port_range(), LOG_LEVEL="info")


@pytest.fixture
def hosts(lab):
    return start_host(lab, "host-1"), start_host(lab, "host-2")


def hypervisor(lab, host) -> vm_pb2_grpc.HypervisorStub:
    return vm_pb2_grpc.HypervisorStub(lab.channel(host))


def vms_on(lab, host) -> dict[str, vm_pb2.VmInfo]:
    return {vm.name: vm for vm in hypervisor(lab, host).ListVms(vm_pb2.ListVmsRequest(),
                                                                timeout=10).vms}


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


@pytest.mark.parametrize("strategy", ["pre-copy", "post-copy"])
def test_a_vm_moves_to_the_other_host_and_its_source_process_exits(lab, hosts, strategy):
    one, two = hosts
    started = hypervisor(lab, one).StartVm(vm_pb2.StartVmRequest(name="vm-1",
                                                                 settings=VM_SETTINGS),
                                           timeout=60)
    assert started.state == "running" and started.pages == 1024
    data = vm_pb2_grpc.VMStub(lab.bare_channel(started.address))
    data.Put(vm_pb2.PutRequest(key=b"before", value=b"the move"), timeout=10)
    source_process = lab.nodes[0].role._table.get("vm-1").process

    progress = list(hypervisor(lab, one).MigrateVm(vm_pb2.MigrateVmRequest(
        name="vm-1", to=lab.address(two), strategy=strategy), timeout=120))
    assert progress[-1].phase == "done" and progress[-1].result.strategy == strategy

    assert vms_on(lab, one) == {}
    assert source_process.poll() == 0
    moved = vms_on(lab, two)["vm-1"]
    assert moved.state == "running" and moved.address != started.address
    there = vm_pb2_grpc.VMStub(lab.bare_channel(moved.address))
    assert there.Get(vm_pb2.GetRequest(key=b"before"), timeout=10).value == b"the move"


def test_a_failed_migration_leaves_the_vm_where_it_was_and_nothing_at_the_destination(
        lab, hosts):
    one, two = hosts
    hypervisor(lab, one).StartVm(vm_pb2.StartVmRequest(name="vm-1", settings=VM_SETTINGS),
                                 timeout=60)
    slow = 128 * 1024.0  # 4 MiB at 128 KiB/s: 32 s, cut short below
    call = hypervisor(lab, one).MigrateVm(vm_pb2.MigrateVmRequest(
        name="vm-1", to=lab.address(two), strategy="pre-copy", min_rate=slow, max_rate=slow),
        timeout=120)
    lab.wait_until(lambda: "vm-1" in two.role._table.entries, what="an incoming vm process")
    next(call)  # the migration runs
    two.role._table.get("vm-1").process.kill()
    error = refused(lambda: list(call))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert vms_on(lab, one)["vm-1"].state == "running"
    assert vms_on(lab, two) == {}


def test_a_source_host_lost_mid_way_leaves_nothing_at_the_destination(lab, hosts):
    one, two = hosts
    hypervisor(lab, one).StartVm(vm_pb2.StartVmRequest(name="vm-1", settings=VM_SETTINGS),
                                 timeout=60)
    slow = 128 * 1024.0
    call = hypervisor(lab, one).MigrateVm(vm_pb2.MigrateVmRequest(
        name="vm-1", to=lab.address(two), strategy="pre-copy", min_rate=slow, max_rate=slow),
        timeout=120)
    next(call)
    lab.wait_until(lambda: vms_on(lab, two).get("vm-1", vm_pb2.VmInfo()).state == "receiving",
                   what="the destination receiving")
    one.role._table.get("vm-1").process.kill()  # the source host's vm dies with it
    refused(lambda: list(call))
    # The half-received vm never serves: its host stops it once the transfer broke off.
    lab.wait_until(lambda: vms_on(lab, two) == {}, timeout=20,
                   what="the destination host reaped its abandoned incoming vm")


def test_bad_requests_are_refused_with_what_was_wrong_and_change_nothing(lab, hosts):
    one, two = hosts
    stub = hypervisor(lab, one)
    stub.StartVm(vm_pb2.StartVmRequest(name="vm-1", settings=VM_SETTINGS), timeout=60)

    def migrate(**fields):
        return refused(lambda: list(stub.MigrateVm(vm_pb2.MigrateVmRequest(**fields),
                                                   timeout=60)))

    def start(**fields):
        return refused(lambda: stub.StartVm(vm_pb2.StartVmRequest(**fields), timeout=30))

    cases = [
        (migrate(name="vm-9", to=lab.address(two)), grpc.StatusCode.NOT_FOUND,
         "no vm named 'vm-9'"),
        (migrate(name="vm-1", to=lab.address(one)), grpc.StatusCode.INVALID_ARGUMENT,
         "goes to another host"),
        (migrate(name="vm-1", to="host-404.invalid:50051"), grpc.StatusCode.NOT_FOUND,
         "no machine named"),
        (migrate(name="vm-1", to=lab.address(two), strategy="teleport"),
         grpc.StatusCode.INVALID_ARGUMENT, "teleport"),
        (start(name="vm-1"),
         grpc.StatusCode.ALREADY_EXISTS, "already holds a vm named 'vm-1'"),
        (start(name="VM 2"),
         grpc.StatusCode.INVALID_ARGUMENT, "must be 1-40 characters"),
        (start(name="vm-2", settings={"VM_HOT_FRACTION": "5"}),
         grpc.StatusCode.INVALID_ARGUMENT, "VM_HOT_FRACTION"),
        (start(name="vm-2", settings={"GRPC_PORT": "1"}),
         grpc.StatusCode.INVALID_ARGUMENT, "VM_* settings"),
        (start(name="vm-2", settings={"VM_A=B": "1"}),
         grpc.StatusCode.INVALID_ARGUMENT, "VM_* settings"),
        (start(name="vm-2", settings={"VM_HOT_PAGES": "1\0"}),
         grpc.StatusCode.INVALID_ARGUMENT, "NUL byte"),
    ]
    for error, code, words in cases:
        assert (error.code(), words in error.details()) == (code, True), error.details()
    assert set(vms_on(lab, one)) == {"vm-1"} and vms_on(lab, one)["vm-1"].state == "running"
    assert vms_on(lab, two) == {}


def test_the_hypervisor_needs_the_lab_credential(lab, hosts):
    stranger = vm_pb2_grpc.HypervisorStub(lab.bare_channel(hosts[0]))
    error = refused(lambda: stranger.ListVms(vm_pb2.ListVmsRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
