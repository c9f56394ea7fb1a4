"""The linearizability checker for key-value registers (Wing & Gong's search, Lowe's cache).

The register workload writes values to keys and reads them back; this checker
decides whether some order of those operations, each placed at one instant
between its invoke and its complete, explains every read (the linearizability
of Herlihy & Wing). Keys are independent registers, so each key is checked on
its own (P-compositionality), then the failing keys are shrunk to a small
failing sub-history a person can read. Pure: it reads a History and a clock.

The search is WGL as in Lowe 2017 ("Testing for linearizability") and
porcupine: a linked list of call/return events, a bitset (an int) of the ops
linearized so far and a cache of (bitset, register value) already explored.
Two orderings keep it fast on real histories: a read that matches the value
is linearized at once without branching (a read changes nothing, so moving it
first never breaks a linearization), and indefinite writes are tried only
after every acknowledged candidate, so a write whose answer was lost is placed
as late as the reads allow instead of at its invoke.

Op semantics: `ok` ops happened between invoke and complete; `fail` ops never
happened (dropped); an `info` write may have happened at any time after its
invoke, or never; an `info` read is dropped (a read changes nothing). Ops other
than "write" and "read" belong to other workloads and are ignored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distlab.checkers import Verdict
from distlab.history import FAIL, INFO, OK, History, Op

READ, WRITE = "read", "write"
NIL = -1
# How many search steps run between two looks at the clock: rare enough to cost
# nothing, frequent enough that a deadline is overshot by milliseconds at most.
CLOCK_EVERY = 256
OPS_SHOWN_PER_KEY = 30
# A bound on the states one search remembers (about 200 bytes each), so that a
# pathological history with a generous time limit stays unknown instead of eating memory.
MAX_CACHED_STATES = 2_000_000


@dataclass(frozen=True)
class _KeyOutcome:
    """What the search said about one key: True, False, or None (undecided) and why."""
    key: str
    ops: int
    valid: bool | None
    states: int = 0
    reason: str = ""
    witness: list[Op] = field(default_factory=list)
    shrink_finished: bool = True


# -- public entry points ------------------------------------------------------------------

def check_linearizable(history: History, *, time_limit: float = 10.0,
                       max_ops_per_key: int = 2000, name: str = "linearizable") -> Verdict:
    """Check every key of the register workload in `history`; True, False or None (unknown).

    `time_limit` bounds the whole check (search and shrinking, all keys together);
    a key with more than `max_ops_per_key` ok/info ops is not searched (unknown)."""
    if not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, not {time_limit!r}")
    if max_ops_per_key < 1:
        raise ValueError(f"max_ops_per_key must be at least 1, not {max_ops_per_key!r}")
    started = time.monotonic()
    deadline = started + time_limit
    by_key, ignored = _ops_by_key(history)
    outcomes = _decide_keys(by_key, deadline, max_ops_per_key)
    outcomes = _shrink_invalid(outcomes, by_key, deadline)
    problems: list[str] = []
    for outcome in outcomes.values():
        if outcome.valid is False:
            problems += describe_failure(outcome.key, outcome.witness, outcome.ops,
                                         finished=outcome.shrink_finished,
                                         failed_writes=_failed_writes(history, outcome.key))
    problems += [f"key {outcome.key!r} undecided: {outcome.reason}"
                 for outcome in outcomes.values() if outcome.valid is None]
    figures = {
        "keys": len(outcomes),
        "keys_invalid": sum(o.valid is False for o in outcomes.values()),
        "keys_unknown": sum(o.valid is None for o in outcomes.values()),
        "ops_checked": sum(o.ops for o in outcomes.values()),
        "ops_ignored": ignored,
        "states_explored": {o.key: o.states for o in outcomes.values()},
        "seconds": round(time.monotonic() - started, 3),
        "time_limit": time_limit,
    }
    verdicts = [o.valid for o in outcomes.values()]
    valid = False if False in verdicts else None if None in verdicts else True
    return Verdict(name, valid, problems, figures)


def is_linearizable(ops: Iterable[Op], *, deadline: float | None = None) -> bool | None:
    """Whether the register ops of ONE key are linearizable; None when `deadline` passed.

    `ops` may hold fail ops, info reads and other workloads' ops: they are dropped."""
    register = _register_ops(_single_key(ops))
    result, _ = _search(register, math.inf if deadline is None else deadline)
    return result


