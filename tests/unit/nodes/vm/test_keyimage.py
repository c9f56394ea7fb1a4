"""A kv guest's store moved by dirty keys: the same pre-copy and stop-and-copy as a memory
image, and any interleaving of puts and deletes with the protocol leaves the destination
holding exactly the keys, values and versions the source acknowledged."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.kv.store import CHECKPOINT, PUT, KVError, Record
from nodes.vm.keyimage import SLOTS, VERSION_UNIT, KeyImage, slot_of
from nodes.vm.memory import PageError
from nodes.vm.strategies import (
    Commit,
    DestinationMigration,
    Pause,
    PreCopyLimits,
    Send,
    SourceMigration,
    Strategy,
)

MIB = 1024 * 1024


def test_a_write_dirties_its_keys_slot_and_the_version_unit_only_while_tracking():
    image = KeyImage()
    image.put("a", b"1")
    assert image.take_dirty() == []
    image.start_tracking()
    image.put("b", b"2")
    image.delete("a")
    assert image.take_dirty() == sorted({slot_of("a"), slot_of("b"), VERSION_UNIT})
    assert image.units() == [slot_of("b"), VERSION_UNIT]


def test_the_kv_roles_rules_hold_in_the_guest():
    image = KeyImage(max_value_bytes=4)
    assert image.put("k", b"v") == 1 and image.put("k", b"w") == 2
    assert image.get("k") == (b"w", 2)
    with pytest.raises(KVError, match="limit is 4"):
        image.put("k", b"12345")
    with pytest.raises(KVError, match="empty"):
        image.put("", b"x")
    assert image.delete("k") and not image.delete("k")
    assert image.get("k") is None and image.store.version == 3


def test_installing_a_slot_replaces_what_the_destination_held_in_it():
    source, destination = KeyImage(), KeyImage()
    for key in ("x", "y"):
        destination.put(key, b"old")
    source.put("x", b"new")
    slot = slot_of("x")
    destination.install(slot, source.page(slot))
    destination.install(VERSION_UNIT, source.page(VERSION_UNIT))
    assert destination.get("x") == (b"new", 1)
    if slot_of("y") != slot:
        assert destination.get("y") == (b"old", 2)
    assert destination.store.version == 2  # never back: max of both


@pytest.mark.parametrize("data, problem", [
    (b"\x00\x01garbage", "corrupt"),
    (Record(PUT, 1, "elsewhere").encode(), "not a put of one of its keys"),
    (Record(CHECKPOINT, 1, "").encode(), "not a put of one of its keys"),
])
def test_a_bad_unit_is_refused_and_changes_nothing(data, problem):
    image = KeyImage()
    image.put("k", b"v")
    slot = (slot_of("elsewhere") + 1) % SLOTS
    with pytest.raises(PageError, match=problem):
        image.install(slot, data)
    with pytest.raises(PageError, match="outside"):
        image.install(SLOTS + 1, b"")
    with pytest.raises(PageError, match="one checkpoint"):
        image.install(VERSION_UNIT, Record(PUT, 1, "k").encode())
    assert image.get("k") == (b"v", 1) and len(image) == 1


def test_post_copy_is_refused_for_keys():
    with pytest.raises(ValueError, match="post-copy needs an image of pages"):
        SourceMigration(KeyImage(), Strategy.POST_COPY, now=0.0)


def test_pre_copy_of_an_idle_store_sends_each_key_once_then_stops_on_few_units():
    source = KeyImage()
    for n in range(300):
        source.put(f"key-{n}", b"v" * 100)
    core = SourceMigration(source, Strategy.PRE_COPY, now=0.0)
    destination = DestinationMigration(KeyImage(), Strategy.PRE_COPY)
    while not isinstance(step := core.next_step(0.0), Commit):
        if isinstance(step, Send):
            destination.receive(step.pages)
    assert destination.can_commit() is None
    assert destination.image.checksum() == source.checksum()
    assert core.stop_reason == "few-pages" and core.rounds[0].pages_planned == len(source.units())
    assert 1.0 <= core.image_factor < 1.01  # each record once, plus the version unit twice


# Any interleaving of client writes (held while paused) with protocol steps and time.
operation = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 40), st.binary(max_size=40)),
    st.tuples(st.just("delete"), st.integers(0, 40)),
    st.tuples(st.just("step")),
    st.tuples(st.just("tick"), st.floats(0, 0.05)))


@settings(max_examples=150)
@given(strategy=st.sampled_from([Strategy.STOP_AND_COPY, Strategy.PRE_COPY]),
       operations=st.lists(operation, max_size=120), chunk=st.integers(1, 9),
       few=st.integers(0, 20), max_rounds=st.integers(1, 6))
def test_any_interleaving_leaves_the_destination_with_what_the_source_acknowledged(
        strategy, operations, chunk, few, max_rounds):
    source, reference = KeyImage(), KeyImage()  # reference: every acknowledged write
    for n in range(20):
        for image in (source, reference):
            image.put(f"k{n}", b"seed")
    limits = PreCopyLimits(min_rate=MIB, max_rate=4 * MIB, few_pages=few, max_rounds=max_rounds)
    core = SourceMigration(source, strategy, now=0.0, limits=limits, chunk_pages=chunk)
    destination = DestinationMigration(KeyImage(), strategy)
    clock, paused, committed = 0.0, False, False

    def apply(image: KeyImage, op) -> None:
        if op[0] == "put":
            image.put(f"k{op[1]}", op[2])
        else:
            image.delete(f"k{op[1]}")

    def step() -> None:
        nonlocal clock, paused, committed
        action = core.next_step(clock)
        if isinstance(action, Send):
            clock = max(clock, action.not_before)
            destination.receive(action.pages)
        elif isinstance(action, Pause):
            paused = True
        elif isinstance(action, Commit):
            destination.commit()
            committed = True

    for op in operations:
        if committed:
            break
        if op[0] in ("put", "delete"):
            if not paused:  # held while paused: the client retries at the destination
                apply(source, op)
                apply(reference, op)
        elif op[0] == "step":
            step()
        else:
            clock += op[1]
    for _ in range(100_000):
        if committed:
            break
        step()
    assert committed
    assert destination.image.checksum() == reference.checksum()
    assert destination.image.store.version == reference.store.version
    assert core.pages_sent == sum(r.pages_sent for r in core.rounds)
    if strategy is Strategy.PRE_COPY:
        assert not core.rounds[-1].live and core.stop_reason
