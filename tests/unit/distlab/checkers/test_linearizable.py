"""The register linearizability checker on hand-made histories, and on simulated atomic ones.

Each anomaly a replicated register can show (stale read, lost write, a read of
a value nobody wrote, a failed write that took effect) must be caught with a
small witness naming the ops involved; indefinite writes must be given every
chance (any time after invoke, or never); a hopeless search must come back
unknown within its time budget instead of hanging.
"""

from __future__ import annotations

import random
import time
from itertools import permutations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.checkers.linearizable import (
    check_linearizable,
    describe_failure,
    describe_op,
    is_linearizable,
    smallest_failing,
)
from distlab.history import FAIL, INFO, OK, History, Op


def write(value, invoke, complete, kind=OK, key="k", process=0):
    return Op(process, "write", {"key": key, "value": value}, invoke, complete, kind)


def read(result, invoke, complete, kind=OK, key="k", process=1):
    return Op(process, "read", {"key": key}, invoke, complete, kind, result=result)


def check(*ops, **options):
    return check_linearizable(History.of_ops(ops), **options)


def noise(start, count, key="k"):
    """A sequential, valid run of writes each read back, from `start` seconds on."""
    ops = []
    for n in range(count):
        t = start + 2 * n
        ops += [write(f"noise-{key}-{n}", t, t + 0.5, key=key, process=2),
                read(f"noise-{key}-{n}", t + 1, t + 1.5, key=key, process=3)]
    return ops


# -- valid histories ------------------------------------------------------------------------

def test_a_sequential_history_is_valid():
    verdict = check(write("a", 0, 1), read("a", 2, 3), write("b", 4, 5), read("b", 6, 7),
                    read(None, 0, 0.5, key="other"))
    assert verdict.valid is True, verdict
    assert verdict.problems == []
    assert verdict.figures["keys"] == 2
    assert verdict.figures["ops_checked"] == 5
    assert verdict.figures["keys_unknown"] == 0


@pytest.mark.parametrize("seen", ["a", "b"])
def test_a_read_concurrent_with_a_write_may_see_either_value(seen):
    verdict = check(write("a", 0, 1), write("b", 2, 5), read(seen, 3, 4))
    assert verdict.valid is True, verdict


def test_ops_that_touch_are_concurrent():
    # The read completes at the instant the write is invoked: either order is allowed.
    assert check(write("a", 1, 2), read("a", 0, 1)).valid is True


def test_a_missing_key_reads_as_none_before_any_write():
    assert check(read(None, 0, 1), write("a", 2, 3), read("a", 4, 5)).valid is True


def test_an_indefinite_write_may_take_effect_any_time_after_its_invoke():
    # It timed out at 2 s, and may still be applied later, after a newer ok write.
    verdict = check(write("x", 1, 2, INFO), write("y", 3, 4), read("y", 4.5, 4.6),
                    read("x", 5, 6), read("x", 7, 8))
    assert verdict.valid is True, verdict


def test_an_indefinite_write_never_observed_is_valid():
    verdict = check(write("a", 0, 1), write("b", 2, 3, INFO), read("a", 4, 5), read("a", 6, 7))
    assert verdict.valid is True, verdict


def test_failed_writes_indefinite_reads_and_other_workloads_are_ignored():
    verdict = check(write("a", 0, 1), write("zzz", 1.5, 2, FAIL), read("zzz", 3, 4, INFO),
                    read("zzz", 3, 4, FAIL), read("a", 5, 6),
                    Op(4, "transfer", {"from": "a", "to": "b", "amount": 5}, 0, 1, OK),
                    Op(4, "read", {"account": "a"}, 0, 1, OK, result=7))
    assert verdict.valid is True, verdict
    assert verdict.figures["ops_checked"] == 2
    assert verdict.figures["ops_ignored"] == 1


# -- anomalies -------------------------------------------------------------------------------

def test_a_stale_read_is_caught_with_a_three_op_witness():
    stale = read("v1", 104, 105, process=7)
    history = [*noise(0, 50), write("v1", 100, 101), write("v2", 102, 103), stale,
               *noise(110, 50)]
    verdict = check(*history)
    assert verdict.valid is False
    assert verdict.problems[0] == ("key 'k' is not linearizable; smallest failing "
                                   f"sub-history (3 of {len(history)} ops):")
    assert verdict.problems[1:4] == ["  p0 write 'v1' [100.000, 101.000] ok",
                                     "  p0 write 'v2' [102.000, 103.000] ok",
                                     "  p7 read -> 'v1' [104.000, 105.000] ok"]
    assert smallest_failing(history) == [history[100], history[101], stale]


