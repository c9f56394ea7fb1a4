"""Availability and latency expectations on hand-made histories and fault windows."""

from __future__ import annotations

import pytest

from distlab.checkers.expectations import check_availability, check_latency, in_fault_window
from distlab.history import FAIL, INFO, OK, History, Op

# One fault from 10 s to 20 s, and one still on from 50 s to the end of the run.
WINDOWS = [(10.0, 20.0), (50.0, None)]


def op(invoke, kind=OK, latency=0.01, name="write", error=""):
    return Op(0, name, {"key": "k"}, invoke, invoke + latency, kind,
              error=error or ("" if kind == OK else "UNAVAILABLE"))


def test_fault_windows_include_their_ends_and_the_grace_after():
    assert not in_fault_window(9.99, WINDOWS)
    assert in_fault_window(10.0, WINDOWS) and in_fault_window(20.0, WINDOWS)
    assert not in_fault_window(21.0, WINDOWS)
    assert in_fault_window(21.0, WINDOWS, grace=2.0)
    assert not in_fault_window(22.5, WINDOWS, grace=2.0)
    assert in_fault_window(10_000.0, WINDOWS)      # the open window lasts to the end
    assert not in_fault_window(5.0, [])


def test_availability_during_faults_passes_when_enough_ops_succeed():
    history = History.of_ops([op(11), op(12), op(13), op(14, FAIL), op(1, FAIL), op(2, FAIL)])
    verdict = check_availability(history, WINDOWS, at_least=0.75, window="faults")
    assert verdict.name == "availability during faults >= 75%"
    assert verdict.valid is True, verdict
    assert verdict.figures["availability"] == 0.75
    assert (verdict.figures["ok"], verdict.figures["fail"]) == (3, 1)


def test_availability_below_the_bar_says_the_numbers_and_shows_failed_ops():
    ops = [op(11 + n / 100) for n in range(228)]
    ops += [op(15 + n / 100, FAIL if n % 2 else INFO, error="DEADLINE_EXCEEDED")
            for n in range(22)]
    verdict = check_availability(History.of_ops(ops), WINDOWS, at_least=0.99, window="faults")
    assert verdict.valid is False
    assert verdict.problems[0] == ("availability during faults was 91.2% (228 of 250 answered: "
                                   "228 ok, 0 refused; 11 failed, 11 indefinite), below 99%")
    examples = verdict.problems[1:]
    assert len(examples) == 5
    assert examples[0] == "  e.g. p0 write at t=15.000s took 10 ms: info (DEADLINE_EXCEEDED)"


def test_calm_excludes_the_grace_period_after_a_fault():
    # Failures just after the fault ended are forgiven with a 5 s grace, not without.
    history = History.of_ops([op(1), op(2), op(21, FAIL), op(24, FAIL), op(30), op(40)])
    strict = check_availability(history, WINDOWS, at_least=1.0, window="calm")
    forgiving = check_availability(history, WINDOWS, at_least=1.0, window="calm", grace=5.0)
    assert strict.valid is False
    assert "4 of 6 answered" in strict.problems[0]
    assert forgiving.valid is True, forgiving
    assert forgiving.figures["selected"] == 4


def test_all_counts_every_op_and_ops_filters_by_name():
    history = History.of_ops([op(1, name="read"), op(11, FAIL, name="write"),
                              op(60, name="write"), op(61, INFO, name="read")])
    overall = check_availability(history, WINDOWS, at_least=0.5)
    assert overall.name == "availability overall >= 50%"
    assert overall.valid is True and overall.figures["selected"] == 4
    writes = check_availability(history, WINDOWS, at_least=0.9, ops=["write"], window="faults")
    assert writes.name == "availability of write during faults >= 90%"
    assert writes.valid is False
    assert writes.figures["ops"] == ["write"]


def test_no_op_selected_is_unknown_with_a_reason():
    history = History.of_ops([op(1), op(2)])
    verdict = check_availability(history, WINDOWS, at_least=0.99, window="faults")
    assert verdict.valid is None
    assert verdict.problems == ["no operation was invoked during faults: nothing to measure"]
    latency = check_latency(History.of_ops([op(1, FAIL)]), WINDOWS, at_most=0.5)
    assert latency.valid is None
    assert "no ok operation was invoked when calm" in latency.problems[0]


def test_latency_uses_the_nearest_rank_percentile():
    # 100 calm ops of 1..100 ms: p99 is the 99th, 99 ms; p100 is the slowest.
    ops = [op(1 + n / 1000, latency=(n + 1) / 1000) for n in range(100)]
    history = History.of_ops([*ops, op(12, latency=9.0), op(3, FAIL, latency=9.0)])
    verdict = check_latency(history, WINDOWS, at_most=0.099)
    assert verdict.name == "p99 latency when calm <= 99 ms"
    assert verdict.valid is True, verdict
    assert verdict.figures["latency"] == pytest.approx(0.099)
    assert verdict.figures["selected_ok"] == 100
    worst = check_latency(history, WINDOWS, at_most=0.099, percentile=100)
    assert worst.valid is False
    assert worst.problems[0] == "p100 latency when calm was 100 ms (over 100 ok ops), above 99 ms"
    assert worst.problems[1].startswith("  e.g. p0 write at t=1.099s took 100 ms")


def test_latency_during_faults_is_judged_on_the_ops_invoked_then():
    history = History.of_ops([op(1, latency=0.01), op(11, latency=2.5), op(12, latency=0.2)])
    verdict = check_latency(history, WINDOWS, at_most=1.0, percentile=50, window="faults")
    assert verdict.name == "p50 latency during faults <= 1 s"
    assert verdict.valid is True      # the median of 0.2 s and 2.5 s is the lower, 200 ms
    slow = check_latency(history, WINDOWS, at_most=1.0, window="faults", name="fast enough")
    assert slow.name == "fast enough"
    assert slow.valid is False
    assert "was 2.5 s" in slow.problems[0]


@pytest.mark.parametrize("call, message", [
    (lambda h: check_availability(h, WINDOWS, at_least=99), "at_least"),
    (lambda h: check_availability(h, WINDOWS, at_least=0.9, window="storm"), "window"),
    (lambda h: check_latency(h, WINDOWS, at_most=0.5, percentile=0), "percentile"),
    (lambda h: check_latency(h, WINDOWS, at_most=0.5, percentile=101), "percentile"),
    (lambda h: check_latency(h, WINDOWS, at_most=-1), "at_most"),
    (lambda h: check_latency(h, WINDOWS, at_most=1, grace=-1), "grace"),
    (lambda h: check_latency(h, [(5.0, 1.0)], at_most=1), "ends before it starts"),
])
def test_bad_arguments_are_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call(History.of_ops([op(1)]))


def test_a_refusal_on_the_request_s_merits_is_an_answer_not_unavailability():
    refused = op(3, FAIL, name="transfer", error="FAILED_PRECONDITION: insufficient funds")
    unavailable = op(4, FAIL, name="transfer", error="UNAVAILABLE: no backend")
    aborted = op(5, FAIL, name="transfer", error="ABORTED: contention; retry")
    history = History.of_ops([op(1), refused, unavailable, aborted])
    verdict = check_availability(history, [], at_least=0.5)
    assert verdict.valid is True and verdict.figures["availability"] == 0.5
    assert verdict.figures["refused"] == 1
    strict = check_availability(history, [], at_least=0.75)
    assert strict.valid is False
    assert "2 of 4 answered: 1 ok, 1 refused; 2 failed" in strict.problems[0]
