"""The switch's hold: calls wait during a migration's blackout, bounded in count and time."""

from __future__ import annotations

import threading
import time

import pytest

from nodes.switch.hold import Hold, HoldFull


def waiter(target) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def wait_for_waiters(hold: Hold, count: int) -> None:
    deadline = time.monotonic() + 5
    while hold.waiting < count:
        assert time.monotonic() < deadline, "the waiter never started waiting"
        time.sleep(0.001)


def test_a_call_passes_at_once_when_nothing_is_held():
    hold = Hold(max_calls=1, max_seconds=10)
    started = time.monotonic()
    hold.enter(deadline=None)
    assert time.monotonic() - started < 1 and not hold.holding


def test_a_held_call_goes_on_when_the_switch_is_repointed():
    hold = Hold(max_calls=4, max_seconds=10)
    assert hold.start(5) == 5 and hold.holding
    thread, out = waiter(lambda: hold.enter(deadline=None))
    wait_for_waiters(hold, 1)
    assert thread.is_alive()
    hold.repointed()
    thread.join(timeout=5)
    assert out == [None] and hold.waiting == 0 and not hold.holding


def test_releasing_the_hold_lets_calls_go_to_the_same_backends():
    hold = Hold(max_calls=4, max_seconds=10)
    hold.start(5)
    generation = hold.generation
    thread, _ = waiter(lambda: hold.enter(deadline=None))
    wait_for_waiters(hold, 1)
    assert hold.start(0) == 0
    thread.join(timeout=5)
    assert not thread.is_alive() and hold.generation == generation


def test_a_hold_ends_by_itself_and_is_capped():
    hold = Hold(max_calls=4, max_seconds=0.2)
    assert hold.start(60) == 0.2  # a dead hypervisor cannot wedge the switch
    started = time.monotonic()
    hold.enter(deadline=None)
    assert 0.1 < time.monotonic() - started < 3 and not hold.holding


def test_a_call_never_waits_past_its_own_deadline():
    hold = Hold(max_calls=4, max_seconds=10)
    hold.start(10)
    started = time.monotonic()
    hold.enter(deadline=started + 0.1)
    assert time.monotonic() - started < 3


def test_one_call_more_than_the_limit_is_refused_at_once():
    hold = Hold(max_calls=1, max_seconds=10)
    hold.start(10)
    thread, _ = waiter(lambda: hold.enter(deadline=None))
    wait_for_waiters(hold, 1)
    with pytest.raises(HoldFull, match="already holds 1 calls"):
        hold.enter(deadline=None)
    hold.repointed()
    thread.join(timeout=5)


def test_a_moved_call_waits_for_the_next_repointing_only():
    hold = Hold(max_calls=4, max_seconds=10)
    seen = hold.generation
    thread, out = waiter(lambda: hold.await_move(seen, deadline=None))
    wait_for_waiters(hold, 1)
    hold.start(0)  # a released hold is no move
    time.sleep(0.05)
    assert thread.is_alive()
    hold.repointed()
    thread.join(timeout=5)
    assert out == [True]
    # Re-pointed during the attempt already: no wait at all.
    assert hold.await_move(seen, deadline=None) is True


def test_a_moved_call_gives_up_when_no_repointing_comes():
    hold = Hold(max_calls=4, max_seconds=0.1)
    assert hold.await_move(hold.generation, deadline=None) is False
