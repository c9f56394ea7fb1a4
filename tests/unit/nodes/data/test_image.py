"""nodes/data/image.py: a replica's store moved by dirty keys with the vm's pre-copy, and any
interleaving of updates with the protocol leaves the destination equal to the source."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.data.image import ChainImage
from nodes.data.store import ChainStore, InvalidRequest, Limits
from nodes.rpc import chain_pb2
from nodes.vm.keyimage import SLOTS, slot_of
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
LIMITS = Limits(max_value_bytes=1024, max_txn_ops=8, max_read_limit=100)


def apply(store: ChainStore, puts=(), deletes=()) -> None:
    store.apply(chain_pb2.Update(seq=store.last_seq + 1,
                                 puts=[chain_pb2.KeyValue(key=k, value=v) for k, v in puts],
                                 deletes=list(deletes)))


def image_of(store: ChainStore) -> ChainImage:
    return ChainImage(store, max_value_bytes=LIMITS.max_value_bytes)


def test_an_update_dirties_the_slots_of_the_keys_it_puts_or_deletes_only_while_tracking():
    store = ChainStore()
    apply(store, [("a", b"1")])
    image = image_of(store)
    apply(store, [("c", b"3")])
    assert image.take_dirty() == []
    image.start_tracking()
    apply(store, [("b", b"2")], deletes=["a"])
    assert image.take_dirty() == sorted({slot_of("a"), slot_of("b")})
    assert image.units() == sorted({slot_of("b"), slot_of("c")})
    image.detach()
    apply(store, [("d", b"4")])
    assert image.take_dirty() == []


def test_installing_a_slot_replaces_what_the_destination_held_in_it():
    source, target = ChainStore(), ChainStore()
    apply(source, [("x", b"new")])
    apply(target, [("x", b"old"), ("y", b"old")])
    destination = image_of(target)
    slot = slot_of("x")
    destination.install(slot, image_of(source).page(slot))
    assert target.get("x") == (b"new", 1)
    if slot_of("y") != slot:
        assert target.get("y") == (b"old", 1)
    empty = chain_pb2.SyncChunk().SerializeToString()
    destination.install(slot, empty)
    assert target.get("x") is None and slot not in destination.units()


@pytest.mark.parametrize("entries, problem", [
    ([chain_pb2.KeyValue(key="elsewhere", value=b"v", version=1)], "a key of slot"),
    ([chain_pb2.KeyValue(key="k", value=b"v", version=0)], "version 0"),
    ([chain_pb2.KeyValue(key="k", value=b"v" * 2000, version=1)], "over 1024"),
    ([chain_pb2.KeyValue(key="k", value=b"v", version=1)] * 2, "twice"),
])
def test_a_bad_unit_is_refused_and_changes_nothing(entries, problem):
    store = ChainStore()
    apply(store, [("k", b"v")])
    image = image_of(store)
    slot = slot_of("k")
    if problem == "a key of slot":
        slot = (slot_of("elsewhere") + 1) % SLOTS
    with pytest.raises(PageError, match=problem):
        image.install(slot, chain_pb2.SyncChunk(entries=entries).SerializeToString())
    with pytest.raises(PageError, match="not a serialized"):
        image.install(slot, b"\xff\xff\xff")
    with pytest.raises(PageError, match="outside"):
        image.install(SLOTS, b"")
    assert store.get("k") == (b"v", 1) and len(store) == 1


def test_the_commit_sets_the_seq_and_refuses_a_version_after_it():
    source, target = ChainStore(), ChainStore()
    for n in range(5):
        apply(source, [(f"k{n}", b"v")])
    destination = image_of(target)
    sender = image_of(source)
    for unit in sender.units():
        destination.install(unit, sender.page(unit))
    with pytest.raises(InvalidRequest, match="version 5"):
        destination.finish(4, LIMITS)
    destination.finish(5, LIMITS)
    assert target.snapshot() == source.snapshot()


def test_post_copy_is_refused_for_a_replica():
    with pytest.raises(ValueError, match="post-copy needs an image of pages"):
        SourceMigration(image_of(ChainStore()), Strategy.POST_COPY, now=0.0)


operation = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 40), st.binary(max_size=40)),
    st.tuples(st.just("delete"), st.integers(0, 40)),
    st.tuples(st.just("step")),
    st.tuples(st.just("tick"), st.floats(0, 0.05)))


@settings(max_examples=150, deadline=None)
@given(strategy=st.sampled_from([Strategy.STOP_AND_COPY, Strategy.PRE_COPY]),
       operations=st.lists(operation, max_size=120), chunk=st.integers(1, 9),
       few=st.integers(0, 20), max_rounds=st.integers(1, 6))
def test_any_interleaving_leaves_the_destination_equal_to_the_source_at_commit(
        strategy, operations, chunk, few, max_rounds):
    source = ChainStore()
    for n in range(20):
        apply(source, [(f"k{n}", b"seed")])
    sender = image_of(source)
    limits = PreCopyLimits(min_rate=MIB, max_rate=4 * MIB, few_pages=few, max_rounds=max_rounds)
    core = SourceMigration(sender, strategy, now=0.0, limits=limits, chunk_pages=chunk)
    target = ChainStore()
    destination = DestinationMigration(image_of(target), strategy)
    clock, paused, committed = 0.0, False, False

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
            destination.image.finish(source.last_seq, LIMITS)
            committed = True

    for op in operations:
        if committed:
            break
        if op[0] in ("put", "delete") and not paused:  # paused: held by the chain lock
            if op[0] == "put":
                apply(source, [(f"k{op[1]}", op[2])])
            elif source.get(f"k{op[1]}") is not None:
                apply(source, deletes=[f"k{op[1]}"])
        elif op[0] == "step":
            step()
        elif op[0] == "tick":
            clock += op[1]
    for _ in range(100_000):
        if committed:
            break
        step()
    assert committed
    assert target.snapshot() == source.snapshot()
    assert destination.image.checksum() == sender.checksum()
    if strategy is Strategy.PRE_COPY:
        assert not core.rounds[-1].live and core.stop_reason
