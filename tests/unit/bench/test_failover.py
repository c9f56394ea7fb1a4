"""What bench/failover.py makes of its samples: the app kill's last failed call, the switch
taking healthy apps out, medians over runs with a missing figure."""

from __future__ import annotations

from bench.failover import after_kill, median, per_hour, switch_detection, takeouts

KILLED = 100.0


def test_the_last_failure_is_timed_from_the_kill_and_earlier_ones_are_counted_apart():
    samples = [(98.0, 98.5, False),       # the machine's own noise, before the kill
               (99.9, 100.2, False),      # in flight on the killed app
               (100.2, 100.3, True),
               (100.3, 100.45, False),    # the last call sent to it before it was ejected
               (100.45, 100.5, True)]
    assert after_kill(samples, KILLED) == {"last_failure_s": 0.45, "failed_calls": 2,
                                           "calls": 4, "failed_before_kill": 1}


def test_a_kill_nobody_noticed_is_zero_seconds_and_zero_failures():
    samples = [(99.0, 99.1, True), (100.0, 100.1, True), (100.1, 100.2, True)]
    assert after_kill(samples, KILLED) == {"last_failure_s": 0.0, "failed_calls": 0,
                                           "calls": 2, "failed_before_kill": 0}


def test_the_median_leaves_out_runs_that_measured_nothing():
    assert median([0.4, None, 0.1, 0.3]) == 0.3
    assert median([None, None]) is None
    assert median([]) is None


def test_each_fall_from_healthy_counts_once_however_long_it_lasts():
    polls = [{"a": 1, "b": 1}, {"a": 0, "b": 1}, {"a": 0, "b": 1}, {"a": 1, "b": 0},
             {"a": 1, "b": 0}, {"a": 0, "b": 1}]
    assert takeouts(polls) == 3  # a twice, b once


def test_a_backend_missing_from_a_poll_or_never_healthy_is_no_takeout():
    polls = [{"a": 0}, {"a": 0, "b": 1}, {"a": 0}, {"a": 0, "b": 1}]
    assert takeouts(polls) == 0
    assert takeouts([]) == 0


def test_suspicions_are_reported_per_hour_of_the_window():
    assert per_hour(0, 600) == 0.0
    assert per_hour(1, 600) == 6.0
    assert per_hour(1, 30) == 120.0


def test_the_report_names_the_switch_settings_the_app_kill_depends_on():
    settings = switch_detection()
    # As compose.yaml runs the tier, and the switch's own defaults for the rest.
    assert settings["apps"] == 3
    assert settings["SWITCH_POLICY"] == "least_outstanding"
    assert settings["SWITCH_HEALTH_INTERVAL_SECONDS"] == 1.0
    assert settings["SWITCH_HEALTH_FALL"] == 3
    assert settings["SWITCH_EJECT_CONSECUTIVE_FAILURES"] == 3
