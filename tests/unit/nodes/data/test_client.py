"""nodes/data/client.py: which failures are retried, which are definite, and the budget."""

import grpc
import pytest

from nodes.data.client import (
    DataUnavailable,
    RetryPolicy,
    _ConfigCache,
    certainly_not_applied,
    pick,
)
from nodes.rpc import chain_pb2

REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.2:50051: "
           "Failed to connect to remote host: Connection refused")


class FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("code, details, definite", [
    (grpc.StatusCode.FAILED_PRECONDITION, "not the head: this replica is tail", True),
    (grpc.StatusCode.ABORTED, "not applied: update 7 is not yet held", True),
    (grpc.StatusCode.UNAVAILABLE, REFUSED, True),
    (grpc.StatusCode.UNAVAILABLE, "DNS resolution failed for data-1:50051", True),
    # The head applied it, then quotes a refused connection further down the chain.
    (grpc.StatusCode.UNAVAILABLE, f"update 7 is applied at the head ... ({REFUSED})", False),
    (grpc.StatusCode.UNAVAILABLE, "Socket closed", False),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", False),
    (grpc.StatusCode.INTERNAL, "internal error: KeyError", False),
])
def test_a_txn_counts_as_not_applied_only_when_it_certainly_was_not(code, details, definite):
    assert certainly_not_applied(code, details) is definite


def test_an_indefinite_txn_failure_is_raised_at_once_and_says_so():
    policy = RetryPolicy("txn", attempts=4, timeout=2.0, clock=Clock())
    policy.begin()
    with pytest.raises(DataUnavailable) as caught:
        policy.failed("data-1", FakeError(grpc.StatusCode.DEADLINE_EXCEEDED, "late"))
    assert caught.value.definite is False
    assert "data-1" in str(caught.value) and "may have been applied" in str(caught.value)


def test_a_read_is_retried_on_the_same_failure():
    policy = RetryPolicy("read", attempts=4, timeout=2.0, clock=Clock())
    policy.begin()
    assert policy.failed("data-3", FakeError(grpc.StatusCode.DEADLINE_EXCEEDED)) > 0


@pytest.mark.parametrize("what", ["txn", "read"])
@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_bad_requests_are_raised_as_they_are(what, code):
    policy = RetryPolicy(what, attempts=4, timeout=2.0, clock=Clock())
    policy.begin()
    error = FakeError(code, "key must not be empty")
    with pytest.raises(FakeError) as caught:
        policy.failed("data-1", error)
    assert caught.value is error


def test_attempts_run_out_with_a_definite_error_naming_the_last_problem():
    policy = RetryPolicy("txn", attempts=2, timeout=10.0, clock=Clock())
    for _ in range(2):
        policy.begin()
        policy.failed("data-2", FakeError(grpc.StatusCode.FAILED_PRECONDITION, "not the head"))
    with pytest.raises(DataUnavailable) as caught:
        policy.begin()
    assert caught.value.definite is True
    assert "data-2: FAILED_PRECONDITION: not the head" in str(caught.value)


def test_pauses_double_but_never_pass_the_deadline():
    clock = Clock()
    policy = RetryPolicy("read", attempts=10, timeout=1.0, clock=clock)
    pauses = [policy.unanswered("down") for _ in range(5)]
    assert pauses == [0.05, 0.1, 0.2, 0.4, 0.5]
    clock.now += 0.9
    assert policy.unanswered("down") == pytest.approx(0.1)
    clock.now += 0.2
    with pytest.raises(DataUnavailable):
        policy.begin()


def test_txns_go_to_the_head_and_reads_to_the_tail():
    config = chain_pb2.ChainConfig(epoch=3, chain=[chain_pb2.ChainMember(name=n)
                                                   for n in ("data-1", "data-2", "data-3")])
    assert pick(config, "txn").name == "data-1"
    assert pick(config, "read").name == "data-3"
    assert pick(chain_pb2.ChainConfig(), "txn") is None


def test_a_failed_call_makes_the_next_call_ask_the_master_first():
    # A partitioned head times out (indefinite): if the cache stayed trusted, every later
    # txn would go to that same head again and never learn the new chain.
    cache = _ConfigCache()
    cache.offer(chain_pb2.ChainConfig(epoch=3))
    assert not cache.suspected()
    cache.suspect()
    assert cache.suspected()
    cache.offer(chain_pb2.ChainConfig(epoch=4))
    assert not cache.suspected() and cache.get().epoch == 4
