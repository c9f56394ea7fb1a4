"""The bank checker on hand-made histories: it passes what is right and catches each anomaly."""

from distlab.checkers.bank import BankOutcome, check_bank
from distlab.history import FAIL, INFO, OK, History, Op

ACCOUNTS = ["a", "b"]
INITIAL = {"a": 100, "b": 100}


def transfer(t, amount, kind=OK, source="a", target="b", key=None):
    args = {"from": source, "to": target, "amount": amount, "key": key or f"k{t}"}
    return Op(0, "transfer", args, t, t + 0.01, kind)


def audit(t, balances):
    return Op(1, "audit", {}, t, t + 0.01, OK, result=balances)


def outcome(final, applied, unresolved=()):
    return BankOutcome(ACCOUNTS, INITIAL, final, [op.args for op in applied],
                       [op.args for op in unresolved])


def test_a_consistent_run_is_valid_and_counts_failures_by_kind():
    ok, failed, lost_in_flight = transfer(1, 30), transfer(2, 500, FAIL), transfer(3, 5, INFO)
    history = History.of_ops([ok, failed, lost_in_flight, audit(4, {"a": 70, "b": 130})])
    verdict = check_bank(history, outcome({"a": 65, "b": 135}, [ok, lost_in_flight]))
    assert verdict.valid is True, verdict
    assert verdict.figures["transfers_failed_definite"] == 1
    assert verdict.figures["transfers_failed_indefinite"] == 1
    assert verdict.figures["indefinite_resolved_applied"] == 1


def test_a_torn_audit_is_caught():
    history = History.of_ops([transfer(1, 30), audit(2, {"a": 70, "b": 100})])
    verdict = check_bank(history, outcome({"a": 70, "b": 130}, [transfer(1, 30)]))
    assert verdict.valid is False
    assert "summed to 170, not 200" in verdict.problems[0]


def test_a_negative_balance_is_caught():
    history = History.of_ops([Op(0, "balance", {"account": "a"}, 1, 2, OK, result=-5)])
    verdict = check_bank(history, outcome({"a": 100, "b": 100}, []))
    assert verdict.valid is False
    assert "negative" in verdict.problems[0]


def test_a_lost_acknowledged_transfer_is_caught():
    acked = transfer(1, 30)
    verdict = check_bank(History.of_ops([acked]), outcome({"a": 100, "b": 100}, [acked]))
    assert verdict.valid is False
    assert "final balance of a is 100, expected 70" in verdict.problems[0]


def test_write_skew_that_overdraws_is_caught_by_the_final_state():
    # Two transfers both acknowledged from a balance that covered only one of them.
    first, second = transfer(1, 80), transfer(1.001, 80, key="k-other")
    history = History.of_ops([first, second, audit(3, {"a": -60, "b": 260})])
    verdict = check_bank(history, outcome({"a": -60, "b": 260}, [first, second]))
    assert verdict.valid is False
    assert any("negative" in problem for problem in verdict.problems)


def test_unresolved_indefinite_transfers_make_the_verdict_unknown_not_invalid():
    unsure = transfer(1, 30, INFO)
    verdict = check_bank(History.of_ops([unsure]), outcome({"a": 70, "b": 130}, [], [unsure]))
    assert verdict.valid is None
    assert "could not be resolved" in verdict.problems[0]


def test_no_final_audit_is_unknown():
    verdict = check_bank(History(), outcome(None, []))
    assert verdict.valid is None


def test_history_round_trips_through_jsonl(tmp_path):
    history = History.of_ops([transfer(1, 30), audit(2, {"a": 70, "b": 130})])
    history.write(tmp_path / "history.jsonl")
    again = History.read(tmp_path / "history.jsonl")
    assert [op.args for op in again] == [op.args for op in history]
    assert again.counts() == {"transfer": {"ok": 1, "fail": 0, "info": 0},
                              "audit": {"ok": 1, "fail": 0, "info": 0}}