def smallest_failing(ops: Iterable[Op], *, deadline: float | None = None) -> list[Op]:
    """A small sub-history of ONE key's ops that is still not linearizable (invoke order).

    The sub-history keeps every write of each value one of its reads returned, so its
    failure is the whole history's failure, not an artefact of removing a write. Stops
    shrinking at `deadline` and returns the smallest failing set found so far."""
    register = _register_ops(_single_key(ops))
    end = math.inf if deadline is None else deadline
    result, _ = _search(register, end)
    if result is not False:
        raise ValueError("these ops are linearizable (or undecided before the deadline): "
                         "there is no failing sub-history to find")
    witness, _ = _shrink(register, end)
    return [r.source for r in witness]


def describe_failure(key: str, witness: Sequence[Op], total: int, *, finished: bool = True,
                     failed_writes: Sequence[Op] = ()) -> list[str]:
    """Readable lines for a failing key: a heading, then one line per op of the witness."""
    what = "smallest failing sub-history" if finished else \
        "smallest failing sub-history found before the time budget ran out"
    lines = [f"key {key!r} is not linearizable; {what} ({len(witness)} of {total} ops):"]
    shown = sorted(witness, key=lambda op: (op.invoke, op.complete))
    lines += [f"  {describe_op(op)}" for op in shown[:OPS_SHOWN_PER_KEY]]
    if len(shown) > OPS_SHOWN_PER_KEY:
        lines.append(f"  ... and {len(shown) - OPS_SHOWN_PER_KEY} more ops")
    written = {op.args.get("value") for op in witness if op.op == WRITE}
    for read in (op for op in shown if op.op == READ and op.result is not None):
        if read.result in written:
            continue
        failed = [w for w in failed_writes if w.args.get("value") == read.result]
        why = (f"; a failed write of it: {describe_op(failed[0])}" if failed else "")
        lines.append(f"  note: no ok or info write wrote {read.result!r}{why}")
    return lines


def describe_op(op: Op) -> str:
    what = (f"write {op.args.get('value')!r}" if op.op == WRITE else
            f"read -> {op.result!r}" if op.op == READ else op.op)
    return f"p{op.process} {what} [{op.invoke:.3f}, {op.complete:.3f}] {op.type}"


# -- the ops of the register workload -----------------------------------------------------

@dataclass(frozen=True)
class _RegisterOp:
    write: bool
    value: str | None      # the value written, or the value the read returned
    invoke: float
    complete: float        # +inf for an indefinite write
    definite: bool         # ok: must be linearized; info: may be
    source: Op


def _is_register_op(op: Op) -> bool:
    return op.op in (READ, WRITE) and isinstance(op.args, dict) and "key" in op.args


def _ops_by_key(history: Iterable[Op]) -> tuple[dict[str, list[Op]], int]:
    """Every register op by key (fail ops and info reads included: dropped later); ignored."""
    by_key: dict[str, list[Op]] = {}
    ignored = 0
    for op in history:
        if _is_register_op(op):
            by_key.setdefault(op.args["key"], []).append(op)
        elif op.op in (READ, WRITE):
            ignored += 1   # a read or write without a key belongs to another workload
    return by_key, ignored


def _single_key(ops: Iterable[Op]) -> list[Op]:
    register = [op for op in ops if _is_register_op(op)]
    keys = {op.args["key"] for op in register}
    if len(keys) > 1:
        raise ValueError(f"ops of one key expected, got keys {sorted(keys, key=str)}: "
                         "check keys one at a time (or use check_linearizable)")
    return register