def test_a_lost_write_is_caught_when_reads_see_the_initial_value():
    lost, late = write("v1", 0, 1), read(None, 2, 3)
    verdict = check(*noise(10, 20, key="other"), lost, late, read(None, 4, 5))
    assert verdict.valid is False
    assert verdict.problems[0].startswith("key 'k' is not linearizable")
    assert smallest_failing([lost, late, read(None, 4, 5)]) == [lost, late]


def test_a_lost_write_is_caught_when_reads_keep_an_older_value():
    older, lost = write("v1", 0, 1), write("v2", 2, 3)
    reads = [read("v1", 4 + n, 4.5 + n) for n in range(10)]
    witness = smallest_failing([older, lost, *reads])
    assert len(witness) == 3
    assert witness[:2] == [older, lost] and witness[2].result == "v1"


def test_a_read_of_a_value_never_written_is_caught_on_its_own():
    ghost = read("ghost", 4, 5)
    verdict = check(write("a", 0, 1), read("a", 2, 3), ghost)
    assert verdict.valid is False
    assert "(1 of 3 ops)" in verdict.problems[0]
    assert verdict.problems[1] == f"  {describe_op(ghost)}"
    assert "no ok or info write wrote 'ghost'" in verdict.problems[2]


def test_a_failed_write_that_took_effect_is_caught():
    failed = write("x", 0, 1, FAIL)
    seen = read("x", 2, 3)
    verdict = check(write("a", -2, -1), failed, seen)
    assert verdict.valid is False
    assert verdict.problems[1] == f"  {describe_op(seen)}"
    assert "a failed write of it: p0 write 'x' [0.000, 1.000] fail" in verdict.problems[2]


def test_only_the_bad_key_is_named():
    verdict = check(*noise(0, 10, key="good"), write("v1", 0, 1, key="bad"),
                    write("v2", 2, 3, key="bad"), read("v1", 4, 5, key="bad"))
    assert verdict.valid is False
    assert verdict.figures["keys_invalid"] == 1
    headings = [line for line in verdict.problems if not line.startswith("  ")]
    assert headings == ["key 'bad' is not linearizable; smallest failing sub-history "
                        "(3 of 3 ops):"]


def test_a_witness_keeps_every_write_of_a_value_it_reads():
    # Without the second write of "a", the read of "a" at 6 would look stale; it is not
    # the culprit: the read of None at 8 is (it comes after a completed write).
    ops = [write("a", 0, 1), write("b", 2, 3), write("a", 4, 5), read("a", 6, 7),
           read(None, 8, 9)]
    witness = smallest_failing(ops)
    assert is_linearizable(witness) is False
    assert [op.result for op in witness if op.op == "read"] == [None]


# -- budgets and bad input -------------------------------------------------------------------

def hopeless(writers=24):
    """Every write concurrent, then two reads that no order of them can explain: the
    search must try every subset of the writes before saying no."""
    ops = [write(f"v{n}", 0, 10, process=n) for n in range(writers)]
    return [*ops, read("v0", 11, 12), read("v1", 13, 14)]


def test_a_hopeless_search_is_unknown_within_its_time_budget():
    started = time.monotonic()
    verdict = check(*hopeless(), *noise(0, 5, key="fine"), time_limit=0.2)
    assert time.monotonic() - started < 2
    assert verdict.valid is None
    assert verdict.figures["keys_unknown"] == 1
    assert len(verdict.problems) == 1
    assert verdict.problems[0].startswith("key 'k' undecided: the search ran out")


def test_a_small_hopeless_search_is_decided():
    assert is_linearizable(hopeless(writers=6)) is False
    assert is_linearizable(hopeless(writers=24), deadline=time.monotonic() + 0.05) is None


def test_too_many_ops_for_a_key_is_unknown_but_other_keys_are_checked():
    verdict = check(*noise(0, 10, key="busy"), write("v1", 0, 1, key="small"),
                    read("v1", 2, 3, key="small"), max_ops_per_key=5)
    assert verdict.valid is None
    assert verdict.problems == ["key 'busy' undecided: 20 ok/info ops, more than "
                                "max_ops_per_key=5"]
    assert verdict.figures["states_explored"]["small"] > 0


def test_an_invalid_key_wins_over_an_unknown_one():
    verdict = check(*noise(0, 10, key="busy"), read("ghost", 0, 1), max_ops_per_key=5)
    assert verdict.valid is False


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="time_limit"):
        check(write("a", 0, 1), time_limit=0)
    with pytest.raises(ValueError, match="one key"):
        is_linearizable([write("a", 0, 1, key="x"), write("a", 0, 1, key="y")])
    with pytest.raises(ValueError, match="linearizable"):
        smallest_failing([write("a", 0, 1), read("a", 2, 3)])


