"""nodes/common/phi.py: phi accrual and the verdicts built on it (time is an argument)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.common.phi import HeartbeatHistory, PhiAccrual, PhiDetector, phi_of

THRESHOLD = 8.0


def steady(interval: float, count: int, *, start: float = 0.0, **settings) -> PhiAccrual:
    accrual = PhiAccrual(first_interval=interval, min_std_deviation=interval / 10, **settings)
    for n in range(count):
        accrual.heartbeat(start + n * interval)
    return accrual


def time_to_suspicion(accrual: PhiAccrual, threshold: float = THRESHOLD) -> float:
    """The silence after the last heartbeat at which phi first reaches `threshold`."""
    low, high = 0.0, 1.0
    while accrual.phi(accrual.last + high) < threshold:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if accrual.phi(accrual.last + middle) >= threshold else (
            middle, high)
    return high


@pytest.mark.parametrize("elapsed, expected", [
    (0, 0.0), (500, 0.1), (1000, 0.3), (1200, 1.6), (1400, 4.7), (1600, 10.8), (1700, 15.3)])
def test_phi_matches_akkas_reference_values(elapsed, expected):
    # Akka's AccrualFailureDetectorSpec: mean 1000 ms, standard deviation 100 ms.
    assert phi_of(elapsed, 1000, 100) == pytest.approx(expected, abs=0.1)


def test_phi_stays_finite_and_ordered_far_from_the_mean():
    assert phi_of(0, 1, 0.001) == 0.0
    assert math.isfinite(phi_of(1000, 1, 0.001))
    assert phi_of(1000, 1, 0.001) > phi_of(10, 1, 0.001) > THRESHOLD


def test_history_is_bounded_and_its_statistics_follow_the_window():
    history = HeartbeatHistory(window=3)
    for interval in (10.0, 1.0, 1.0, 1.0):
        history.add(interval)
    assert len(history) == 3
    assert history.mean == pytest.approx(1.0)
    assert history.std_deviation == pytest.approx(0.0, abs=1e-6)


def test_no_suspicion_before_the_first_heartbeat():
    accrual = PhiAccrual(first_interval=1.0, min_std_deviation=0.1)
    assert accrual.phi(1e6) == 0.0


def test_the_acceptable_pause_delays_suspicion_by_itself():
    plain = steady(1.0, 50)
    paused = steady(1.0, 50, acceptable_pause=2.0)
    assert time_to_suspicion(paused) == pytest.approx(time_to_suspicion(plain) + 2.0, abs=1e-3)


@given(st.lists(st.floats(0.01, 5.0), min_size=1, max_size=50),
       st.floats(0.0, 20.0), st.floats(0.0, 20.0))
def test_phi_grows_monotonically_with_silence(intervals, a, b):
    accrual = PhiAccrual(first_interval=1.0, min_std_deviation=0.05)
    now = 0.0
    accrual.heartbeat(now)
    for interval in intervals:
        now += interval
        accrual.heartbeat(now)
    earlier, later = sorted((a, b))
    assert accrual.phi(now + earlier) <= accrual.phi(now + later)


@given(interval=st.floats(0.05, 5.0), jitter=st.floats(0.0, 0.2),
       phases=st.lists(st.floats(-1.0, 1.0), min_size=20, max_size=200))
def test_a_steady_heartbeat_is_never_suspected(interval, jitter, phases):
    """Heartbeats every interval +- 20 %: phi just before each one stays far below 8."""
    detector = PhiDetector(first_interval=interval, acceptable_pause=0.0,
                           min_std_deviation=interval / 10)
    now = 0.0
    assert detector.heartbeat("kv-2", now) is True
    for phase in phases:
        now += interval * (1 + jitter * phase)
        assert detector.judge("kv-2", now) is None
        assert detector.phi("kv-2", now) < THRESHOLD / 2
        detector.heartbeat("kv-2", now)
    assert detector.is_up("kv-2")


@given(interval=st.floats(0.05, 5.0), jitter=st.floats(0.15, 0.9))
def test_jitter_raises_the_time_to_suspicion_not_the_false_suspicion_rate(interval, jitter):
    """The same mean rate, learned steady or jittery (alternately early and late): the
    jittery peer is given more silence before suspicion, and its own jitter never makes
    it suspected."""
    calm = steady(interval, 200)
    jittery = PhiAccrual(first_interval=interval, min_std_deviation=interval / 10)
    now = 0.0
    for n in range(200):
        late = interval * jitter * (1 if n % 2 else -1)
        now += interval + late
        assert jittery.phi(now) < THRESHOLD
        jittery.heartbeat(now)
    assert jittery.history.mean == pytest.approx(calm.history.mean, rel=0.02)
    assert time_to_suspicion(jittery) > time_to_suspicion(calm)


def test_heartbeats_learn_a_slower_peer():
    accrual = steady(0.2, 10)
    before = time_to_suspicion(accrual)
    for n in range(1, 300):
        accrual.heartbeat(1.8 + n * 1.0)
    assert time_to_suspicion(accrual) > 3 * before


def make_detector(**overrides) -> PhiDetector:
    settings = dict(first_interval=1.0, acceptable_pause=1.0, min_std_deviation=0.1,
                    rise=2, fall=2)
    settings.update(overrides)
    return PhiDetector(**settings)


def test_a_new_peer_needs_rise_heartbeats_and_its_first_verdict_is_up():
    detector = make_detector()
    assert detector.refused("kv-2", 0.0) is None  # down already, without a verdict
    assert detector.heartbeat("kv-2", 1.0) is None
    assert not detector.is_up("kv-2")
    assert detector.heartbeat("kv-2", 2.0) is True
    assert detector.verdicts() == {"kv-2": True}


def test_refusals_in_a_row_make_a_peer_down_at_once():
    detector = make_detector(fall=2)
    detector.presume_up("kv-2", 0.0)
    assert detector.refused("kv-2", 0.1) is None
    assert detector.heartbeat("kv-2", 0.2) is None  # a good answer resets the count
    assert detector.refused("kv-2", 0.3) is None
    assert detector.refused("kv-2", 0.35) is False
    assert detector.refused("kv-2", 0.4) is None  # down already


def test_silence_is_evidence_and_phi_decides():
    detector = make_detector()
    for n in range(20):
        detector.heartbeat("kv-2", float(n))
    last = 19.0
    assert detector.silent("kv-2", last + 1.5) is None  # late, within the pause
    assert detector.is_up("kv-2")
    assert detector.judge("kv-2", last + 2.6) is False  # mean 1 + pause 1 + 5.2 x 0.1
    assert detector.heartbeat("kv-2", last + 3.0) is None
    assert detector.heartbeat("kv-2", last + 4.0) is True


def test_a_peer_that_keeps_refusing_is_judged_by_the_count_not_by_phi():
    detector = make_detector(fall=1000)
    detector.presume_up("kv-2", 0.0)
    for n in range(1, 100):
        assert detector.refused("kv-2", n * 1.0) is None
        assert detector.judge("kv-2", n * 1.0 + 0.5) is None
    assert detector.is_up("kv-2")
    assert detector.silent("kv-2", 100.0) is False  # silence after it: phi rules again


def test_the_gap_of_a_failure_is_not_learned():
    detector = make_detector(rise=1)
    for n in range(50):
        detector.heartbeat("kv-2", float(n))
    detector.judge("kv-2", 100.0)
    assert not detector.is_up("kv-2")
    detector.heartbeat("kv-2", 500.0)
    assert detector.is_up("kv-2")
    assert detector.judge("kv-2", 503.0) is False  # as quick as before the outage


def test_settings_are_checked():
    with pytest.raises(ValueError):
        make_detector(threshold=0)
    with pytest.raises(ValueError):
        make_detector(fall=0)
    with pytest.raises(ValueError):
        make_detector(min_std_deviation=0)
    with pytest.raises(ValueError):
        make_detector(window=1)
