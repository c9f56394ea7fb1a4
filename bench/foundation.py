"""The foundation's figures, measured on this machine in one run, written to
reports/bench/foundation.json:

- `make up` of the default lab with images built: seconds until every machine is
  healthy (median of 3, each from nothing), and a cold node-image build (no cache);
- idle footprint: RSS of each node machine's processes, and Prometheus' own;
- Prometheus' scrape cost: scrape duration and samples per node target;
- the node contract's RPC overhead vs a bare grpcio server (bench.rpc_overhead),
  as ratios measured side by side in the same run.

Bounded: three bring-ups, one build, one short RPC run; it cleans up after itself.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import rpc_overhead
from distlab.commands import Runner
from distlab.runtime.compose import read_images_env
from distlab.testbed import Testbed

ROUNDS = 3
IDLE_SECONDS = 20


def time_up(testbed: Testbed) -> float:
    testbed.clean()
    started = time.perf_counter()
    testbed.up(timeout=240)
    return time.perf_counter() - started


def cold_build_seconds(root: Path) -> float:
    env = read_images_env(root)
    started = time.perf_counter()
    Runner().run(["docker", "build", "--no-cache", "-q", "--build-arg",
                  f"BASE={env['DISTLAB_BASE_IMAGE']}", "-t", "distlab/node:dev",
                  "-f", "images/node/Dockerfile", "."], timeout=900, cwd=str(root),
                 env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return time.perf_counter() - started


def rss_mib(testbed: Testbed, machine: str, process: str) -> float:
    """Summed RSS of the processes named `process`, from /proc (images may lack ps)."""
    script = (f"awk '/^Name:/ {{n=$2}} /^VmRSS:/ {{if (n == \"{process}\") s += $2}} "
              f"END {{print s+0}}' /proc/[0-9]*/status")
    output = testbed.machine(machine).exec(["sh", "-c", script]).output
    return int(output.strip().splitlines()[-1]) / 1024


def scrape_cost(testbed: Testbed) -> dict[str, float]:
    def mean(expr: str) -> float:
        values = [float(r["value"][1]) for r in testbed.prometheus.query(expr)]
        return statistics.fmean(values) if values else float("nan")

    return {
        "scrape_duration_ms_mean": 1000 * mean('avg_over_time(scrape_duration_seconds'
                                               '{job="nodes"}[1m])'),
        "samples_per_target": mean('scrape_samples_scraped{job="nodes"}'),
        "prometheus_rss_mib": rss_mib(testbed, "prometheus-1", "prometheus"),
    }


def run() -> dict[str, Any]:
    testbed = Testbed()
    report: dict[str, Any] = {"benchmark": "foundation", "machine": rpc_overhead.machine_facts()}
    try:
        cold = cold_build_seconds(testbed.root)
        ups = [time_up(testbed) for _ in range(ROUNDS)]
        time.sleep(IDLE_SECONDS)  # let the lab idle and Prometheus collect a minute's window
        nodes = [m.name for m in testbed.machines() if m.info.lab != "common"]
        idle = {name: round(rss_mib(testbed, name, "python"), 1) for name in nodes}
        report["make_up"] = {
            "lab": testbed.catalogue.default,
            "seconds_to_all_healthy": [round(s, 2) for s in ups],
            "median_seconds": round(statistics.median(ups), 2),
            "cold_node_image_build_seconds": round(cold, 1),
        }
        report["idle_footprint"] = {"node_rss_mib": idle,
                                    "node_rss_mib_mean": round(statistics.fmean(idle.values()), 1),
                                    **{k: round(v, 2) for k, v in scrape_cost(testbed).items()}}
    finally:
        testbed.clean()
    report["rpc_overhead"] = rpc_overhead.run(seconds=3)
    return report


def main() -> None:
    report = run()
    out = Path("reports/bench/foundation.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    up, idle, rpc = report["make_up"], report["idle_footprint"], report["rpc_overhead"]["vs_A"]
    print(f"make up (warm): median {up['median_seconds']} s of {up['seconds_to_all_healthy']}; "
          f"cold node image build {up['cold_node_image_build_seconds']} s")
    print(f"idle node RSS: mean {idle['node_rss_mib_mean']} MiB; Prometheus "
          f"{idle['prometheus_rss_mib']} MiB, scrape {idle['scrape_duration_ms_mean']} ms, "
          f"{idle['samples_per_target']} samples/target")
    print(f"node contract vs bare grpcio: p50 x{rpc['p50_ratio']['B']}, "
          f"throughput x{rpc['throughput_ratio']['B']} (with client interceptor: "
          f"p50 x{rpc['p50_ratio']['C']}, throughput x{rpc['throughput_ratio']['C']})")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
