"""Statement cursors: bounded by count (least recently used go first) and by idle time."""

import itertools

import pytest

from nodes.app.cursors import CursorTable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def table(clock: Clock, capacity: int = 3, idle_seconds: float = 60) -> CursorTable:
    ids = (f"c{n}" for n in itertools.count())
    return CursorTable(capacity=capacity, idle_seconds=idle_seconds, clock=clock,
                       new_id=lambda: next(ids))


def test_a_cursor_remembers_its_account_and_where_it_is(clock):
    cursors = table(clock)
    cursor_id = cursors.open("alice", 20)
    assert (cursors.get(cursor_id).account, cursors.get(cursor_id).offset) == ("alice", 20)
    cursors.advance(cursor_id, 40)
    assert cursors.get(cursor_id).offset == 40
    assert cursors.get("never-opened") is None


def test_opening_past_capacity_evicts_the_least_recently_used(clock):
    cursors = table(clock, capacity=3)
    first, second, third = (cursors.open("a", 0) for _ in range(3))
    clock.now = 1
    cursors.get(first)  # used: now second is the least recently used
    fourth = cursors.open("a", 0)
    assert len(cursors) == 3
    assert cursors.get(second) is None
    assert all(cursors.get(c) is not None for c in (first, third, fourth))


def test_an_idle_cursor_expires_and_a_used_one_does_not(clock):
    cursors = table(clock, idle_seconds=60)
    idle, busy = cursors.open("a", 0), cursors.open("b", 0)
    clock.now = 50
    cursors.get(busy)
    clock.now = 100
    assert cursors.get(idle) is None and cursors.get(busy) is not None
    assert len(cursors) == 1
    clock.now = 200
    assert len(cursors) == 0


def test_advancing_a_cursor_that_went_does_not_bring_it_back(clock):
    cursors = table(clock, capacity=1)
    gone = cursors.open("a", 0)
    cursors.open("b", 0)
    cursors.advance(gone, 10)
    assert cursors.get(gone) is None and len(cursors) == 1


def test_a_table_needs_room_and_an_idle_time():
    with pytest.raises(ValueError):
        CursorTable(capacity=0, idle_seconds=1)
    with pytest.raises(ValueError):
        CursorTable(capacity=1, idle_seconds=0)
