"""The durable queue of asynchronous invocations: accepted ones survive a restart, a run cut
short by a restart or a dead instance is tried again (up to max_attempts), and each
invocation has one outcome however many attempts answer."""

from __future__ import annotations

import pytest

from nodes.serverless.asyncqueue import AsyncQueue, QueueError


@pytest.fixture
def path(tmp_path):
    return tmp_path / "async.log"


def reopened(queue: AsyncQueue, path, **kwargs) -> AsyncQueue:
    queue.close()
    return AsyncQueue(path, **kwargs)


def test_an_accepted_invocation_survives_a_restart_and_runs(path):
    queue = AsyncQueue(path)
    queue.accept("a1", "hello", '{"n": 1}')
    queue = reopened(queue, path)
    [waiting] = queue.pending()
    assert (waiting.id, waiting.function, waiting.event) == ("a1", "hello", '{"n": 1}')
    queue.started("a1")
    assert queue.pending() == []
    assert queue.finished("a1", ok=True, result='{"words": 2}')
    outcome = reopened(queue, path).result("a1")
    assert outcome.done and outcome.ok and outcome.result == '{"words": 2}'


def test_a_run_cut_short_by_a_restart_waits_again_with_its_attempt_counted(path):
    queue = AsyncQueue(path)
    queue.accept("a1", "hello", "{}")
    queue.started("a1")
    queue = reopened(queue, path)
    [waiting] = queue.pending()
    assert waiting.attempts == 1 and not waiting.running


def test_a_second_outcome_is_ignored_so_the_caller_sees_one(path):
    queue = AsyncQueue(path)
    queue.accept("a1", "hello", "{}")
    queue.started("a1")
    assert queue.finished("a1", ok=True, result="1")
    assert not queue.finished("a1", ok=True, result="2")
    assert not queue.attempt_failed("a1", "instance died")
    assert reopened(queue, path).result("a1").result == "1"


def test_a_dead_instance_means_another_attempt_until_max_attempts(path):
    queue = AsyncQueue(path, max_attempts=2)
    queue.accept("a1", "hello", "{}")
    queue.started("a1")
    assert queue.attempt_failed("a1", "instance died")
    assert [i.id for i in queue.pending()] == ["a1"]
    queue.started("a1")
    assert not queue.attempt_failed("a1", "timed out after 5 s")
    outcome = reopened(queue, path, max_attempts=2).result("a1")
    assert outcome.done and not outcome.ok
    assert outcome.error == "failed after 2 attempts: timed out after 5 s"


def test_mistakes_are_errors_that_say_what(path):
    queue = AsyncQueue(path)
    queue.accept("a1", "hello", "{}")
    with pytest.raises(QueueError, match="accepted already"):
        queue.accept("a1", "hello", "{}")
    with pytest.raises(QueueError, match="no invocation 'zz'"):
        queue.started("zz")
    queue.started("a1")
    with pytest.raises(QueueError, match="running already"):
        queue.started("a1")


def test_a_torn_last_record_is_dropped_and_the_rest_kept(path):
    queue = AsyncQueue(path)
    queue.accept("a1", "hello", "{}")
    queue.accept("a2", "hello", "{}")
    queue.close()
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # the crash came in the middle of a2's record
    assert [i.id for i in AsyncQueue(path).pending()] == ["a1"]


def test_past_keep_results_the_oldest_outcomes_go_and_the_log_stays_small(path):
    queue = AsyncQueue(path, keep_results=2)
    for n in range(5):
        queue.accept(f"a{n}", "hello", "{}")
        queue.started(f"a{n}")
        queue.finished(f"a{n}", ok=True, result=str(n))
    queue.accept("waiting", "hello", "{}")
    size = path.stat().st_size
    queue = reopened(queue, path, keep_results=2)
    assert queue.result("a0") is None and queue.result("a2") is None
    assert queue.result("a4").result == "4" and queue.result("a3").attempts == 1
    assert [i.id for i in queue.pending()] == ["waiting"]
    assert size < 600
