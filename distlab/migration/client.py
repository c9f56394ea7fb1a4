"""One choke point for the host's calls to the migration lab's hypervisors: where each vm
runs, and moving one to another host.

Every request is checked here before anything changes (an unknown or a non-host
destination, a machine that is not a vm, a vm already on that host), so a bad one is
refused with what to type instead. The hypervisors refuse the rest themselves (a second
migration of one vm: FAILED_PRECONDITION), and their refusals become MigrationErrors that
say what they answered. Channels present the lab credential: the Hypervisor service is
the lab's control plane.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from distlab.errors import MigrationError, UnknownMachine, UsageError
from distlab.machine import Machine
from nodes.rpc import vm_pb2, vm_pb2_grpc

HOST_ROLE = "host"
SWITCH_ROLE = "vm-switch"
STRATEGIES = ("pre-copy", "stop-and-copy", "post-copy")
LIST_SECONDS = 10.0
# A hypervisor's own deadline for one migration is HOST_MIGRATION_TIMEOUT_SECONDS (600).
MIGRATE_SECONDS = 660.0
MIB = 1024 * 1024
# The states of a vm process a migration is filling (nodes.vm.machine): not the vm yet.
ARRIVING = ("incoming", "receiving")


@dataclass(frozen=True)
class VmPlace:
    name: str
    host: str  # the host machine's name ("host-2")
    address: str
    state: str
    guest_step: int
    pages: int
    checksum: str = ""  # sha256 of the image, when asked
    pages_missing: int = 0  # post-copy: pages not arrived yet
    guest: str = "pages"  # pages (a memory image) or kv (the kv role's store)
    keys: int = 0  # a kv guest: the keys it holds


@dataclass(frozen=True)
class Limits:
    """Pre-copy's rate limit (MiB/s) and round limit; 0 keeps the vm's settings."""

    min_rate_mib: float = 0.0
    max_rate_mib: float = 0.0
    max_rounds: int = 0


class Hypervisors:
    """The lab's running hosts, asked over gRPC."""

    def __init__(self, machines: Sequence[Machine]) -> None:
        self.machines = list(machines)
        self.hosts = {m.name: m for m in machines
                      if m.info.role == HOST_ROLE and m.info.grpc_endpoint}
        self.unreachable: dict[str, str] = {}  # host -> why it did not answer ListVms

    @classmethod
    def of(cls, testbed) -> Hypervisors:
        hypervisors = cls(testbed.machines())
        if not hypervisors.hosts:
            raise MigrationError("no hypervisor host is running", hint="distlab up migration")
        return hypervisors

    def _stub(self, host: str) -> vm_pb2_grpc.HypervisorStub:
        return vm_pb2_grpc.HypervisorStub(self.hosts[host].protected_channel())

    def vms(self, *, checksum: bool = False) -> list[VmPlace]:
        """Every vm on every host that answers; the others are in `unreachable`."""
        places = []
        self.unreachable = {}
        for host in sorted(self.hosts):
            try:
                reply = self._stub(host).ListVms(vm_pb2.ListVmsRequest(checksum=checksum),
                                                 timeout=LIST_SECONDS * (6 if checksum else 1))
            except grpc.RpcError as exc:
                self.unreachable[host] = f"{exc.code().name}: {exc.details()}"
                continue
            places.extend(VmPlace(vm.name, host, vm.address, vm.state, vm.guest_step, vm.pages,
                                  vm.checksum, vm.pages_missing, vm.guest or "pages", vm.keys)
                          for vm in reply.vms)
        return places

    def locate(self, name: str) -> VmPlace:
        """Where vm `name` runs (not where a copy of it is arriving)."""
        places = self.vms()
        found = sorted((place for place in places if place.name == name),
                       key=lambda place: place.state in ARRIVING)
        if found:
            return found[0]
        vms = ", ".join(sorted({p.name for p in places})) or "none"
        machine = next((m for m in self.machines if m.name == name), None)
        if machine is not None:
            raise UsageError(f"{name} is a {machine.info.role} machine, not a vm: it cannot be "
                             "migrated", hint=f"vms that can: {vms}")
        silent = (f"; {', '.join(sorted(self.unreachable))} did not answer"
                  if self.unreachable else "")
        raise UnknownMachine(f"no vm named {name!r}{silent}", hint=f"vms: {vms}")

    def migrate(self, name: str, to: str, *, strategy: str = "pre-copy",
                limits: Limits = Limits(),
                on_progress: Callable[[vm_pb2.MigrationProgress], None] = lambda p: None,
                ) -> vm_pb2.MigrationResult:
        """Move vm `name` to host `to`; the result, or MigrationError (the vm then runs where
        it was, or the error says what is not known)."""
        if strategy not in STRATEGIES:
            raise UsageError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        target = self.host(to)
        place = self.locate(name)
        if place.host == to:
            raise UsageError(f"{name} is on {to} already: a migration goes to another host",
                             hint=f"hosts: {', '.join(h for h in sorted(self.hosts) if h != to)}")
        if place.guest == "kv" and strategy == "post-copy":
            raise UsageError(f"{name} runs a kv guest: it moves by pre-copy or stop-and-copy "
                             "(post-copy would serve keys that have not arrived as absent)",
                             hint=f"distlab migrate {name} --to {to} --strategy pre-copy")
        request = vm_pb2.MigrateVmRequest(
            name=name, to=target.address, strategy=strategy,
            min_rate=limits.min_rate_mib * MIB, max_rate=limits.max_rate_mib * MIB,
            max_rounds=limits.max_rounds)
        last = None
        try:
            for progress in self._stub(place.host).MigrateVm(request, timeout=MIGRATE_SECONDS):
                on_progress(progress)
                last = progress
        except grpc.RpcError as exc:
            raise MigrationError(f"migrating {name} from {place.host} to {to}: "
                                 f"{exc.code().name}: {exc.details()}", code=exc.code(),
                                 hint=_hint(exc.code(), name)) from None
        if last is None or not last.HasField("result"):
            raise MigrationError(f"migrating {name}: {place.host} ended the migration without "
                                 "a result", code=grpc.StatusCode.UNKNOWN)
        return last.result

    def host(self, name: str) -> Machine:
        """The running host machine `name`; a UsageError or MigrationError says what it is
        instead (unknown, not running, not a host) and which hosts there are."""
        if name in self.hosts:
            return self.hosts[name]
        hosts = ", ".join(sorted(self.hosts))
        machine = next((m for m in self.machines if m.name == name), None)
        if machine is not None and machine.info.role == HOST_ROLE:
            raise MigrationError(f"host {name} is not running ({machine.info.state})",
                                 hint=f"distlab heal, or a running host: {hosts}")
        if machine is not None:
            raise UsageError(f"{name} is a {machine.info.role} machine, not a host: vms and "
                             "tasks move to hypervisor hosts", hint=f"hosts: {hosts}")
        raise UnknownMachine(f"no host named {name!r}", hint=f"hosts: {hosts}")


def _hint(code: grpc.StatusCode, name: str) -> str:
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return f"wait for the running migration of {name} to end: distlab vms"
    if code == grpc.StatusCode.UNKNOWN:
        return f"distlab vms shows where {name} runs now"
    return ""
