"""The migration lab, for real: vm-1 (a 64 MiB memory image whose guest dirties 2000 pages a
second) moves live between three host machines while a client reads and writes its KV
through vm-switch. One lab for the module.

What a user would notice: each strategy moves the vm and the client never sees an error;
afterwards the destination serves, the source holds nothing, and the image is byte for
byte the one the guest's steps and the client's writes make (no page lost or stale); a
destination killed mid-way fails the migration and the vm serves on where it was; a
source killed mid-way is reported and the half-received vm never serves; a slow link
(tbf) does not stop pre-copy from ending; bad requests are refused and change nothing;
the scenario runs with valid verdicts; the dashboard answers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from distlab.errors import UnknownMachine, UsageError
from distlab.migration.client import Hypervisors, Limits, MigrationError
from distlab.migration.tasks import MobileTasks
from nodes.rpc import control_pb2, control_pb2_grpc, vm_pb2, vm_pb2_grpc
from nodes.vm.guest import GuestLayout, expected_image
from nodes.vm.memory import MIB, PAGE_SIZE
from tests.e2e.conftest import assert_dashboards_answer, eventually, lab_fixture, run_valid

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

testbed = lab_fixture("migration")
# compose.yaml's VM_* defaults for the migration lab.
LAYOUT = GuestLayout(pages=64 * MIB // PAGE_SIZE, kv_pages=16, hot_pages=2048,
                     hot_fraction=0.9, seed=1)
SLOW = Limits(min_rate_mib=2, max_rate_mib=2)  # 64 MiB at 2 MiB/s: half a minute


class SwitchClient(threading.Thread):
    """One client process: puts key i (of 40) = a unique value, then reads it back, through
    vm-switch, until stopped; the puts it got answers for, in order."""

    def __init__(self, testbed) -> None:
        super().__init__(daemon=True)
        (switch,) = [m for m in testbed.machines() if m.info.role == "vm-switch"]
        self.vm = vm_pb2_grpc.VMStub(switch.channel())
        self.puts: list[tuple[bytes, bytes]] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set() and i < 20_000:
            key, value = b"key-%d" % (i % 40), b"value-%d" % i
            try:
                self.vm.Put(vm_pb2.PutRequest(key=key, value=value), timeout=30)
                self.puts.append((key, value))
                got = self.vm.Get(vm_pb2.GetRequest(key=key), timeout=30)
                if got.value != value:
                    self.failures.append(f"read {got.value!r} after writing {value!r}")
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            i += 1
            time.sleep(0.01)

    def stop(self) -> SwitchClient:
        self.halt.set()
        self.join(timeout=60)
        return self


@pytest.fixture
def client(testbed):
    running = SwitchClient(testbed)
    running.start()
    eventually(lambda: len(running.puts) >= 10 or running.failures, timeout=30,
               what="the client under way")
    yield running
    running.stop()


def hypervisors(testbed) -> Hypervisors:
    return Hypervisors.of(testbed)


def where(testbed) -> dict[str, list[str]]:
    """host -> the vms it holds (each with its state)."""
    found: dict[str, list[str]] = {}
    for place in hypervisors(testbed).vms():
        found.setdefault(place.host, []).append(f"{place.name}:{place.state}")
    return found


def home(testbed) -> str:
    """The host vm-1 runs on now (the test fails if it runs on none or on two)."""
    running = [host for host, vms in where(testbed).items() if "vm-1:running" in vms]
    assert len(running) == 1, where(testbed)
    return running[0]


def switch_entries(testbed) -> str:
    (switch,) = [m for m in testbed.machines() if m.info.role == "vm-switch"]
    stub = control_pb2_grpc.ControlStub(switch.protected_channel())
    return stub.Status(control_pb2.StatusRequest(), timeout=10).state["entries"]


def others(testbed, host: str) -> list[str]:
    return sorted(h for h in hypervisors(testbed).hosts if h != host)


def slow_move(testbed, to: str) -> tuple[threading.Thread, dict[str, BaseException]]:
    """vm-1 moving to `to` for half a minute, under way (the destination receiving); the
    mover's thread, and where its MigrationError goes."""
    outcome: dict[str, BaseException] = {}

    def move():
        try:
            hypervisors(testbed).migrate("vm-1", to, limits=SLOW)
        except MigrationError as exc:
            outcome["error"] = exc

    mover = threading.Thread(target=move, daemon=True)
    mover.start()
    eventually(lambda: "vm-1:receiving" in where(testbed).get(to, []), timeout=30,
               what="the destination receiving")
    return mover, outcome


