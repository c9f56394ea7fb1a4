"""vm processes on loopback for the migration tests: start, address, stop; a client that
follows the vm to its new home; the image a run without migration would hold.

Each vm is a real `python -m nodes.vm` process (its own interpreter, its own
threads), so a migration moves real bytes between processes over gRPC, and a
destination can be killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import grpc
import pytest

from nodes.common.auth import Credential, with_credential
from nodes.rpc import vm_pb2, vm_pb2_grpc
from nodes.vm.guest import GuestLayout, expected_image
from nodes.vm.memory import MIB, PAGE_SIZE
from tests.integration.conftest import credential_file, wait_until
from tests.support.ports import free_ports

# A guest that runs about 3 s at 4000 writes a second, so every migration below starts
# while it runs; 16 MiB keeps each run short on two shared cores.
GUEST = {"VM_IMAGE_MIB": "16", "VM_DIRTY_RATE": "4000", "VM_GUEST_STEPS": "12000",
         "VM_HOT_PAGES": "256", "VM_HOT_FRACTION": "0.9", "VM_KV_PAGES": "16",
         "VM_GUEST_SEED": "7"}


def layout_of(env: dict[str, str]) -> GuestLayout:
    pages = int(float(env["VM_IMAGE_MIB"]) * MIB) // PAGE_SIZE
    return GuestLayout(pages=pages, kv_pages=int(env["VM_KV_PAGES"]),
                       hot_pages=int(env["VM_HOT_PAGES"]),
                       hot_fraction=float(env["VM_HOT_FRACTION"]),
                       seed=int(env["VM_GUEST_SEED"]))


@dataclass
class VmProcess:
    name: str
    process: subprocess.Popen
    port: int
    events: list[dict] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


class VmLab:
    """Starts vm processes with one lab credential; kills what is left at the end."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.credential_file = credential_file(tmp_path)
        self.credential = Credential.from_file(self.credential_file)
        self.vms: list[VmProcess] = []
        self.channels: list[grpc.Channel] = []

    def start(self, name: str, **env: str) -> VmProcess:
        environ = {**os.environ, "NODE_NAME": name, "GRPC_PORT": "0", "METRICS_PORT": "0",
                   "DATA_DIR": str(self.tmp_path), "CREDENTIAL_FILE": self.credential_file,
                   "GRACE_SECONDS": "2", **env}
        process = subprocess.Popen([sys.executable, "-m", "nodes.vm"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=environ)
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "node_started":
                vm = VmProcess(name, process, event["grpc_port"])
                # Keep reading: a full pipe would stop the vm at its next log line.
                threading.Thread(target=self._drain, args=(vm,), daemon=True).start()
                self.vms.append(vm)
                return vm
        raise AssertionError(f"{name} did not start: {process.stderr.read()}")

    @staticmethod
    def _drain(vm: VmProcess) -> None:
        for line in vm.process.stdout:
            vm.events.append(json.loads(line))

    def channel(self, vm: VmProcess | str, credential: bool = True) -> grpc.Channel:
        address = vm if isinstance(vm, str) else vm.address
        channel = grpc.insecure_channel(address)
        self.channels.append(channel)
        return with_credential(channel, self.credential) if credential else channel

    def migration(self, vm: VmProcess) -> vm_pb2_grpc.MigrationStub:
        return vm_pb2_grpc.MigrationStub(self.channel(vm))

    def data(self, vm: VmProcess | str) -> vm_pb2_grpc.VMStub:
        return vm_pb2_grpc.VMStub(self.channel(vm, credential=False))

    def status(self, vm: VmProcess, checksum: bool = False) -> vm_pb2.VmStatus:
        return self.migration(vm).Status(vm_pb2.VmStatusRequest(checksum=checksum), timeout=10)

    def migrate(self, source: VmProcess, destination: str, strategy: str,
                **options) -> list[vm_pb2.MigrationProgress]:
        """Run a migration to the end; its progress messages (RpcError when it fails)."""
        request = vm_pb2.MigrateRequest(destination=destination, strategy=strategy, **options)
        return list(self.migration(source).Migrate(request, timeout=120))

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for vm in self.vms:
            if vm.process.poll() is None:
                vm.process.send_signal(signal.SIGTERM)
        for vm in self.vms:
            try:
                vm.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                vm.kill()


@pytest.fixture
def vms(tmp_path):
    lab = VmLab(tmp_path)
    yield lab
    lab.close()


class FollowingClient:
    """One client calling the vm in a loop: Put key-n, then Get it back, n = 0, 1, ...

    A call the vm refuses as "not applied" because it has moved is sent again to
    `destination` (the switch's job, later): a refusal that says "not applied" is
    definite, so the puts the vm acknowledged are exactly `acked`, in order.
    """

    def __init__(self, lab: VmLab, source: VmProcess, destination: str) -> None:
        self._lab = lab
        self.target = source.address
        self.destination = destination
        self.acked: list[tuple[bytes, bytes]] = []
        self.refusals: list[str] = []
        self.failures: list[str] = []  # anything else: a wrong read, an unexpected error
        self.moved_at = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FollowingClient:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _call(self, method: str, request):
        while not self._stop.is_set():
            stub = self._lab.data(self.target)
            try:
                return getattr(stub, method)(request, timeout=15)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and "not applied" in exc.details():
                    self.refusals.append(exc.details())
                    if "moved to" in exc.details():
                        self.target = self.destination
                        self.moved_at = len(self.acked)
                    continue
                self.failures.append(f"{method}: {exc.code().name} {exc.details()}")
                return None
        return None

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key, value = b"key-%d" % (n % 40), b"value-%d" % n
            if self._call("Put", vm_pb2.PutRequest(key=key, value=value)) is None:
                return
            self.acked.append((key, value))
            got = self._call("Get", vm_pb2.GetRequest(key=key))
            if got is None:
                return
            if got.value != value:
                self.failures.append(f"read {got.value!r} after writing {value!r}")
            n += 1


def expected_checksum(env: dict[str, str], puts) -> str:
    return expected_image(layout_of(env), int(env["VM_GUEST_STEPS"]), puts).checksum()


def settled(lab: VmLab, vm: VmProcess, steps: int) -> vm_pb2.VmStatus:
    """The vm's status once its guest has run every step and every page is here."""
    def done():
        status = lab.status(vm)
        return status.guest_step >= steps and status.pages_missing == 0 and status
    wait_until(done, timeout=60, what=f"{vm.name} finished its guest")
    return lab.status(vm, checksum=True)


def still_serving(lab, vm) -> None:
    """`vm` (an in-process node of `lab`) still answers a write, a read and its Status, and
    still runs its guest."""
    data = vm_pb2_grpc.VMStub(lab.bare_channel(vm))
    data.Put(vm_pb2.PutRequest(key=b"still-serving", value=b"ok"), timeout=10)
    assert data.Get(vm_pb2.GetRequest(key=b"still-serving"), timeout=10).value == b"ok"
    status = vm_pb2_grpc.MigrationStub(lab.channel(vm)).Status(vm_pb2.VmStatusRequest(),
                                                              timeout=10)
    assert status.state == "running"


def free_port_range(count: int = 4) -> str:
    """A range of `count` ports, each free with its metrics port (+1000) on this machine."""
    ports = free_ports(count, spacing=1000)
    return f"{ports[0]}-{ports[-1]}"
