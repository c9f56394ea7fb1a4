"""The vm's run-time states: calls held while paused and refused once moved, a destination
that faults absent pages in, and pages that arrive late never overwriting newer writes."""

from __future__ import annotations

import threading

import pytest

from nodes.vm.guest import GuestLayout
from nodes.vm.machine import GuestSettings, VirtualMachine, VmRefused
from nodes.vm.memory import PAGE_SIZE
from nodes.vm.strategies import Strategy

LAYOUT = GuestLayout(pages=32, kv_pages=2, hot_pages=4, hot_fraction=0.5)
GUEST = GuestSettings(LAYOUT, dirty_rate=0, steps=0)


def running(**kwargs) -> VirtualMachine:
    return VirtualMachine(guest=GUEST, hold_seconds=kwargs.get("hold", 30),
                          fault_timeout=kwargs.get("fault_timeout", 30))


def in_thread(function) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run():
        try:
            outcome.append(function())
        except VmRefused as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_call_while_paused_waits_and_then_runs_here_when_the_vm_resumes():
    vm = running()
    vm.begin_outgoing("elsewhere:1")
    vm.pause()
    thread, outcome = in_thread(lambda: vm.call(lambda v: v.kv().put(b"k", b"v")))
    thread.join(0.2)
    assert thread.is_alive() and outcome == []  # held, not refused
    vm.resume()
    thread.join(10)
    assert outcome == [None] and vm.call(lambda v: v.kv().get(b"k")) == b"v"


def test_a_call_held_while_paused_is_refused_not_applied_once_the_vm_moved():
    vm = running()
    vm.begin_outgoing("vm-2:50051")
    vm.pause()
    thread, outcome = in_thread(lambda: vm.call(lambda v: v.kv().put(b"k", b"v")))
    vm.fence()
    thread.join(10)
    assert isinstance(outcome[0], VmRefused)
    assert "not applied: this vm has moved to vm-2:50051" in str(outcome[0])
    assert vm.image.read(0, 0, 1) == b"\0"


def test_a_pause_longer_than_the_hold_refuses_the_call():
    vm = running(hold=0.01)
    vm.begin_outgoing("x:1")
    vm.pause()
    with pytest.raises(VmRefused, match="paused for a migration"):
        vm.call(lambda v: None)


def test_only_a_running_vm_migrates_and_only_once_at_a_time():
    vm = running()
    vm.begin_outgoing("a:1")
    with pytest.raises(VmRefused, match="a migration to a:1 is already running"):
        vm.begin_outgoing("b:1")
    empty = VirtualMachine(guest=None, hold_seconds=1, fault_timeout=1)
    with pytest.raises(VmRefused, match="incoming"):
        empty.begin_outgoing("b:1")
    with pytest.raises(VmRefused, match="no vm here yet"):
        empty.call(lambda v: None)


def incoming_post_copy() -> tuple[VirtualMachine, list]:
    vm = VirtualMachine(guest=None, hold_seconds=1, fault_timeout=30)
    requested: list = []
    vm.begin_incoming(Strategy.POST_COPY, GUEST)
    vm.fault_sink = requested.append
    vm.commit_incoming(guest_step=0)
    return vm, requested


def test_post_copy_an_access_to_an_absent_page_asks_for_it_once_and_waits():
    vm, requested = incoming_post_copy()
    thread, outcome = in_thread(lambda: vm.call(lambda v: v.read(5, 0, 4)))
    second, outcome2 = in_thread(lambda: vm.call(lambda v: v.read(5, 4, 4)))
    for _ in range(200):
        if requested:
            break
        thread.join(0.01)
    assert requested == [[5]] and outcome == []
    vm.receive([(5, b"abcdefgh" + b"\0" * (PAGE_SIZE - 8))])
    thread.join(10)
    second.join(10)
    assert outcome == [b"abcd"] and outcome2 == [b"efgh"] and requested == [[5]]
    vm.stop()


def test_post_copy_a_page_written_here_is_not_overwritten_by_the_late_push():
    vm, requested = incoming_post_copy()
    vm.receive([(7, b"\1" * PAGE_SIZE)])
    vm.call(lambda v: v.write(7, 0, b"new"))
    vm.receive([(7, b"\1" * PAGE_SIZE)])  # pushed again: it was in the push order
    assert vm.image.read(7, 0, 4) == b"new\1"
    vm.stop()


def test_post_copy_when_the_source_goes_away_an_absent_page_is_refused_with_why():
    vm, _ = incoming_post_copy()
    vm.end_incoming("the source's stream broke")
    with pytest.raises(VmRefused, match="page 3 never arrived: the source's stream broke"):
        vm.call(lambda v: v.read(3, 0, 1))
    vm.stop()


def test_a_half_received_vm_is_dropped_when_its_source_goes_away():
    vm = VirtualMachine(guest=None, hold_seconds=1, fault_timeout=1)
    vm.begin_incoming(Strategy.PRE_COPY, GUEST)
    vm.receive([(0, b"\1" * PAGE_SIZE)])
    vm.end_incoming("gone")
    assert vm.state == "incoming" and vm.image is None
    vm.begin_incoming(Strategy.PRE_COPY, GUEST)  # ready for the next one
