"""The register workload's pure parts: a seed fixes every process's operations, every write's
value is unique, a failed write is `fail` only when it certainly did not happen (as the app
tier's KV service words it), and a nonsensical configuration is refused up front."""

from __future__ import annotations

import itertools
from collections import Counter

import grpc
import pytest

from distlab.errors import UsageError
from distlab.history import FAIL, INFO
from distlab.tiers.register import READ, WRITE, RegisterConfig, plan, write_outcome
from nodes.app.bank import BankError
from nodes.app.registers import Registers
from nodes.rpc import kv_pb2
from tests.unit.nodes.app.memory_data import MemoryData, drive

KEYS = ["reg-r-0", "reg-r-1", "reg-r-2"]
Code = grpc.StatusCode


def first(count: int, *, seed: int = 0, process: int = 0, read_share: float = 0.5):
    return list(itertools.islice(plan(seed, process, KEYS, read_share), count))


def test_a_seed_gives_each_process_the_same_operations_every_time():
    assert first(200, seed=7, process=2) == first(200, seed=7, process=2)
    assert first(200, seed=7, process=2) != first(200, seed=7, process=3)
    assert first(200, seed=7, process=2) != first(200, seed=8, process=2)


def test_write_values_are_unique_and_name_their_process():
    values = [args["value"] for process in range(4)
              for name, args in first(500, process=process) if name == WRITE]
    assert len(values) == len(set(values)) > 0
    assert [v for v in values if v.startswith("2-")][:3] == ["2-1", "2-2", "2-3"]


def test_operations_touch_every_key_and_follow_the_read_share():
    ops = first(2000, read_share=0.3)
    assert {args["key"] for _, args in ops} == set(KEYS)
    reads = Counter(name for name, _ in ops)[READ]
    assert 0.25 < reads / len(ops) < 0.35
    assert {name for name, _ in first(100, read_share=0.0)} == {WRITE}
    assert {name for name, _ in first(100, read_share=1.0)} == {READ}
    assert all(set(args) == {"key"} for name, args in ops if name == READ)


@pytest.mark.parametrize(("code", "details", "kind"), [
    (Code.INVALID_ARGUMENT, "key must not be empty", FAIL),
    (Code.ABORTED, "not applied: the delete gave up", FAIL),
    (Code.UNIMPLEMENTED, "", FAIL),
    (Code.UNAVAILABLE, "not applied: data tier unavailable: txn gave up", FAIL),
    (Code.UNAVAILABLE, "data tier unavailable: x; the outcome of this put is unknown", INFO),
    (Code.UNAVAILABLE, "connection reset; the write was not applied?", INFO),
    (Code.UNAVAILABLE, None, INFO),
    (Code.DEADLINE_EXCEEDED, "Deadline Exceeded", INFO),
    (Code.INTERNAL, "the data tier refused a request", INFO),
    (Code.CANCELLED, "", INFO),
])
def test_a_write_fails_only_when_it_certainly_did_not_happen(code, details, kind):
    assert write_outcome(code, details) == kind


@pytest.mark.parametrize(("outage", "kind"), [("refused", FAIL), ("lost", INFO),
                                              ("maybe", INFO)])
def test_the_app_tiers_own_messages_classify_as_they_mean(outage, kind):
    """The KV service's words for "certainly not applied" and "unknown" are what the
    workload reads: a change in either must break this test."""
    data = MemoryData(outages=[outage])
    with pytest.raises(BankError) as caught:
        drive(Registers().put(kv_pb2.PutRequest(key="reg-r-0", value=b"0-1")), data)
    assert write_outcome(caught.value.code, caught.value.message) == kind


def test_a_configuration_that_cannot_run_is_refused_with_every_reason():
    with pytest.raises(UsageError) as caught:
        RegisterConfig(keys=0, processes=0, read_share=1.5, rate=-1)
    message = str(caught.value)
    for reason in ("keys must be >= 1 (got 0)", "processes must be >= 1 (got 0)",
                   "read_share must be within 0-1 (got 1.5)", "rate must be >= 0 ops/s"):
        assert reason in message
    assert RegisterConfig().keys == 3