def _register_ops(ops: Iterable[Op]) -> list[_RegisterOp]:
    register = []
    for op in ops:
        if op.type == FAIL or (op.type == INFO and op.op == READ):
            continue   # it did not happen, or it changed nothing and told nothing
        if op.type not in (OK, INFO):
            raise ValueError(f"op type must be ok, fail or info, not {op.type!r}: {op}")
        write = op.op == WRITE
        register.append(_RegisterOp(
            write=write, value=op.args.get("value") if write else op.result,
            invoke=op.invoke, complete=op.complete if op.type == OK else math.inf,
            definite=op.type == OK, source=op))
    register.sort(key=lambda r: (r.invoke, r.complete))
    return register


def _failed_writes(history: History, key: str) -> list[Op]:
    return [op for op in history.of(WRITE, FAIL) if _is_register_op(op)
            and op.args["key"] == key]


# -- deciding every key within one time budget --------------------------------------------

def _decide_keys(by_key: dict[str, list[Op]], deadline: float,
                 max_ops_per_key: int) -> dict[str, _KeyOutcome]:
    """Search each key; a first pass gives each key a fair share of the time left, a
    second gives the keys that ran out of their share whatever time is left then, so one
    hard key cannot make every other key unknown."""
    outcomes: dict[str, _KeyOutcome] = {}
    searchable: dict[str, list[_RegisterOp]] = {}
    for key in sorted(by_key, key=str):
        register = _register_ops(by_key[key])
        if len(register) > max_ops_per_key:
            outcomes[key] = _KeyOutcome(key, len(register), None, reason=(
                f"{len(register)} ok/info ops, more than max_ops_per_key={max_ops_per_key}"))
        else:
            searchable[key] = register
    timed_out: list[str] = []
    keys = list(searchable)
    for index, key in enumerate(keys):
        share = max(0.0, deadline - time.monotonic()) / (len(keys) - index)
        result, states = _search(searchable[key], min(deadline, time.monotonic() + share))
        outcomes[key] = _KeyOutcome(key, len(searchable[key]), result, states)
        if result is None:
            timed_out.append(key)
    for key in timed_out:
        first = outcomes[key].states
        result, states = (_search(searchable[key], deadline) if time.monotonic() < deadline
                          else (None, first))
        states = max(first, states)
        reason = ("" if result is not None else
                  f"the search reached its bound of {MAX_CACHED_STATES} states"
                  if states > MAX_CACHED_STATES else
                  f"the search ran out of the time budget after exploring {states} states")
        outcomes[key] = _KeyOutcome(key, len(searchable[key]), result, states, reason)
    return {key: outcomes[key] for key in sorted(outcomes, key=str)}


def _shrink_invalid(outcomes: dict[str, _KeyOutcome], by_key: dict[str, list[Op]],
                    deadline: float) -> dict[str, _KeyOutcome]:
    invalid = [key for key, outcome in outcomes.items() if outcome.valid is False]
    shrunk = dict(outcomes)
    for index, key in enumerate(invalid):
        share = max(0.0, deadline - time.monotonic()) / (len(invalid) - index)
        witness, finished = _shrink(_register_ops(by_key[key]), time.monotonic() + share)
        old = outcomes[key]
        shrunk[key] = _KeyOutcome(key, old.ops, False, old.states, old.reason,
                                 [r.source for r in witness], finished)
    return shrunk


# -- the search -----------------------------------------------------------------------------

