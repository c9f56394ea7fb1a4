"""The `invocations` check over histories made by hand: what makes it invalid (a wrong
answer, an accepted invocation that never completed or ran out of attempts) and what does
not (a call failed with its reason, a submission not heard)."""

from __future__ import annotations

import grpc
import pytest

from distlab.history import FAIL, INFO, OK, Op
from distlab.serverless.workload import INVOKE, SUBMIT, InvokeConfig, InvokeWorkload
from nodes.rpc import serverless_pb2


@pytest.fixture
def workload():
    channel = grpc.insecure_channel("127.0.0.1:9")  # never dialled: the check reads history
    yield InvokeWorkload(channel, InvokeConfig(seed=1))
    channel.close()


def call(workload, n: int, kind: str = OK, value=None, error: str = "") -> None:
    result = {"value": n * n if value is None else value, "path": "warm"} if kind == OK else None
    workload.history.add(Op(0, INVOKE, {"n": n, "process": 0}, 0.0, 0.1, kind, result, error))


def submit(workload, n: int, invocation: str, **outcome) -> None:
    workload.history.add(Op(1, SUBMIT, {"n": n, "process": 1}, 0.0, 0.1, OK,
                            {"id": invocation}))
    if outcome:
        workload.outcomes.done[invocation] = serverless_pb2.ResultReply(
            id=invocation, done=True, **outcome)


def test_right_answers_and_completed_invocations_are_valid(workload):
    call(workload, 3)
    submit(workload, 4, "a", ok=True, result="16", attempts=2)
    verdict = workload.check()
    assert verdict.valid is True
    assert verdict.figures["async_retried"] == 1


def test_a_wrong_answer_is_invalid_and_shown(workload):
    call(workload, 3, value=10)
    verdict = workload.check()
    assert verdict.valid is False and verdict.problems == ["process 0 n=3: got 10, want 9"]


def test_an_accepted_invocation_that_never_completed_is_invalid(workload):
    submit(workload, 2, "b")
    assert workload.check().problems == ["async b (n=2) never completed"]


def test_an_invocation_out_of_attempts_is_invalid(workload):
    submit(workload, 2, "c", ok=False, error="failed after 3 attempts: died", attempts=3)
    assert workload.check().valid is False


def test_a_call_failed_with_its_reason_is_reported_not_invalid(workload):
    call(workload, 1)
    call(workload, 2, FAIL, error="StorageUnavailable: the lab's storage did not put")
    call(workload, 3, INFO, error="DEADLINE_EXCEEDED")
    verdict = workload.check()
    assert verdict.valid is True
    assert verdict.figures["errors"] == ["StorageUnavailable: the lab's storage did not put"]
    assert (verdict.figures["sync_failed"], verdict.figures["sync_unheard"]) == (1, 1)


def test_nothing_answered_is_unknown(workload):
    call(workload, 1, INFO, error="UNAVAILABLE")
    assert workload.check().valid is None


def test_with_storage_the_answer_is_the_value_read_back(workload):
    workload.config.storage = True
    call(workload, 5, value=5)
    assert workload.check().valid is True
