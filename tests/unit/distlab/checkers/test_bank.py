"""The bank checker on hand-made histories: it passes what is right and catches each anomaly."""

from distlab.history import FAIL, INFO, OK, History, Op
from distlab.tiers.bank_checker import BankOutcome, check_bank

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


# -- hand-made histories of known anomalies, with concurrent clients -------------------------

THREE = ["a", "b", "c"]
OPENED = {"a": 100, "b": 100, "c": 100}


def move(process, invoke, complete, source, target, amount, seen=None, kind=OK):
    """A transfer; `seen` is the (from, to) balances an acknowledged one answered with."""
    args = {"from": source, "to": target, "amount": amount, "key": f"p{process}-{invoke}"}
    result = None if seen is None else {"from": seen[0], "to": seen[1]}
    return Op(process, "transfer", args, invoke, complete, kind, result=result)


def look(process, invoke, complete, balances):
    return Op(process, "audit", {}, invoke, complete, OK, result=balances)


def balance(process, invoke, complete, account, cents):
    return Op(process, "balance", {"account": account}, invoke, complete, OK, result=cents)


def settled(final, applied, unresolved=()):
    return BankOutcome(THREE, OPENED, final, [op.args for op in applied],
                       [op.args for op in unresolved])


def test_a_busy_consistent_run_with_concurrent_clients_is_valid():
    t1 = move(0, 1.0, 1.2, "a", "b", 30, seen=(70, 130))
    t2 = move(1, 1.1, 1.3, "b", "c", 50, seen=(80, 150))       # concurrent with t1
    t3 = move(2, 1.15, 3.0, "c", "a", 10, kind=INFO)           # timed out; replay: applied
    t4 = move(0, 2.0, 2.1, "a", "c", 999, kind=FAIL)           # refused: not enough money
    history = History.of_ops([
        t1, t2, t3, t4,
        look(3, 1.05, 1.06, {"a": 100, "b": 100, "c": 100}),   # before anything applied
        look(3, 1.25, 1.28, {"a": 70, "b": 80, "c": 150}),     # t1 and t2, not yet t3
        balance(1, 2.5, 2.6, "a", 80),                         # t3 applied by now
        look(3, 4.0, 4.1, {"a": 80, "b": 80, "c": 140}),
    ])
    verdict = check_bank(history, settled({"a": 80, "b": 80, "c": 140}, [t1, t2, t3]))
    assert verdict.valid is True, verdict
    assert verdict.figures["audits_checked"] == 3
    assert verdict.figures["transfers_acknowledged"] == 2


def test_write_skew_two_transfers_that_each_saw_enough_money_overdraw_the_account():
    # Both read a = 100, both debited 80 and were acknowledged as if alone; a later
    # balance read and audit show the account overdrawn although money was conserved.
    first = move(0, 1.0, 1.2, "a", "b", 80, seen=(20, 180))
    second = move(1, 1.05, 1.25, "a", "c", 80, seen=(20, 180))
    history = History.of_ops([first, second, balance(2, 2.0, 2.1, "a", -60),
                              look(3, 3.0, 3.1, {"a": -60, "b": 180, "c": 180})])
    verdict = check_bank(history, settled({"a": -60, "b": 180, "c": 180}, [first, second]))
    assert verdict.valid is False
    assert verdict.figures["negative_reads"] == 2
    assert verdict.figures["torn_audits"] == 0          # the total is right: only skew
    assert any(line.startswith("balance at t=2.000s saw a negative balance: -60")
               for line in verdict.problems)
    assert any(line.startswith("audit at t=3.000s saw a negative balance")
               for line in verdict.problems)


def test_a_lost_acknowledged_transfer_is_caught_although_every_audit_adds_up():
    kept = move(0, 1.0, 1.1, "a", "b", 10, seen=(90, 110))
    lost = move(1, 2.0, 2.1, "b", "c", 25, seen=(85, 125))   # acknowledged, then rolled back
    later = move(0, 3.0, 3.1, "c", "a", 5, seen=(95, 95))
    history = History.of_ops([kept, lost, later,
                              look(2, 2.5, 2.6, {"a": 90, "b": 85, "c": 125}),
                              look(2, 4.0, 4.1, {"a": 95, "b": 110, "c": 95})])
    verdict = check_bank(history, settled({"a": 95, "b": 110, "c": 95}, [kept, lost, later]))
    assert verdict.valid is False
    assert verdict.figures["torn_audits"] == 0
    assert verdict.problems == [
        "final balance of b is 110, expected 85 from 3 applied transfers",
        "final balance of c is 95, expected 120 from 3 applied transfers"]


def test_a_lost_transfer_proved_applied_by_its_replay_is_caught():
    unsure = move(0, 1.0, 3.0, "a", "b", 40, kind=INFO)   # the replay said: applied
    verdict = check_bank(History.of_ops([unsure]),
                         settled({"a": 100, "b": 100, "c": 100}, [unsure]))
    assert verdict.valid is False
    assert "final balance of a is 100, expected 60" in verdict.problems[0]


def test_a_torn_audit_that_saw_half_of_a_concurrent_transfer_is_caught():
    transfer_ = move(0, 1.0, 1.3, "a", "c", 30, seen=(70, 130))
    torn = look(1, 1.1, 1.2, {"a": 70, "b": 100, "c": 100})   # the debit, not the credit
    history = History.of_ops([transfer_, torn, look(1, 2.0, 2.1, {"a": 70, "b": 100, "c": 130})])
    verdict = check_bank(history, settled({"a": 70, "b": 100, "c": 130}, [transfer_]))
    assert verdict.valid is False
    assert verdict.figures["torn_audits"] == 1
    assert verdict.problems == ["audit at t=1.100s summed to 270, not 300: "
                                "{'a': 70, 'b': 100, 'c': 100}"]


def test_an_audit_missing_an_account_is_torn_even_when_its_sum_is_right():
    history = History.of_ops([look(1, 1.0, 1.1, {"a": 150, "b": 150})])
    verdict = check_bank(history, settled(dict(OPENED), []))
    assert verdict.valid is False
    assert verdict.figures["torn_audits"] == 1
    assert "did not show accounts c" in verdict.problems[0]


def test_an_audit_that_finds_no_account_is_invalid_not_a_crash():
    """Seen on the swarm: a data master rescheduled to a host without its state made a
    chain of one empty replica, and the audit answered {}."""
    history = History.of_ops([transfer(1, 30), audit(2, {})])
    verdict = check_bank(history, outcome({}, [transfer(1, 30)]))
    assert verdict.valid is False
    assert "did not show accounts a, b" in verdict.problems[0]