def test_each_strategy_moves_the_vm_under_a_client_and_its_image_stays_exact(testbed, client):
    for strategy in ("pre-copy", "stop-and-copy", "post-copy"):
        source = home(testbed)
        hosts = sorted(hypervisors(testbed).hosts)
        to = hosts[(hosts.index(source) + 1) % len(hosts)]  # around the three hosts
        result = hypervisors(testbed).migrate("vm-1", to, strategy=strategy)
        assert result.strategy == strategy and result.bytes_sent >= result.image_bytes
        assert home(testbed) == to  # and the source holds no vm-1:
        assert not [vm for vm in where(testbed).get(source, []) if vm.startswith("vm-1:")]
        assert switch_entries(testbed).startswith(f"distlab-{to}:")
        time.sleep(1)  # the client works at the new home
    client.stop()
    assert client.failures == [] and len(client.puts) > 100

    place = eventually(lambda: next((p for p in hypervisors(testbed).vms()
                                     if p.name == "vm-1" and p.pages_missing == 0), None),
                       timeout=60, what="every post-copy page arrived")
    (place,) = [p for p in hypervisors(testbed).vms(checksum=True) if p.name == "vm-1"]
    assert place.guest_step > 0
    assert place.checksum == expected_image(LAYOUT, place.guest_step, client.puts).checksum()


