"""nodes/switch/policies.py: how each policy spreads calls over the candidates."""

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from nodes.switch.policies import (
    POLICIES,
    ConsistentHash,
    LeastOutstanding,
    RoundRobin,
    make_policy,
)


@dataclass(eq=False)
class Fake:
    name: str
    outstanding: int = 0


def backends(count: int, **load: int) -> list[Fake]:
    return [Fake(f"app-{n}", load.get(f"app_{n}", 0)) for n in range(1, count + 1)]


def picks(policy, candidates, count: int, affinity=None) -> Counter:
    return Counter(policy.choose(candidates, affinity).name for _ in range(count))


def test_round_robin_gives_each_candidate_its_turn():
    assert picks(RoundRobin(), backends(3), 300) == {"app-1": 100, "app-2": 100, "app-3": 100}


def test_least_outstanding_never_picks_the_busier_of_two():
    candidates = backends(2, app_2=5)
    assert picks(LeastOutstanding(random.Random(7)), candidates, 200) == {"app-1": 200}


def test_least_outstanding_prefers_the_idle_backend_among_busy_ones():
    candidates = backends(4, app_2=10, app_3=10, app_4=10)
    counts = picks(LeastOutstanding(random.Random(7)), candidates, 4000)
    # The idle one wins every pair it is drawn into: half of all pairs of four.
    assert 0.45 < counts["app-1"] / 4000 < 0.55
    assert all(0.1 < counts[name] / 4000 < 0.25 for name in ("app-2", "app-3", "app-4"))


def test_least_outstanding_spreads_evenly_when_loads_are_equal():
    counts = picks(LeastOutstanding(random.Random(7)), backends(4), 4000)
    assert all(0.2 < count / 4000 < 0.3 for count in counts.values())
    assert picks(LeastOutstanding(random.Random(7)), backends(1), 5) == {"app-1": 5}


def test_consistent_hash_keeps_a_session_on_one_backend():
    policy = ConsistentHash()
    candidates = backends(3)
    policy.members_changed(c.name for c in candidates)
    for session in (f"s{n}" for n in range(50)):
        assert len(picks(policy, candidates, 5, affinity=session)) == 1


def test_consistent_hash_moves_only_the_sessions_of_a_backend_that_stops_taking_calls():
    policy = ConsistentHash()
    candidates = backends(3)
    policy.members_changed(c.name for c in candidates)
    sessions = [f"s{n}" for n in range(300)]
    before = {s: policy.choose(candidates, s).name for s in sessions}
    survivors = [c for c in candidates if c.name != "app-2"]
    after = {s: policy.choose(survivors, s).name for s in sessions}
    assert {s for s in sessions if before[s] != after[s]} == {
        s for s in sessions if before[s] == "app-2"}


def test_consistent_hash_without_the_key_goes_round_robin():
    policy = ConsistentHash()
    candidates = backends(3)
    policy.members_changed(c.name for c in candidates)
    assert picks(policy, candidates, 30) == {"app-1": 10, "app-2": 10, "app-3": 10}


def test_make_policy_knows_every_policy_and_refuses_others():
    assert [make_policy(name).name for name in POLICIES] == list(POLICIES)
    with pytest.raises(ValueError, match="not one of round_robin"):
        make_policy("random")