def _search(ops: Sequence[_RegisterOp], deadline: float) -> tuple[bool | None, int]:
    """WGL over one key's ops: (linearizable?, states cached); None when past `deadline`."""
    written = {op.value for op in ops if op.write}
    if any(not op.write and op.value is not None and op.value not in written for op in ops):
        return False, 0   # a read of a value no write wrote: no order can explain it
    n = len(ops)
    is_write = [op.write for op in ops]
    value = [op.value for op in ops]
    definite = [i for i in range(n) if ops[i].definite]
    maybe = [i for i in range(n) if not ops[i].definite]
    is_definite = [op.definite for op in ops]
    # Acknowledged and indefinite ops get bits in two sets: the acknowledged ones are
    # linearized roughly in invoke order, so their set is kept as (how many of the first
    # ops are all done, the rest shifted down): a small int instead of one of n bits.
    bit = [0] * n
    for rank, i in enumerate(definite):
        bit[i] = 1 << rank
    for rank, i in enumerate(maybe):
        bit[i] = 1 << rank

    # The acknowledged ops as a doubly linked list of call and return events in time
    # order (node 0 is the head); a call at the same instant as a return comes first,
    # because ops that touch are concurrent.
    events = sorted([(ops[i].invoke, 0, i) for i in definite] +
                    [(ops[i].complete, 1, i) for i in definite])
    size = len(events) + 1
    nxt = list(range(1, size)) + [NIL]
    prv = [NIL] + list(range(size - 1))
    node_op = [NIL] + [i for _, _, i in events]
    node_is_call = [False] + [kind == 0 for _, kind, _ in events]
    node_time = [math.inf] + [t for t, _, _ in events]
    call_node = [NIL] * n
    return_node = [NIL] * n
    for node in range(1, size):
        (call_node if node_is_call[node] else return_node)[node_op[node]] = node

    # The indefinite writes in their own list by invoke: they have no return to wait for.
    info_size = len(maybe) + 1
    info_nxt = list(range(1, info_size)) + [NIL]
    info_prv = [NIL] + list(range(info_size - 1))
    info_op = [NIL] + maybe
    info_node = [NIL] * n
    for node in range(1, info_size):
        info_node[info_op[node]] = node

    def unlink(links_next: list[int], links_prev: list[int], node: int) -> None:
        links_next[links_prev[node]] = links_next[node]
        if links_next[node] != NIL:
            links_prev[links_next[node]] = links_prev[node]

    def relink(links_next: list[int], links_prev: list[int], node: int) -> None:
        links_next[links_prev[node]] = node
        if links_next[node] != NIL:
            links_prev[links_next[node]] = node

    def lift(i: int) -> None:
        if ops[i].definite:
            unlink(nxt, prv, call_node[i])
            unlink(nxt, prv, return_node[i])
        else:
            unlink(info_nxt, info_prv, info_node[i])

    def unlift(i: int) -> None:  # exactly the reverse of lift: the search is a stack
        if ops[i].definite:
            relink(nxt, prv, return_node[i])
            relink(nxt, prv, call_node[i])
        else:
            relink(info_nxt, info_prv, info_node[i])

    def options_at(state: Any) -> list[int]:
        """The ops worth placing next, among the pending calls before the first pending
        return (and the indefinite writes invoked by then).

        Two reductions keep this small without losing a linearization. A pending read
        that matches `state` is the only option: it changes nothing and anything may
        follow it, so a linearization that places it later still works with it first.
        An indefinite write is an option only when a pending read returns its value: in
        any linearization, an indefinite write not followed at once by a read of its
        value can be left out (it never happened), so it need only be placed right
        before such a read."""
        writes, wanted = [], set()
        node = nxt[0]
        while node != NIL and node_is_call[node]:
            i = node_op[node]
            if is_write[i]:
                writes.append(i)
            elif value[i] == state:
                return [i]
            else:
                wanted.add(value[i])
            node = nxt[node]
        if wanted:
            horizon = node_time[node] if node != NIL else math.inf
            node = info_nxt[0]
            while node != NIL and ops[info_op[node]].invoke <= horizon:
                if value[info_op[node]] in wanted:
                    writes.append(info_op[node])
                node = info_nxt[node]
        writes.sort(key=lambda i: (value[i] not in wanted, ops[i].complete))
        return writes

    cache: set[tuple[int, int, int, Any]] = set()
    frames: list[tuple[list[int], int, Any, int]] = []
    state: Any = None           # every key starts absent
    done = used = 0             # the acknowledged, and the indefinite, ops linearized
    pending = len(definite)     # acknowledged ops not yet linearized
    options, tried = options_at(state), 0
    steps = -1                  # so the clock is read on the first step too
    while pending:
        steps += 1
        if steps % CLOCK_EVERY == 0 and (time.monotonic() > deadline
                                         or len(cache) > MAX_CACHED_STATES):
            return None, len(cache)
        chosen = NIL
        while tried < len(options):
            i = options[tried]
            tried += 1
            done_after = done | bit[i] if is_definite[i] else done
            all_done = ((done_after + 1) & ~done_after).bit_length() - 1
            entry = (all_done, done_after >> all_done, used if is_definite[i] else used | bit[i],
                     value[i] if is_write[i] else state)
            if entry not in cache:
                cache.add(entry)
                chosen = i
                break
        if chosen == NIL:
            if not frames:
                return False, len(cache)
            options, tried, state, chosen = frames.pop()
            unlift(chosen)
            if is_definite[chosen]:
                done &= ~bit[chosen]
                pending += 1
            else:
                used &= ~bit[chosen]
            continue
        frames.append((options, tried, state, chosen))
        lift(chosen)
        if is_definite[chosen]:
            done |= bit[chosen]
            pending -= 1
        else:
            used |= bit[chosen]
        state = value[chosen] if is_write[chosen] else state
        options, tried = options_at(state), 0
    return True, len(cache)