def test_bad_requests_are_refused_and_change_nothing(testbed):
    source = home(testbed)
    hv = hypervisors(testbed)
    cases = [
        (lambda: hv.migrate("vm-1", source), UsageError, "already"),
        (lambda: hv.migrate("vm-7", others(testbed, source)[0]), UnknownMachine, "no vm named"),
        (lambda: hv.migrate("vm-1", "host-9"), UnknownMachine, "no host named 'host-9'"),
        (lambda: hv.migrate("vm-1", "vm-switch-1"), UsageError, "not a host"),
        (lambda: hv.migrate(source, others(testbed, source)[0]), UsageError, "not a vm"),
        (lambda: hv.migrate("vm-1", others(testbed, source)[0], strategy="teleport"),
         UsageError, "teleport"),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as raised:
            call()
        assert words in str(raised.value), str(raised.value)
    assert home(testbed) == source


def test_the_kv_guest_moves_by_dirty_keys_under_the_register_workload(testbed, tmp_path):
    """kv-1, the kv role's store as a guest, moved three times (pre-copy of dirty keys,
    stop-and-copy, pre-copy) while the register workload runs through kv-switch: the
    history stays linearizable, no call fails; post-copy of it is refused up front."""
    source = eventually(lambda: running_home(testbed, "kv-1"), timeout=60, what="kv-1 running")
    with pytest.raises(UsageError, match="kv guest: it moves by pre-copy or stop-and-copy"):
        hypervisors(testbed).migrate("kv-1", others(testbed, source)[0], strategy="post-copy")
    if source != "host-2":  # where the lab boots it, and where the scenario expects it
        hypervisors(testbed).migrate("kv-1", "host-2")
    outcome = run_valid("migration-kv-register.yaml", tmp_path)
    checks = {v["name"]: v for v in outcome["checks"]}
    assert checks["migration"]["figures"]["migrations"] == 3
    assert checks["migration"]["figures"]["failed"] == 0
    (kv,) = [p for p in hypervisors(testbed).vms() if p.name == "kv-1"]
    assert (kv.host, kv.guest, kv.state) == ("host-2", "kv", "running") and kv.keys >= 3


def test_a_destination_killed_mid_way_fails_the_migration_and_the_source_serves_on(
        testbed, healed, client):
    source = home(testbed)
    doomed, bystander = others(testbed, source)
    mover, outcome = slow_move(testbed, doomed)
    # A second migration of the same vm is refused while the first runs.
    with pytest.raises(MigrationError) as second:
        hypervisors(testbed).migrate("vm-1", bystander)
    assert second.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already migrating" in str(second.value)

    testbed.nemesis.kill(doomed)
    mover.join(timeout=60)
    assert isinstance(outcome.get("error"), MigrationError)
    assert home(testbed) == source
    time.sleep(1)
    client.stop()
    assert client.failures == []


def test_a_source_killed_during_pre_copy_is_reported_and_nothing_half_done_serves(
        testbed, healed):
    source = home(testbed)
    to = others(testbed, source)[0]
    mover, outcome = slow_move(testbed, to)
    testbed.nemesis.kill(source)
    mover.join(timeout=60)
    assert isinstance(outcome.get("error"), MigrationError)
    # The half-received vm never served; its host stops it.
    eventually(lambda: "vm-1" not in " ".join(where(testbed).get(to, [])), timeout=30,
               what="the destination dropped the half-received vm")


def test_a_slow_link_between_hosts_still_lets_pre_copy_end(testbed, healed):
    """tbf at 32 mbit/s (4 MB/s) on the source: the guest dirties its working set faster than the
    link drains it, and pre-copy ends by Xen's rules (its round limit here) rather than
    running on."""
    source = eventually(lambda: running_home(testbed), timeout=120, what="vm-1 running")
    to = others(testbed, source)[0]
    testbed.nemesis.bandwidth(source, "32mbit")
    started = time.monotonic()
    result = hypervisors(testbed).migrate(
        "vm-1", to, limits=Limits(min_rate_mib=32, max_rate_mib=64, max_rounds=3))
    assert result.stop_reason in ("round-limit", "not-converging", "sent-factor")
    assert len(result.rounds) <= 4 and time.monotonic() - started < 400
    assert home(testbed) == to


def running_home(testbed, vm: str = "vm-1") -> str | None:
    running = [host for host, vms in where(testbed).items() if f"{vm}:running" in vms]
    return running[0] if len(running) == 1 else None


def test_the_three_moves_scenario_is_valid(testbed, tmp_path):
    source = eventually(lambda: running_home(testbed), timeout=120, what="vm-1 running")
    if source != "host-1":  # where the lab boots it, and where the scenario expects it
        hypervisors(testbed).migrate("vm-1", "host-1", strategy="post-copy")
    outcome = run_valid("migration-three-moves.yaml", tmp_path)
    checks = {v["name"]: v for v in outcome["checks"]}
    assert checks["migration"]["figures"]["migrations"] == 3
    assert checks["migration"]["figures"]["failed"] == 0


def test_a_task_moved_strong_mid_run_ends_as_one_never_moved(testbed):
    """Code mobility: primes.asm shipped to host-2, moved with its execution state to host-3
    mid-run, gives the output and step count of the same program left alone on host-1."""
    program = (ROOT / "nodes" / "mobility" / "programs" / "primes.asm").read_text()
    tasks = MobileTasks.of(testbed)
    args = {"n": "2000"}  # 231 000 steps: about 12 s at the hosts' 20 000 steps a second
    unmoved = tasks.run(program, "host-1", args, "unmoved")
    moving = tasks.run(program, "host-2", args, "moving")
    eventually(lambda: tasks.locate(moving.id).info.steps > 20_000, timeout=60,
               what="the task under way on host-2")
    arrived = tasks.move(moving.id, "host-3", "strong")
    assert arrived.host == "host-3" and arrived.steps > 20_000  # it goes on, not over

    moved, reference = tasks.wait(moving.id, timeout=120), tasks.wait(unmoved.id, timeout=120)
    assert moved.path == ("host-2", "host-3")
    assert (moved.info.state, list(moved.info.output)) == ("done", ["303"])
    assert (moved.info.output, moved.info.steps) == (reference.info.output,
                                                     reference.info.steps)


def test_the_migration_dashboard_answers(testbed):
    assert_dashboards_answer("migration")
