"""Availability and latency expectations: what clients saw, during faults and when calm.

A scenario states what it expects of a lab ("availability during faults >=
99%", "p99 latency when calm <= 500 ms"); these checkers measure it from the
History and the fault windows the scenario recorded, and answer with a
Verdict whose name is the expectation itself (reports use it as the JUnit
test case name). Pure: reads the history and the windows it is given.

An op belongs to a fault window when it was INVOKED inside one, or within
`grace` seconds after one ended (a cluster needs a moment to recover);
"calm" ops are all the others. Windows are (start, end) in history seconds,
end None while the fault is still on (until the end of the run).

Availability counts what the system ANSWERED: an ok op, or a failed one it
refused for a reason of the request's own (insufficient funds, an unknown
account: `REFUSALS`). Unavailable are the indefinite ops and the failures
that say the system could not serve (UNAVAILABLE, DEADLINE_EXCEEDED,
ABORTED after contention, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from distlab.checkers import Verdict
from distlab.history import FAIL, INFO, OK, History, Op

Window = tuple[float, float | None]
WINDOWS = ("faults", "calm", "all")
PHRASES = {"faults": "during faults", "calm": "when calm", "all": "overall"}
EXAMPLE_LIMIT = 5
# Status codes of a definite answer about the request itself: the service was there to say it.
REFUSALS = frozenset({"FAILED_PRECONDITION", "NOT_FOUND", "INVALID_ARGUMENT",
                      "ALREADY_EXISTS", "OUT_OF_RANGE"})


def answered(op: Op) -> bool:
    """The system served this op: it succeeded, or was refused on the request's merits."""
    return op.type == OK or (op.type == FAIL and op.error.split(":", 1)[0] in REFUSALS)


def in_fault_window(t: float, windows: Iterable[Window], grace: float = 0.0) -> bool:
    """Whether instant `t` is inside a window, or within `grace` seconds after one ended."""
    return any(start <= t and (end is None or t <= end + grace) for start, end in windows)


def check_availability(history: History, windows: Sequence[Window], *, at_least: float,
                       window: str = "all", ops: list[str] | None = None, grace: float = 0.0,
                       name: str | None = None) -> Verdict:
    """Answered / all of the selected ops must be at least `at_least` (0..1); see `answered`."""
    if not 0 <= at_least <= 1:
        raise ValueError(f"at_least is a fraction within 0..1 (0.99 for 99%), not {at_least!r}")
    selected = _select(history, windows, window, ops, grace)
    name = name or _name("availability", window, ops, f">= {_percent(at_least)}")
    counts = {kind: sum(op.type == kind for op in selected) for kind in (OK, FAIL, INFO)}
    figures = {"selected": len(selected), **counts, "at_least": at_least,
               "window": window, "grace": grace, "ops": _op_names(selected, ops)}
    if not selected:
        return Verdict(name, None, [f"no operation{_filter_phrase(ops)} was invoked "
                                    f"{PHRASES[window]}: nothing to measure"], figures)
    served = sum(answered(op) for op in selected)
    figures["refused"] = served - counts[OK]
    availability = served / len(selected)
    figures["availability"] = availability
    if availability >= at_least:
        return Verdict(name, True, [], figures)
    failed = [op for op in selected if not answered(op)]
    problems = [f"availability {PHRASES[window]} was {_percent(availability)} "
                f"({served} of {len(selected)} answered: {counts[OK]} ok, "
                f"{figures['refused']} refused; {counts[FAIL] - figures['refused']} failed, "
                f"{counts[INFO]} indefinite), below {_percent(at_least)}"]
    problems += [f"  e.g. {_describe(op)}" for op in failed[:EXAMPLE_LIMIT]]
    return Verdict(name, False, problems, figures)


def check_latency(history: History, windows: Sequence[Window], *, at_most: float,
                  percentile: float = 99.0, window: str = "calm", ops: list[str] | None = None,
                  grace: float = 0.0, name: str | None = None) -> Verdict:
    """The `percentile` (nearest rank) of the selected ok ops' latencies must be at most
    `at_most` seconds. Failed and indefinite ops have no latency to speak of: availability
    judges them."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be within (0, 100], not {percentile!r}")
    if not at_most >= 0:
        raise ValueError(f"at_most is a latency in seconds (>= 0), not {at_most!r}")
    selected = [op for op in _select(history, windows, window, ops, grace) if op.type == OK]
    label = f"p{percentile:g}"
    name = name or _name(f"{label} latency", window, ops, f"<= {_duration(at_most)}")
    figures = {"selected_ok": len(selected), "percentile": percentile, "at_most": at_most,
               "window": window, "grace": grace, "ops": _op_names(selected, ops)}
    if not selected:
        return Verdict(name, None, [f"no ok operation{_filter_phrase(ops)} was invoked "
                                    f"{PHRASES[window]}: no latency to measure"], figures)
    latencies = sorted(op.latency for op in selected)
    measured = nearest_rank(latencies, percentile)
    figures.update(latency=measured, median=latencies[(len(latencies) - 1) // 2],
                   max=latencies[-1])
    if measured <= at_most:
        return Verdict(name, True, [], figures)
    slow = sorted(selected, key=lambda op: op.latency, reverse=True)
    problems = [f"{label} latency {PHRASES[window]} was {_duration(measured)} "
                f"(over {len(selected)} ok ops), above {_duration(at_most)}"]
    problems += [f"  e.g. {_describe(op)}" for op in slow[:EXAMPLE_LIMIT]]
    return Verdict(name, False, problems, figures)


def _select(history: Iterable[Op], windows: Sequence[Window], window: str,
            ops: list[str] | None, grace: float) -> list[Op]:
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    if not grace >= 0:
        raise ValueError(f"grace is seconds after a fault window (>= 0), not {grace!r}")
    for start, end in windows:
        if end is not None and end < start:
            raise ValueError(f"fault window ({start}, {end}) ends before it starts")
    wanted = None if ops is None else set(ops)
    chosen = [op for op in history if wanted is None or op.op in wanted]
    if window == "all":
        return chosen
    during = window == "faults"
    return [op for op in chosen if in_fault_window(op.invoke, windows, grace) == during]


def _name(measure: str, window: str, ops: list[str] | None, bound: str) -> str:
    which = f" of {', '.join(ops)}" if ops else ""
    return f"{measure}{which} {PHRASES[window]} {bound}"


def _filter_phrase(ops: list[str] | None) -> str:
    return f" ({', '.join(ops)})" if ops else ""


def _op_names(selected: Iterable[Op], ops: list[str] | None) -> list[str]:
    return list(ops) if ops is not None else sorted({op.op for op in selected})


def nearest_rank(ordered: Sequence[float], percentile: float) -> float:
    """The `percentile` of sorted, non-empty values by the nearest-rank method."""
    return ordered[max(1, math.ceil(percentile / 100 * len(ordered))) - 1]


def _percent(fraction: float) -> str:
    # Three decimals at most, so 99.95% is not shown as a rounded 100%.
    return f"{fraction * 100:.3f}".rstrip("0").rstrip(".") + "%"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.4g} ms" if seconds < 1 else f"{seconds:.4g} s"


def _describe(op: Op) -> str:
    base = (f"p{op.process} {op.op} at t={op.invoke:.3f}s took "
            f"{_duration(op.latency)}: {op.type}")
    return f"{base} ({op.error})" if op.error else base
