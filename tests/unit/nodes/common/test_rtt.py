import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.common.rtt import RttEstimator


def estimator(**kw):
    return RttEstimator(**{"initial": 0.5, "minimum": 0.05, "maximum": 4.0, **kw})


def test_a_peer_never_heard_gets_the_initial_deadline():
    assert estimator().timeout("a:1") == 0.5


def test_a_fast_peer_gets_a_short_deadline_and_a_slow_one_a_long_one():
    rtt = estimator()
    for _ in range(20):
        rtt.observe("fast", 0.002)
        rtt.observe("slow", 0.6)
    assert rtt.timeout("fast") == 0.05  # clamped to the minimum
    assert 0.6 < rtt.timeout("slow") < 1.5


def test_jittery_answers_widen_the_margin():
    steady, jittery = estimator(), estimator()
    for n in range(40):
        steady.observe("p", 0.1)
        jittery.observe("p", 0.02 if n % 2 else 0.18)
    assert jittery.timeout("p") > steady.timeout("p")


def test_timeouts_double_the_deadline_up_to_the_maximum_and_an_answer_resets_it():
    rtt = estimator()
    for _ in range(10):
        rtt.observe("p", 0.1)
    base = rtt.timeout("p")
    rtt.timed_out("p")
    assert rtt.timeout("p") == pytest.approx(min(2 * base, 4.0))
    for _ in range(20):
        rtt.timed_out("p")
    assert rtt.timeout("p") == 4.0
    rtt.observe("p", 0.1)
    assert rtt.timeout("p") == pytest.approx(base, rel=0.3)


def test_a_silent_unknown_peer_backs_off_from_the_initial_deadline():
    rtt = estimator()
    rtt.timed_out("new")
    assert rtt.timeout("new") == 1.0


def test_memory_is_bounded_and_forgets_the_least_recently_used():
    rtt = estimator(capacity=3)
    for peer in "abcd":
        rtt.observe(peer, 0.01)
    assert len(rtt) == 3
    assert rtt.timeout("a") == 0.5  # forgotten: back to the initial deadline
    rtt.forget("b")
    assert len(rtt) == 2


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        RttEstimator(initial=0.5, minimum=2.0, maximum=1.0)


@given(st.lists(st.one_of(st.floats(min_value=0, max_value=30), st.none()), max_size=60))
def test_the_deadline_always_stays_within_bounds(events):
    rtt = estimator()
    for event in events:
        if event is None:
            rtt.timed_out("p")
        else:
            rtt.observe("p", event)
        assert 0.05 <= rtt.timeout("p") <= 4.0


def test_concurrent_callers_leave_it_consistent():
    rtt = estimator(capacity=16)

    def hammer(n):
        for i in range(2000):
            rtt.observe(f"p{(n + i) % 32}", 0.01)
            rtt.timeout(f"p{i % 32}")

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(rtt) == 16
