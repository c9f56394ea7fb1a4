"""nodes/data/store.py: compares, seqs, request checks (a client's and another replica's),
consistent reads, snapshots."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.data.store import (
    ChainStore,
    InvalidRequest,
    Limits,
    TooLarge,
    check_read,
    check_snapshot,
    check_txn,
    check_update,
    chunk_entries,
)
from nodes.rpc import chain_pb2

LIMITS = Limits(max_value_bytes=16, max_txn_ops=4, max_read_limit=10)
VERSION, VALUE = chain_pb2.Compare.VERSION, chain_pb2.Compare.VALUE


def txn(puts=(), deletes=(), compares=()) -> chain_pb2.TxnRequest:
    return chain_pb2.TxnRequest(puts=[chain_pb2.KeyValue(key=k, value=v) for k, v in puts],
                                deletes=list(deletes), compares=list(compares))


def commit(store: ChainStore, request: chain_pb2.TxnRequest) -> chain_pb2.Update | None:
    outcome = store.evaluate(request)
    if outcome.update is not None:
        store.apply(outcome.update)
    return outcome.update


def test_a_key_version_is_the_seq_of_the_write_that_set_it():
    store = ChainStore()
    first = commit(store, txn(puts=[("a", b"1"), ("b", b"2")]))
    second = commit(store, txn(puts=[("a", b"3")]))
    assert (first.seq, second.seq) == (1, 2)
    assert store.get("a") == (b"3", 2) and store.get("b") == (b"2", 1)
    assert store.version_of("missing") == 0
    commit(store, txn(deletes=["b"]))
    assert store.get("b") is None and store.last_seq == 3


def test_compares_on_version_and_value():
    store = ChainStore()
    commit(store, txn(puts=[("a", b"x")]))
    holds = store.compare_holds
    assert holds(chain_pb2.Compare(key="a", target=VERSION, version=1))
    assert not holds(chain_pb2.Compare(key="a", target=VERSION, version=0))
    assert holds(chain_pb2.Compare(key="new", target=VERSION, version=0))
    assert holds(chain_pb2.Compare(key="a", target=VALUE, value=b"x"))
    assert not holds(chain_pb2.Compare(key="a", target=VALUE, value=b"y"))
    assert not holds(chain_pb2.Compare(key="new", target=VALUE, value=b""))  # absent != b""


def test_a_failed_compare_changes_nothing_and_consumes_no_seq():
    store = ChainStore()
    commit(store, txn(puts=[("a", b"1")]))
    outcome = store.evaluate(txn(puts=[("a", b"2"), ("b", b"2")], compares=[
        chain_pb2.Compare(key="a", target=VERSION, version=1),
        chain_pb2.Compare(key="b", target=VERSION, version=7)]))
    assert (outcome.holds, outcome.update) == (False, None)
    assert store.evaluate(txn(puts=[("c", b"")])).update.seq == 2


def test_deleting_only_absent_keys_is_a_no_op_that_holds():
    store = ChainStore()
    outcome = store.evaluate(txn(deletes=["ghost"]))
    assert (outcome.holds, outcome.update) == (True, None)
    commit(store, txn(puts=[("a", b"1")]))
    assert list(store.evaluate(txn(deletes=["a", "ghost"])).update.deletes) == ["a"]


def test_updates_must_come_in_seq_order():
    store = ChainStore()
    with pytest.raises(ValueError, match="update 2 applied after 0"):
        store.apply(chain_pb2.Update(seq=2, puts=[chain_pb2.KeyValue(key="a")]))


@pytest.mark.parametrize("request_, fragment", [
    (txn(puts=[("", b"")]), "put key must not be empty"),
    (txn(puts=[("k" * 257, b"")]), "the limit is 256"),
    (txn(puts=[("k", b"x" * 17)]), "the limit is 16"),
    (txn(puts=[("a", b""), ("b", b""), ("c", b"")], deletes=["d", "e"]), "the limit is 4"),
    (txn(puts=[("a", b"")], deletes=["a"]), "written twice"),
    (txn(deletes=["a\tb"]), "printable"),
    (txn(compares=[chain_pb2.Compare(key="a")]), "needs a target"),
    (txn(compares=[chain_pb2.Compare(key="a", target=VALUE, value=b"x" * 17)]), "the limit"),
    (txn(compares=[chain_pb2.Compare(key="", target=VERSION)]), "compare key"),
])
def test_malformed_txns_are_refused_with_the_reason(request_, fragment):
    with pytest.raises(InvalidRequest, match=fragment):
        check_txn(request_, LIMITS)


@pytest.mark.parametrize("request_, fragment", [
    (chain_pb2.ReadRequest(keys=[""]), "must not be empty"),
    (chain_pb2.ReadRequest(keys=[str(n) for n in range(11)]), "the limit is 10"),
    (chain_pb2.ReadRequest(prefix="p" * 257), "prefix is 257"),
    (chain_pb2.ReadRequest(prefix="p", limit=11), "above the cap of 10"),
])
def test_malformed_reads_are_refused_with_the_reason(request_, fragment):
    with pytest.raises(InvalidRequest, match=fragment):
        check_read(request_, LIMITS)


def test_read_limit_defaults_to_the_cap():
    assert check_read(chain_pb2.ReadRequest(prefix="p"), LIMITS) == 10
    assert check_read(chain_pb2.ReadRequest(prefix="p", limit=3), LIMITS) == 3


def filled() -> ChainStore:
    store = ChainStore()
    commit(store, txn(puts=[(f"acct/{n}", b"%03d" % n) for n in range(4)]))
    commit(store, txn(puts=[("other", b"o"), ("acct/2", b"new")]))
    return store


def test_a_read_returns_named_keys_and_a_prefix_from_one_state():
    reply = filled().read(chain_pb2.ReadRequest(keys=["other", "acct/1", "ghost", "other"],
                                                prefix="acct/"), limit=10, budget_bytes=10_000)
    assert [(e.key, e.value, e.version) for e in reply.found] == [
        ("other", b"o", 2), ("acct/1", b"001", 1), ("acct/0", b"000", 1), ("acct/2", b"new", 2),
        ("acct/3", b"003", 1)]
    assert (reply.seq, reply.truncated) == (2, False)


def test_prefix_results_stop_at_the_limit_or_the_byte_budget():
    store = filled()
    limited = store.read(chain_pb2.ReadRequest(prefix="acct/"), limit=2, budget_bytes=10_000)
    assert [e.key for e in limited.found] == ["acct/0", "acct/1"] and limited.truncated
    small = store.read(chain_pb2.ReadRequest(prefix="acct/"), limit=10, budget_bytes=100)
    assert 0 < len(small.found) < 4 and small.truncated
    with pytest.raises(TooLarge):
        store.read(chain_pb2.ReadRequest(keys=["acct/0", "acct/1", "acct/3"]), limit=10,
                   budget_bytes=100)


def test_a_prefix_read_ends_at_the_first_key_past_the_prefix():
    store = ChainStore()
    commit(store, txn(puts=[("a", b""), ("ab", b""), ("abc", b""), ("b", b"")]))
    reply = store.read(chain_pb2.ReadRequest(prefix="ab"), limit=10, budget_bytes=10_000)
    assert [e.key for e in reply.found] == ["ab", "abc"]


def test_snapshot_chunks_fit_the_budget_and_install_rebuilds_the_state():
    store = filled()
    entries, seq = store.snapshot()
    chunks = list(chunk_entries(entries, seq, budget_bytes=80))
    assert len(chunks) > 1 and all(chunk.seq == seq for chunk in chunks)
    assert [chunk.last for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    copy = ChainStore()
    copy.install([e for chunk in chunks for e in chunk.entries], seq)
    assert copy.snapshot() == store.snapshot()
    assert list(chunk_entries([], 0, budget_bytes=80)) == [chain_pb2.SyncChunk(last=True)]


keys = st.sampled_from(["a", "b", "c", "ab", "ba"])
requests = st.builds(
    lambda puts, deletes, compare_key, version: txn(
        puts=[(k, v) for k, v in puts.items()], deletes=sorted(set(deletes) - set(puts)),
        compares=[chain_pb2.Compare(key=compare_key, target=VERSION, version=version)]
        if compare_key else []),
    st.dictionaries(keys, st.binary(max_size=4), max_size=3), st.lists(keys, max_size=2),
    st.none() | keys, st.integers(0, 6))


@settings(max_examples=100, deadline=None)
@given(st.lists(requests, max_size=25))
def test_replaying_the_heads_updates_gives_every_replica_the_same_state(history):
    head, replica = ChainStore(), ChainStore()
    for request in history:
        update = commit(head, request)
        if update is not None:
            replica.apply(update)
    assert replica.snapshot() == head.snapshot()
    for entry in head.snapshot()[0]:
        assert 0 < entry.version <= head.last_seq


def update(seq=1, puts=(), deletes=(), probe=False) -> chain_pb2.Update:
    return chain_pb2.Update(seq=seq, epoch=1, probe=probe, deletes=list(deletes),
                            puts=[chain_pb2.KeyValue(key=k, value=v) for k, v in puts])


@pytest.mark.parametrize("update_, fragment", [
    (update(puts=[("", b"v")]), "put key must not be empty"),
    (update(puts=[("k" * 5000, b"v")]), "5000 characters; the limit is 256"),
    (update(puts=[("k", b"v" * 17)]), "17 bytes; the limit is 16"),
    (update(deletes=["\x00"]), "printable"),
    (update(puts=[("k", b"1")], deletes=["k"]), "written twice"),
    (update(puts=[(f"k{n}", b"") for n in range(5)]), "5 puts and deletes; the limit is 4"),
    (update(seq=0, puts=[("k", b"v")]), "seq starts at 1"),
    (update(probe=True, puts=[("k", b"v")]), "a probe carries no puts"),
], ids=["empty key", "long key", "large value", "unprintable", "twice", "too many", "seq 0",
        "probe with payload"])
def test_a_forwarded_update_is_held_to_the_limits_a_txn_has(update_, fragment):
    with pytest.raises(InvalidRequest, match=fragment):
        check_update(update_, LIMITS)


def test_an_update_a_head_made_from_a_valid_txn_passes():
    store = ChainStore()
    made = store.evaluate(txn(puts=[("a", b"1"), ("b", b"2")])).update
    check_update(made, LIMITS)
    check_update(update(seq=7, probe=True), LIMITS)
    check_update(update(seq=0, probe=True), LIMITS)  # "hold everything I hold" of a new chain


def snapshot(*entries: tuple[str, bytes, int], seq: int = 5) -> list[chain_pb2.SyncChunk]:
    return list(chunk_entries([chain_pb2.KeyValue(key=k, value=v, version=n)
                               for k, v, n in entries], seq, 1024))


@pytest.mark.parametrize("chunks, fragment", [
    (snapshot(("", b"v", 1)), "snapshot key must not be empty"),
    (snapshot(("k", b"v" * 17, 1)), "17 bytes"),
    (snapshot(("k", b"v", 6)), "version 6 of 'k' is not in 1..5"),
    (snapshot(("k", b"v", 0)), "version 0"),
    (snapshot(("k", b"v", 1), ("k", b"w", 2)), "in the snapshot twice"),
], ids=["empty key", "large value", "version after seq", "version 0", "twice"])
def test_a_full_state_from_another_replica_is_checked_entry_by_entry(chunks, fragment):
    with pytest.raises(InvalidRequest, match=fragment):
        check_snapshot(chunks, LIMITS)


def test_a_snapshot_the_store_made_passes():
    store = ChainStore()
    commit(store, txn(puts=[("a", b"1"), ("b", b"2")]))
    commit(store, txn(puts=[("a", b"3")]))
    entries, seq = store.snapshot()
    check_snapshot(list(chunk_entries(entries, seq, 1024)), LIMITS)
