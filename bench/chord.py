"""Chord's figures from the simulator, for `make bench` (reports/bench/chord.json).

`simulate(report)` adds `report["simulator"]`: the SIGCOMM 2001 Fig. 10 table
(lookup path length for N = 8 ... 4096) and the ToN 2003 Table II table
(lookups right after failing 0-50 % of 1024 nodes, before stabilization),
computed by the peers' own protocol code on a simulated network, each with
its run time and a ratio against its baseline measured in the same run: the
analysis' ½·log2 N for path length, the no-failure row for the failure
table. It runs in this process and touches nothing but `report`; the
container measurements are added to the same report by the lab bench.

Usage: python -m bench.chord [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.rpc_overhead import machine_facts
from distlab.chord import sim

DEFAULT_OUT = Path("reports/bench/chord.json")
PATH_SIZES = tuple(1 << k for k in range(3, 13))  # 8 ... 4096
FAILURE_NODES = 1024
LOOKUPS = 5000
SEED = 2001


def simulate(report: dict[str, Any]) -> None:
    started = time.perf_counter()
    paths = sim.path_lengths(PATH_SIZES, lookups=LOOKUPS, seed=SEED)
    paths_seconds = time.perf_counter() - started
    for row in paths:
        row["ratio_to_half_log2_n"] = round(row["fingers"]["mean"] / row["half_log2_n"], 3)

    started = time.perf_counter()
    failures = sim.lookups_after_failures(FAILURE_NODES, sim.FAILURE_FRACTIONS,
                                          lookups=LOOKUPS, seed=SEED)
    failures_seconds = time.perf_counter() - started
    baseline = failures[0]["path_length"]["mean"]
    for row in failures:
        row["path_ratio_to_no_failures"] = round(row["path_length"]["mean"] / baseline, 3)

    lookups_done = LOOKUPS * (2 * len(PATH_SIZES) + len(sim.FAILURE_FRACTIONS))
    report["simulator"] = {
        "lookups_per_row": LOOKUPS,
        "seed": SEED,
        "path_lengths": paths,
        "failures": failures,
        "seconds": {"path_lengths": round(paths_seconds, 2),
                    "failures": round(failures_seconds, 2)},
        "simulated_lookups_per_second": round(lookups_done / (paths_seconds + failures_seconds)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chord", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-containers", dest="containers", action="store_false",
                        help="only the simulator (no Docker needed)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"benchmark": "chord", "machine": machine_facts()}
    simulate(report)
    if args.containers:
        from bench import chord_lab

        report["containers"] = chord_lab.run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    result = report["simulator"]
    largest = result["path_lengths"][-1]
    worst = result["failures"][-1]
    print(f"path length at N={largest['nodes']}: {largest['fingers']['mean']} hops "
          f"(x{largest['ratio_to_half_log2_n']} of ½·log2 N) in "
          f"{result['seconds']['path_lengths']} s")
    print(f"after failing {worst['fraction_failed']:.0%} of {worst['nodes']}: "
          f"{worst['failed_fraction']:.2%} lookups failed, path x"
          f"{worst['path_ratio_to_no_failures']}, {worst['timeouts']['mean']} timeouts per "
          f"lookup, in {result['seconds']['failures']} s")
    for size, row in report.get("containers", {}).get("lookups", {}).items():
        print(f"containers {size}: {row['hops_mean']} hops (x{row['ratio_mean_to_half_log2_n']} "
              f"of ½·log2 N), p99 {row['hops_p99']}, lookup p50 {row['latency_p50_ms']} ms")
    if "containers" in report:
        print(f"churn: {report['containers']['churn']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
