"""The scenario library at full length, written to reports/bench/scenarios.json.

Every `scenarios/tiers-*` file runs with its full `duration` on one tiers lab
(brought up once; each run heals it). Per scenario: the verdict and exit code
(the broken-mode scenario must come out invalid), operations per second, and
availability and p99 latency of the operations started during fault windows
as ratios of the same figures when calm, measured in the same run.

Bounded: each scenario stops itself at its duration (the random nemesis runs
five minutes); about ten minutes in all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from distlab.checkers.expectations import answered, in_fault_window, nearest_rank
from distlab.history import OK, History, Op
from distlab.scenarios.runner import RunOptions, ScenarioRunner, load
from distlab.testbed import Testbed

OUT = Path("reports/bench/scenarios.json")
REPORTS = Path("reports/bench/scenarios")
EXPECTED_EXIT = {"tiers-broken-ack-at-head": 1}


def figures(result) -> dict[str, Any]:
    ops = list(History.read(result.directory / "history.jsonl"))
    windows = [(f.start, f.end) for f in result.summary.faults if f.kind != "migration"]
    split: dict[str, list[Op]] = {"faults": [], "calm": []}
    for op in ops:
        split["faults" if in_fault_window(op.invoke, windows) else "calm"].append(op)
    out: dict[str, Any] = {"operations": len(ops),
                           "operations_per_s": round(len(ops) / result.summary.duration, 1)}
    for name, selected in split.items():
        out[f"availability_{name}"] = (round(sum(map(answered, selected)) / len(selected), 4)
                                       if selected else None)
        latencies = sorted(op.latency for op in selected if op.type == OK)
        out[f"p99_ms_{name}"] = (round(nearest_rank(latencies, 99) * 1000, 1)
                                 if latencies else None)
    if out["availability_faults"] and out["availability_calm"]:
        out["availability_faults_vs_calm"] = round(
            out["availability_faults"] / out["availability_calm"], 3)
    if out["p99_ms_faults"] and out["p99_ms_calm"]:
        out["p99_faults_vs_calm"] = round(out["p99_ms_faults"] / out["p99_ms_calm"], 2)
    return out


def run(names: list[str] | None = None) -> dict[str, Any]:
    testbed = Testbed()
    files = sorted(Path("scenarios").glob("tiers-*.*"))
    if names:
        files = [f for f in files if f.stem in names]
    report: dict[str, Any] = {}
    testbed.up("tiers")
    try:
        for path in files:
            scenario, script = load(path, testbed)
            result = ScenarioRunner(testbed, scenario, script,
                            options=RunOptions(keep=True, reports_root=REPORTS)).run()
            summary = result.summary
            report[scenario.name] = {
                "verdict": summary.verdict, "exit_code": summary.exit_code,
                "as_expected": summary.exit_code == EXPECTED_EXIT.get(scenario.name, 0),
                "checks": {v.name: v.outcome for v in summary.verdicts},
                "faults": len(summary.faults), "report": str(result.directory),
                **figures(result)}
            print(f"{scenario.name}: {summary.verdict} (exit {summary.exit_code}) "
                  f"{report[scenario.name]}")
    finally:
        testbed.down()
    return report


def main(names: list[str] | None = None) -> None:
    report = run(names)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    print(f"written to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:] or None)
