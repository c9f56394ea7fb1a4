"""nodes/chord/keyspace.py: newer versions win in any order, deletes stay deleted, ranges,
copies no owner could have written are refused."""

import itertools

import pytest

from nodes.chord.keyspace import MAX_VERSION, MAX_VERSION_AHEAD_NS, Entry, KeyStore
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


def entry(version: int, value: bytes = b"v", deleted: bool = False) -> Entry:
    return Entry("k", key_id("k", BITS), value, version, deleted)


@pytest.mark.parametrize("bad, fragment", [
    (entry(2**64 - 1), "is not in 1..9223372036854775807"),
    (entry(2**63), "is not in 1.."),
    (entry(0), "version 0"),
    (entry(5, value=b"v" * 9), "9 bytes; the limit is 8"),
    (entry(5, value=b"v", deleted=True), "tombstone of 'k' carries a value"),
], ids=["uint64 max", "2**63", "zero", "large value", "tombstone with value"])
def test_a_copy_no_owner_could_have_written_is_refused_and_not_kept(bad, fragment):
    s = store()
    s.merge(entry(5, b"good"))
    with pytest.raises(RingError, match=fragment):
        s.merge(bad)
    assert s.get("k") == entry(5, b"good")
    following = s.make_entry("k", b"next", deleted=False, now_ns=6)
    assert following.version == 6 and s.merge(following)  # the key keeps working


def test_a_version_far_ahead_of_this_peers_clock_is_refused():
    now = 1_700_000_000 * 10**9
    s = store()
    s.check(entry(now + MAX_VERSION_AHEAD_NS), now_ns=now)
    with pytest.raises(RingError, match="ahead of this peer's clock"):
        s.check(entry(now + MAX_VERSION_AHEAD_NS + 1), now_ns=now)
    s.check(entry(MAX_VERSION))  # without a clock only the hard bound holds


def test_a_tombstone_expires_after_its_grace_and_an_owned_one_only_once_replicated():
    s = store()
    owned_key, replica_key = "a", "b"
    owned = (key_id(replica_key, BITS), key_id(owned_key, BITS))  # (start, end]: only "a"
    if key_id(owned_key, BITS) == key_id(replica_key, BITS):
        pytest.skip("the two keys collide at 16 bits")
    for key in (owned_key, replica_key):
        s.merge(s.make_entry(key, b"", deleted=True, now_ns=1_000))
    s.merge(s.make_entry("live", b"v", deleted=False, now_ns=1_000))
    assert s.tombstones() == 2

    def expire(now_ns, replicated_ns):
        return s.expire_tombstones(now_ns=now_ns, grace_ns=500, owned=owned,
                                   replicated_ns=replicated_ns)

    assert expire(1_400, replicated_ns=2_000) == 0  # younger than the grace
    assert expire(1_600, replicated_ns=900) == 1    # the replica's goes; the owned one waits
    assert s.get(replica_key) is None and s.get(owned_key).deleted
    assert expire(5_000, replicated_ns=1_000) == 0  # that repair started before the delete
    assert expire(5_000, replicated_ns=1_001) == 1
    assert s.tombstones() == 0 and s.get("live").value == b"v"  # live keys never expire


def test_without_a_known_range_every_tombstone_waits_for_a_full_replication():
    s = store()
    s.merge(s.make_entry("a", b"", deleted=True, now_ns=1_000))
    assert s.expire_tombstones(now_ns=9_000, grace_ns=10, owned=None, replicated_ns=0) == 0
    assert s.expire_tombstones(now_ns=9_000, grace_ns=10, owned=None,
                               replicated_ns=2_000) == 1
