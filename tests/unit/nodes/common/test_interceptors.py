"""The server interceptors' pure parts: the concurrency limit and the tolerant deserializer."""

from __future__ import annotations

import pytest

from nodes.common.interceptors import (
    DROP_WAIT_CAP_SECONDS,
    Admission,
    Undecodable,
    default_reserved,
    drop_seconds,
    tolerant,
)
from nodes.rpc import bank_pb2

HEALTH = "grpc.health.v1.Health"


WORK, BALANCE = "/distlab.bank.Bank/Work", "/distlab.bank.Bank/Balance"


def test_admission_refuses_past_the_limit_and_frees_places_as_calls_end():
    admission = Admission(2, (HEALTH,))
    assert admission.try_enter(WORK) and admission.try_enter(BALANCE)
    assert not admission.try_enter(BALANCE)
    admission.leave(WORK)
    assert admission.try_enter(BALANCE)


def test_one_method_never_takes_the_reserved_places():
    admission = Admission(4, (HEALTH,), reserved=1)
    assert [admission.try_enter(WORK) for _ in range(4)] == [True, True, True, False]
    assert admission.try_enter(BALANCE)  # the place the flood of Work left
    assert not admission.try_enter(BALANCE)  # the limit itself still holds
    admission.leave(WORK)
    assert admission.try_enter(WORK)  # a place freed is anyone's
    admission.leave(BALANCE)
    assert not admission.try_enter(WORK)  # Work holds all it may


def test_the_default_reserve_is_an_eighth_of_the_limit_and_none_for_one_place():
    assert [default_reserved(n) for n in (1, 2, 4, 16, 256)] == [0, 1, 1, 2, 32]
    with pytest.raises(ValueError):
        Admission(2, (), reserved=2)


def test_admission_never_bounds_the_unbounded_services():
    admission = Admission(1, (HEALTH,))
    assert not admission.bounds("/grpc.health.v1.Health/Check")
    assert admission.bounds("/distlab.bank.Bank/Work")
    assert admission.bounds("/grpc.health.v1.HealthX/Check")


def test_a_limit_below_one_is_a_mistake():
    with pytest.raises(ValueError):
        Admission(0, ())


def test_tolerant_deserializer_names_the_message_instead_of_raising():
    deserialize = tolerant(bank_pb2.WorkRequest.FromString)
    assert deserialize(bank_pb2.WorkRequest(io_millis=5).SerializeToString()).io_millis == 5
    refused = deserialize(b"\xff\xff\xff garbage")
    assert isinstance(refused, Undecodable)
    assert refused.message_type == "distlab.bank.WorkRequest"
    assert "DecodeError" in refused.error
    assert tolerant(None) is None  # raw-bytes handlers (the switch's) have nothing to decode


@pytest.mark.parametrize("remaining, held", [
    (0.5, 1.5),              # past the caller's deadline, so it sees DEADLINE_EXCEEDED
    (-3.0, 0.0),
    (None, DROP_WAIT_CAP_SECONDS),
    (1e10, DROP_WAIT_CAP_SECONDS),  # what gRPC reports for a caller without a deadline
    (float("inf"), DROP_WAIT_CAP_SECONDS),
    (float("nan"), DROP_WAIT_CAP_SECONDS),
])
def test_a_dropped_call_is_held_past_the_deadline_and_never_beyond_the_cap(remaining, held):
    assert drop_seconds(remaining) == held
