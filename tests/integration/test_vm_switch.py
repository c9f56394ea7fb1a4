"""A vm behind a switch moves between two hypervisors while a client calls it through the
switch: the client sees a delay, never an error, and every write it made is read back at
the new home. The hypervisors steer the switch (hold at the pause, re-point at the commit)
and one of them boots the vm with the lab."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from nodes.host.__main__ import SPEC as HOST_SPEC
from nodes.rpc import control_pb2, kv_pb2, kv_pb2_grpc, vm_pb2, vm_pb2_grpc
from nodes.switch.__main__ import SPEC as SWITCH_SPEC
from tests.integration.vm_support import free_port_range
from tests.support.ports import free_ports

GUEST = {"VM_IMAGE_MIB": "8", "VM_DIRTY_RATE": "2000", "VM_HOT_PAGES": "128"}


def switch_and_hosts(lab, vm: str, service: str, idempotent: str, **host_settings):
    """A switch in front of `vm` (serving `service`), and two hosts, host-1 booting it."""
    placeholder = free_ports(1)[0]
    switch = lab.start(f"{vm}-switch", spec=SWITCH_SPEC, SWITCH_SERVICES=service,
                       SWITCH_BACKENDS=f"127.0.0.1:{placeholder}",
                       SWITCH_IDEMPOTENT_METHODS=idempotent,
                       SWITCH_DISCOVERY_INTERVAL_SECONDS="0.2",
                       SWITCH_HEALTH_INTERVAL_SECONDS="0.2", WORKERS="32")
    hosts = [lab.start(name, spec=HOST_SPEC, HOST_ADVERTISE="127.0.0.1",
                       HOST_VM_PORTS=free_port_range(), HOST_BOOT_VMS=f"{vm}@host-1",
                       HOST_SWITCHES=f"{vm}={lab.address(switch)}", **host_settings)
             for name in ("host-1", "host-2")]
    return switch, hosts


@pytest.fixture
def lab_with_switch(lab, monkeypatch):
    for key, value in GUEST.items():
        monkeypatch.setenv(key, value)  # the booted vm takes its host's VM_* settings
    return switch_and_hosts(lab, "vm-1", "distlab.vm.VM",
                            "/distlab.vm.VM/Get,/distlab.vm.VM/ReadPage")


class Client(threading.Thread):
    """Writes key i = value i, then reads it back, through the switch, until stopped."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(daemon=True)
        self.vm = vm_pb2_grpc.VMStub(channel)
        self.stop = threading.Event()
        self.written: dict[bytes, bytes] = {}
        self.failures: list[str] = []
        self.longest_gap = 0.0

    def run(self) -> None:
        last = time.monotonic()
        i = 0
        while not self.stop.is_set() and i < 5000:
            key, value = b"k%d" % (i % 200), b"v%d" % i
            try:
                self.vm.Put(vm_pb2.PutRequest(key=key, value=value), timeout=20)
                self.written[key] = value
                got = self.vm.Get(vm_pb2.GetRequest(key=key), timeout=20)
                if got.value != value:
                    self.failures.append(f"read {got.value!r} for {key!r}, wrote {value!r}")
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now
            i += 1
            time.sleep(0.005)


def switch_state(lab, switch) -> dict[str, str]:
    return dict(lab.control(switch).Status(control_pb2.StatusRequest(), timeout=5).state)


def vms_on(lab, host) -> dict[str, vm_pb2.VmInfo]:
    return {vm.name: vm for vm in vm_pb2_grpc.HypervisorStub(lab.channel(host)).ListVms(
        vm_pb2.ListVmsRequest(), timeout=10).vms}


def test_each_strategy_moves_the_vm_under_a_client_that_never_fails(lab, lab_with_switch):
    switch, (one, two) = lab_with_switch
    booted = vms_on(lab, one)["vm-1"]
    assert booted.state == "running" and vms_on(lab, two) == {}
    lab.wait_until(lambda: switch_state(lab, switch)["backends"] == "1/1", timeout=20)
    client = Client(lab.bare_channel(switch))
    client.start()
    here, there = one, two
    try:
        for strategy in ("pre-copy", "stop-and-copy", "post-copy"):
            time.sleep(0.5)  # the client runs against the vm where it is first
            last = list(vm_pb2_grpc.HypervisorStub(lab.channel(here)).MigrateVm(
                vm_pb2.MigrateVmRequest(name="vm-1", to=lab.address(there), strategy=strategy),
                timeout=120))[-1]
            assert last.phase == "done", strategy
            moved = vms_on(lab, there)["vm-1"]
            assert vms_on(lab, here) == {} and moved.state == "running"
            assert switch_state(lab, switch)["entries"] == moved.address
            here, there = there, here
        time.sleep(0.5)
    finally:
        client.stop.set()
        client.join(timeout=30)
    assert client.failures == []
    assert len(client.written) == 200
    reader = vm_pb2_grpc.VMStub(lab.bare_channel(switch))
    for key, value in client.written.items():
        assert reader.Get(vm_pb2.GetRequest(key=key), timeout=10).value == value


