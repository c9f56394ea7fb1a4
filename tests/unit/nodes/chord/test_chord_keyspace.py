"""nodes/chord/keyspace.py: newer versions win in any order, deletes stay deleted, ranges."""

import itertools

import pytest

from nodes.chord.keyspace import Entry, KeyStore
from nodes.chord.ring import RingError, key_id

BITS = 16


def store() -> KeyStore:
    return KeyStore(bits=BITS, max_value_bytes=8)


def test_copies_arriving_in_any_order_end_in_the_newest():
    s0 = store()
    writes = [s0.make_entry("k", b"v1", deleted=False, now_ns=100),
              s0.make_entry("k", b"v2", deleted=False, now_ns=200),
              s0.make_entry("k", b"", deleted=True, now_ns=300)]
    for order in itertools.permutations(writes):
        replica = store()
        kept = [replica.merge(e) for e in order]
        assert replica.get("k") == writes[2]
        assert kept[order.index(writes[2])]
        assert len(replica) == 0  # a tombstone is no key


def test_an_owner_versions_above_what_it_holds_even_if_its_clock_is_behind():
    s = store()
    s.merge(Entry("k", key_id("k", BITS), b"old", version=10_000))
    entry = s.make_entry("k", b"new", deleted=False, now_ns=5)
    assert entry.version == 10_001 and entry.ident == key_id("k", BITS)
    assert s.merge(entry) and not s.merge(entry)


def test_values_and_keys_are_checked():
    with pytest.raises(RingError, match="value is 9 bytes; the limit is 8"):
        store().make_entry("k", b"x" * 9, deleted=False, now_ns=1)
    with pytest.raises(RingError, match="must not be empty"):
        store().make_entry("", b"", deleted=False, now_ns=1)


def test_ranges_and_counts_follow_the_ring():
    s = store()
    for name in ("a", "b", "c", "d"):
        s.merge(s.make_entry(name, b"v", deleted=False, now_ns=1))
    ids = {name: key_id(name, BITS) for name in "abcd"}
    low, high = sorted(ids.values())[0], sorted(ids.values())[2]
    inside = {e.key for e in s.entries_in(low, high)}
    assert inside == {k for k, i in ids.items() if low < i <= high}
    assert s.count(low, high) == (len(inside), 4 - len(inside))
    assert s.count(None, high) == (4, 0)  # no predecessor known: everything counts as ours
    wrapped = {e.key for e in s.entries_in(high, low)}
    assert wrapped == set("abcd") - inside
