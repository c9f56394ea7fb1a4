"""nodes/switch/hashring.py: consistent hashing spreads keys evenly and moves few of them."""

from collections import Counter

from nodes.switch.hashring import HashRing, stable_hash

BACKENDS = [f"app-{n}" for n in range(1, 6)]
KEYS = [f"session-{n}" for n in range(20_000)]


def owners(ring: HashRing, accept=None) -> dict[str, str | None]:
    if accept is None:
        return {key: ring.owner(key) for key in KEYS}
    return {key: ring.owner(key, accept) for key in KEYS}


def test_hash_is_stable_across_rings_and_processes():
    assert stable_hash("session-1") == stable_hash("session-1") != stable_hash("session-2")
    assert owners(HashRing(BACKENDS)) == owners(HashRing(reversed(BACKENDS)))


def test_each_backend_owns_about_an_equal_share():
    shares = Counter(owners(HashRing(BACKENDS)).values())
    assert set(shares) == set(BACKENDS)
    for count in shares.values():
        assert 0.8 * len(KEYS) / 5 < count < 1.2 * len(KEYS) / 5


def test_removing_a_backend_moves_only_its_keys_about_one_in_n():
    before = owners(HashRing(BACKENDS))
    after = owners(HashRing([name for name in BACKENDS if name != "app-3"]))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(before[key] == "app-3" for key in moved)
    assert all(after[key] != "app-3" for key in KEYS)
    assert 0.8 / 5 < len(moved) / len(KEYS) < 1.2 / 5
    # and the keys app-3 owned spread over the others rather than piling onto one
    assert len({after[key] for key in moved}) == 4


def test_skipping_a_backend_is_the_same_as_removing_it():
    full = HashRing(BACKENDS)
    without = HashRing([name for name in BACKENDS if name != "app-2"])
    assert owners(full, lambda name: name != "app-2") == owners(without)


def test_adding_a_backend_takes_keys_only_for_itself():
    before = owners(HashRing(BACKENDS))
    after = owners(HashRing([*BACKENDS, "app-6"]))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "app-6" for key in moved)
    assert 0.8 / 6 < len(moved) / len(KEYS) < 1.2 / 6


def test_no_member_or_none_accepted_means_no_owner():
    assert HashRing().owner("session-1") is None
    assert HashRing(BACKENDS).owner("session-1", lambda name: False) is None