@pytest.fixture
def kv_lab_with_switch(lab):
    return switch_and_hosts(lab, "kv-1", "distlab.kv.KV",
                            "/distlab.kv.KV/Get,/distlab.kv.KV/List", HOST_VM_GUESTS="kv-1=kv")


class KVClient(threading.Thread):
    """Puts its own keys, reads each back at once, deletes some: through the switch, until
    stopped. A read that misses the last acknowledged write is a stale read."""

    def __init__(self, channel: grpc.Channel, name: str) -> None:
        super().__init__(daemon=True)
        self.kv = kv_pb2_grpc.KVStub(channel)
        self.name = name
        self.stop = threading.Event()
        self.acknowledged: dict[str, bytes | None] = {}  # None: deleted
        self.versions: list[int] = []
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < 5000:
            key, value = f"{self.name}/{i % 50}", f"v{i}".encode()
            try:
                if i % 7 == 6:
                    self.kv.Delete(kv_pb2.DeleteRequest(key=key), timeout=20)
                    self.acknowledged[key] = None
                else:
                    reply = self.kv.Put(kv_pb2.PutRequest(key=key, value=value), timeout=20)
                    self.acknowledged[key] = value
                    self.versions.append(reply.version)
                    got = self.kv.Get(kv_pb2.GetRequest(key=key), timeout=20)
                    if got.value != value:
                        self.failures.append(f"stale read of {key}: {got.value!r}, not {value!r}")
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            i += 1
            time.sleep(0.002)


def test_a_kv_guest_moves_by_dirty_keys_with_no_write_lost_and_no_stale_read(
        lab, kv_lab_with_switch):
    switch, (one, two) = kv_lab_with_switch
    lab.wait_until(lambda: switch_state(lab, switch)["backends"] == "1/1", timeout=20)
    clients = [KVClient(lab.bare_channel(switch), f"c{n}") for n in range(3)]
    for client in clients:
        client.start()
    here, there = one, two
    try:
        refused = vm_pb2_grpc.HypervisorStub(lab.channel(one)).MigrateVm(
            vm_pb2.MigrateVmRequest(name="kv-1", to=lab.address(two), strategy="post-copy"),
            timeout=60)
        with pytest.raises(grpc.RpcError) as caught:
            list(refused)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "pre-copy or stop-and-copy" in caught.value.details()
        for strategy in ("pre-copy", "stop-and-copy", "pre-copy"):
            time.sleep(0.7)
            last = list(vm_pb2_grpc.HypervisorStub(lab.channel(here)).MigrateVm(
                vm_pb2.MigrateVmRequest(name="kv-1", to=lab.address(there), strategy=strategy),
                timeout=120))[-1]
            assert last.phase == "done", strategy
            assert last.result.downtime_seconds < 5 and last.result.image_bytes > 0
            if strategy == "pre-copy":  # live rounds of dirty keys, then the final one
                assert len(last.result.rounds) >= 2 and not last.result.rounds[-1].live
            moved = vms_on(lab, there)["kv-1"]
            assert vms_on(lab, here) == {} and moved.guest == "kv" and moved.keys > 0
            here, there = there, here
        time.sleep(0.5)
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(timeout=30)
    reader = kv_pb2_grpc.KVStub(lab.bare_channel(switch))
    for client in clients:
        assert client.failures == []
        assert client.versions == sorted(client.versions)  # versions go on from the source's
        for key, value in client.acknowledged.items():
            if value is None:
                with pytest.raises(grpc.RpcError) as missing:
                    reader.Get(kv_pb2.GetRequest(key=key), timeout=10)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            else:
                assert reader.Get(kv_pb2.GetRequest(key=key), timeout=10).value == value
