"""A data replica of the tiers lab moved live into a spare, in containers: the scenario
that moves the chain's middle (pre-copy) and head (stop-and-copy) under the bank workload
comes out valid, each spare holds its replica's place, and bad requests change nothing."""

from __future__ import annotations

import pytest

from distlab.errors import UnknownMachine, UsageError
from distlab.tiers.replicas import ReplicaMover, replica_status
from tests.e2e.conftest import lab_fixture, run_valid

pytestmark = pytest.mark.e2e

testbed = lab_fixture("tiers", scale=["data-spare=2"])


def mover(testbed) -> ReplicaMover:
    return ReplicaMover(testbed.machines())


def test_bad_requests_are_refused_and_change_nothing(testbed):
    before = {name: replica_status(m)["position"] for name, m in mover(testbed).replicas.items()}
    cases = [
        (lambda: mover(testbed).migrate("data-1", "data-2"), UsageError, "not a spare"),
        (lambda: mover(testbed).migrate("data-1", "data-1"), UsageError, "into itself"),
        (lambda: mover(testbed).migrate("data-9", "data-spare-1"), UnknownMachine,
         "no machine named 'data-9'"),
        (lambda: mover(testbed).migrate("app-1", "data-spare-1"), UsageError,
         "not a data replica"),
        (lambda: mover(testbed).migrate("data-spare-1", "data-spare-2"), UsageError,
         "not in the chain"),
        (lambda: mover(testbed).migrate("data-1", "data-spare-1", strategy="post-copy"),
         UsageError, "no post-copy"),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as raised:
            call()
        assert words in str(raised.value), str(raised.value)
    after = {name: replica_status(m)["position"] for name, m in mover(testbed).replicas.items()}
    assert after == before


def test_the_middle_and_the_head_move_into_spares_under_the_bank_workload(testbed, tmp_path):
    positions = {name: replica_status(m)["position"]
                 for name, m in mover(testbed).replicas.items()}
    middle = next(name for name, position in positions.items() if position == "middle")
    head = next(name for name, position in positions.items() if position == "head")
    outcome = run_valid("tiers-migrate-replica.yaml", tmp_path)
    checks = {v["name"]: v for v in outcome["checks"]}
    assert checks["migration"]["figures"] == {**checks["migration"]["figures"],
                                              "migrations": 2, "failed": 0}
    states = {name: replica_status(m) for name, m in mover(testbed).replicas.items()}
    assert states["data-spare-1"]["position"] == "middle"
    assert states["data-spare-2"]["position"] == "head"
    # The moved replicas' machines are retired: the chain is the two spares and the tail.
    assert middle not in states and head not in states
    assert states["data-spare-2"]["chain"].split(",")[:2] == ["data-spare-2", "data-spare-1"]