# -- shrinking a failing key ----------------------------------------------------------------

def _shrink(ops: Sequence[_RegisterOp], deadline: float) -> tuple[list[_RegisterOp], bool]:
    """A small non-linearizable subset of `ops` (which are not linearizable), and whether
    shrinking finished before `deadline`.

    Every candidate subset is closed: it holds every write of each value its reads
    returned. Adding a read to a non-linearizable history, or a write of a value none of
    its reads returned, keeps it non-linearizable; so a closed failing subset proves the
    whole key fails, and failing is monotone over closed subsets (binary search works)."""
    writers: dict[Any, list[int]] = {}
    for i, op in enumerate(ops):
        if op.write:
            writers.setdefault(op.value, []).append(i)

    def closed(chosen: Iterable[int]) -> list[int]:
        keep = set(chosen)
        for i in list(keep):
            if not ops[i].write:
                keep.update(writers.get(ops[i].value, ()))
        return sorted(keep)

    def fails(subset: list[int]) -> bool | None:
        if time.monotonic() > deadline:
            return None   # many quick searches must not add up to a long overrun either
        result, _ = _search([ops[i] for i in subset], deadline)
        return None if result is None else not result

    written = set(writers)
    for op in ops:
        if not op.write and op.value is not None and op.value not in written:
            return [op], True   # a read of a value nobody wrote fails on its own

    current = list(range(len(ops)))
    # The shortest failing prefix (by invoke), then the shortest failing suffix of it.
    for from_end in (False, True):
        low, high = 0, len(current)       # the failing length is in (low, high]
        while high - low > 1:
            middle = (low + high) // 2
            part = current[len(current) - middle:] if from_end else current[:middle]
            verdict = fails(closed(part))
            if verdict is None:
                return [ops[i] for i in current], False
            low, high = (low, middle) if verdict else (middle, high)
        part = current[len(current) - high:] if from_end else current[:high]
        current = closed(part)

    # Then remove chunks, halving their size (delta debugging); reads first, as a read
    # removed may free the writes of its value.
    chunk = max(1, len(current) // 2)
    while True:
        changed = False
        order = [i for i in current if not ops[i].write] + [i for i in current if ops[i].write]
        start = 0
        while start < len(order):
            drop = set(order[start:start + chunk])
            candidate = closed(i for i in current if i not in drop)
            if len(candidate) < len(current):
                verdict = fails(candidate)
                if verdict is None:
                    return [ops[i] for i in current], False
                if verdict:
                    current, changed = candidate, True
                    kept = set(current)
                    order = [i for i in order if i in kept]
                    continue   # the same start now points at the next chunk
            start += chunk
        if chunk == 1 and not changed:
            return [ops[i] for i in current], True
        chunk = max(1, chunk // 2)