# -- simulated atomic registers --------------------------------------------------------------

def simulate(seed: int, count: int, processes: int, keys: int, values: int) -> list[Op]:
    """Clients of a real atomic register: each op takes effect at a random instant inside
    its interval. Indefinite writes take effect or not; failed ones never do."""
    rng = random.Random(seed)
    free_at = [0.0] * processes
    planned = []
    for serial in range(count):
        process = rng.randrange(processes)
        invoke = free_at[process] + rng.random() * 0.1
        complete = invoke + rng.choice([0.01, 0.1, 0.5, 2.0]) * rng.random()
        free_at[process] = complete
        planned.append((rng.uniform(invoke, complete), serial, process, invoke, complete))
    register: dict[str, str] = {}
    ops = []
    for _, serial, process, invoke, complete in sorted(planned):
        key = f"k{rng.randrange(keys)}"
        kind = rng.choices([OK, INFO, FAIL], [8, 1, 1])[0]
        if rng.random() < 0.5:
            value = f"v{rng.randrange(values)}" if values else f"{process}-{serial}"
            if kind == OK or (kind == INFO and rng.random() < 0.5):
                register[key] = value
            ops.append(write(value, invoke, complete, kind, key, process))
        else:
            seen = register.get(key) if kind == OK else "unknowable"
            ops.append(read(seen, invoke, complete, kind, key, process))
    return ops


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(0, 60), processes=st.integers(1, 6),
       keys=st.integers(1, 3), values=st.sampled_from([0, 2, 5]))
def test_histories_of_an_atomic_register_are_linearizable(seed, count, processes, keys, values):
    verdict = check(*simulate(seed, count, processes, keys, values))
    assert verdict.valid is True, verdict


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), values=st.sampled_from([0, 3]))
def test_a_witness_is_a_failing_sub_history(seed, values):
    ops = simulate(seed, 40, 4, 1, values)
    reads = [n for n, op in enumerate(ops) if op.op == "read" and op.type == OK]
    written = sorted({op.args["value"] for op in ops if op.op == "write"})
    if not reads or not written:
        return
    rng = random.Random(seed)
    victim = rng.choice(reads)
    old = ops[victim]
    ops[victim] = read(rng.choice([None, *written]), old.invoke, old.complete, key="k0")
    if is_linearizable(ops) is not False:
        return   # the new value happened to be possible
    witness = smallest_failing(ops)
    assert is_linearizable(witness) is False
    assert all(op in ops for op in witness) and len(witness) <= len(ops)
    kept = {id(op) for op in witness}
    for op in (o for o in witness if o.op == "read"):
        writes_of_it = [w for w in ops if w.op == "write" and w.type != FAIL
                        and w.args["value"] == op.result]
        assert all(id(w) in kept for w in writes_of_it)


def linearizable_by_brute_force(ops: list[Op]) -> bool:
    """Try every order of every choice of indefinite writes: the definition, slowly."""
    ok = [op for op in ops if op.type == OK]
    maybe = [op for op in ops if op.type == INFO and op.op == "write"]
    for mask in range(2 ** len(maybe)):
        chosen = ok + [op for n, op in enumerate(maybe) if mask >> n & 1]
        complete = {id(op): op.complete if op.type == OK else float("inf") for op in chosen}
        if any(_explains(order, complete) for order in permutations(chosen)):
            return True
    return False


def _explains(order, complete) -> bool:
    value = None
    for n, op in enumerate(order):
        # Nothing placed later may have completed before this op was invoked.
        if any(complete[id(later)] < op.invoke for later in order[n + 1:]):
            return False
        if op.op == "write":
            value = op.args["value"]
        elif op.result != value:
            return False
    return True


small_op = st.builds(
    lambda is_write, value, invoke, length, kind: (
        write(value, invoke, invoke + length, kind) if is_write else
        read(None if value == "none" else value, invoke, invoke + length, kind)),
    st.booleans(), st.sampled_from(["a", "b", "none"]), st.integers(0, 6),
    st.integers(0, 4), st.sampled_from([OK, OK, OK, INFO, FAIL]))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(small_op, max_size=6))
def test_the_search_agrees_with_brute_force(ops):
    assert is_linearizable(ops) == linearizable_by_brute_force(ops)


def test_a_witness_cut_short_by_the_budget_says_so_and_long_ones_are_abridged():
    ops = noise(0, 20)
    lines = describe_failure("k", ops, 40, finished=False)
    assert lines[0] == ("key 'k' is not linearizable; smallest failing sub-history found "
                        "before the time budget ran out (40 of 40 ops):")
    assert len(lines) == 1 + 30 + 1
    assert lines[-1] == "  ... and 10 more ops"
