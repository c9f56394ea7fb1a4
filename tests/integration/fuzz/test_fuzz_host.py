"""Fuzzing the hypervisor (nodes.host: Hypervisor) on a real node on loopback.

With the credential: ListVms, StopVm, StartVm and PrepareIncoming. The host
has one vm port, so at most one vm process is ever started by the fuzzing
and the rest are refused for want of a port; it is stopped after every
call, so the next valid body gets a port again. MigrateVm is left to
tests/integration/test_host_migration.py: a made-up destination is a DNS
lookup of a made-up name, whose time is the resolver's. Without the
credential every method, MigrateVm included, is refused UNAUTHENTICATED
whatever the body. Afterwards the host still starts and lists a vm.
"""

from __future__ import annotations

import grpc
import pytest

from nodes.host.__main__ import SPEC as HOST_SPEC
from nodes.rpc import vm_pb2, vm_pb2_grpc
from tests.integration.fuzz.support import KINDS, Target, check_size_limit, fuzz, methods_of
from tests.integration.vm_support import free_port_range

LIMIT = 64 * 1024
HYPERVISOR = vm_pb2.DESCRIPTOR.services_by_name["Hypervisor"]
METHODS = methods_of(HYPERVISOR, skip=("MigrateVm",))
PROTECTED = frozenset(m.path for m in methods_of(HYPERVISOR))
# Starting a vm process takes a few seconds on a loaded machine.
SLOW = {"StartVm": 60.0, "PrepareIncoming": 60.0, "StopVm": 30.0}


@pytest.fixture(scope="module")
def host(shared_lab):
    return shared_lab.start("host-fuzz", spec=HOST_SPEC, HOST_ADVERTISE="127.0.0.1",
                            HOST_VM_PORTS=free_port_range(1), MAX_MESSAGE_BYTES=LIMIT)


def stop_every_vm(lab, host) -> None:
    stub = vm_pb2_grpc.HypervisorStub(lab.channel(host))
    for vm in stub.ListVms(vm_pb2.ListVmsRequest(), timeout=10).vms:
        try:
            stub.StopVm(vm_pb2.StopVmRequest(name=vm.name), timeout=30)
        except grpc.RpcError as exc:  # gone already: what was wanted
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc


def still_starts_a_vm(lab, host) -> None:
    stub = vm_pb2_grpc.HypervisorStub(lab.channel(host))
    stub.StartVm(vm_pb2.StartVmRequest(name="after-fuzz"), timeout=60)
    assert [vm.name for vm in stub.ListVms(vm_pb2.ListVmsRequest(), timeout=10).vms] == \
        ["after-fuzz"]
    stop_every_vm(lab, host)


@pytest.mark.parametrize("kind", KINDS)
def test_the_hypervisor_answers_every_body_cleanly(shared_lab, host, kind):
    fuzz(Target("host", shared_lab.channel(host), METHODS, timeouts=SLOW), kind,
         after=lambda: stop_every_vm(shared_lab, host))
    fuzz(Target("host-bare", shared_lab.bare_channel(host), methods_of(HYPERVISOR),
                credentialed=False, protected=PROTECTED), kind, examples=10)


def test_bodies_at_the_size_limit_then_a_vm_still_starts(shared_lab, host):
    check_size_limit(Target("host", shared_lab.channel(host), METHODS, timeouts=SLOW), LIMIT,
                     after_call=lambda: stop_every_vm(shared_lab, host))
    still_starts_a_vm(shared_lab, host)
