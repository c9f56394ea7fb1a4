"""Fuzzing the vm role (nodes.vm) on real nodes on loopback: the VM data plane through a
channel without the credential, the Migration service with it (a running vm and one waiting
for an incoming migration) and without it (every call UNAUTHENTICATED).

Migrate is left to tests/integration/test_vm_refusals.py: a made-up destination is a DNS
lookup of a made-up name, whose time is the resolver's, not the node's.
"""

from __future__ import annotations

import pytest

from nodes.rpc import vm_pb2, vm_pb2_grpc
from nodes.vm.__main__ import SPEC
from tests.integration.fuzz.support import KINDS, Target, check_size_limit, fuzz, methods_of
from tests.integration.vm_support import still_serving

LIMIT = 64 * 1024
SETTINGS = {"MAX_MESSAGE_BYTES": LIMIT, "VM_IMAGE_MIB": 1, "VM_DIRTY_RATE": 100,
            "VM_HOT_PAGES": 16, "VM_INCOMING_MAX_MIB": 4}
VM = methods_of(vm_pb2.DESCRIPTOR.services_by_name["VM"])
MIGRATION = methods_of(vm_pb2.DESCRIPTOR.services_by_name["Migration"], skip=("Migrate",))
PROTECTED = frozenset(m.path for m in MIGRATION)


@pytest.fixture(scope="module")
def running(shared_lab):
    return shared_lab.start("vm-fuzz", spec=SPEC, **SETTINGS)


@pytest.fixture(scope="module")
def incoming(shared_lab):
    return shared_lab.start("vm-fuzz-in", spec=SPEC, VM_INCOMING="true", **SETTINGS)



def still_waits(lab, node) -> None:
    status = vm_pb2_grpc.MigrationStub(lab.channel(node)).Status
    lab.wait_until(lambda: status(vm_pb2.VmStatusRequest(), timeout=5).state == "incoming",
                   what="waiting for an incoming migration again")


@pytest.mark.parametrize("kind", KINDS)
def test_the_data_plane_answers_every_body_cleanly(shared_lab, running, kind):
    fuzz(Target("vm", shared_lab.bare_channel(running), VM, credentialed=False), kind)
    still_serving(shared_lab, running)


@pytest.mark.parametrize("kind", KINDS)
def test_migration_answers_every_body_cleanly(shared_lab, running, incoming, kind):
    for node in (running, incoming):
        fuzz(Target("vm-migration", shared_lab.channel(node), MIGRATION), kind)
    still_serving(shared_lab, running)
    still_waits(shared_lab, incoming)


@pytest.mark.parametrize("kind", ["random", "extreme"])
def test_migration_without_the_credential_is_refused_whatever_the_body(shared_lab, running,
                                                                       kind):
    fuzz(Target("vm-migration-bare", shared_lab.bare_channel(running), MIGRATION,
                credentialed=False, protected=PROTECTED), kind)


def test_bodies_at_the_size_limit(shared_lab, running, incoming):
    check_size_limit(Target("vm", shared_lab.bare_channel(running), VM, credentialed=False),
                     LIMIT)
    check_size_limit(Target("vm-migration", shared_lab.channel(incoming), MIGRATION), LIMIT)
    still_serving(shared_lab, running)
    still_waits(shared_lab, incoming)
