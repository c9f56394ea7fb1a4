"""The cluster's figures, measured in one run on this machine with three test hosts,
written to reports/bench/cluster.json:

- time to a healthy tiers lab: Compose on this machine's engine vs the stack on three
  test hosts (after `distlab cluster create`, whose time is reported too), same run;
- gRPC latency between machines on the same host vs across hosts (the overlay network,
  VXLAN between the test hosts), p50 and p99 of health checks, and their ratio;
- time from a host's loss (`host-stop`) to every machine healthy again, rescheduled.

Bounded: one bring-up of each, 2000 calls per pair, one host stopped; everything it
made (the lab, the swarm, the test hosts) is removed at the end, even on failure.
Test hosts share this machine's two cores: the cross-host figures show the overlay's
cost (encapsulation, an extra network namespace hop), not a real network's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import rpc_overhead
from distlab.cluster import cluster as steps
from distlab.cluster import testhosts
from distlab.cluster.hosts import parse_hosts
from distlab.runtime.compose import ComposeRuntime
from distlab.runtime.swarm import SwarmRuntime
from distlab.testbed import Testbed, choose_runtime, project_root

CALLS = 2000
FRONT = "host-1"  # the data master and the switch, pinned (docs/cluster.md)

# Run inside a machine: CALLS health checks to ADDRESS, then p50 and p99 in ms.
PROBE = """
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
stub = health_pb2_grpc.HealthStub(channel)
stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
samples = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    samples.append((time.perf_counter() - started) * 1000)
samples.sort()
print(samples[len(samples) // 2], samples[int(len(samples) * 0.99)])
"""


def healthy_seconds(testbed: Testbed, **up: Any) -> float:
    started = time.perf_counter()
    testbed.up("tiers", timeout=300, **up)
    return time.perf_counter() - started


def latency(testbed: Testbed, source: str, target: str) -> dict[str, float]:
    address = testbed.machine(target).info.addresses[0]
    output = testbed.machine(source).exec(
        ["python", "-c", PROBE, f"{address}:50051", str(CALLS)], timeout=300).output
    p50, p99 = (float(v) for v in output.split()[-2:])
    return {"from": source, "to": target, "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}


def pairs(testbed: Testbed) -> tuple[tuple[str, str], tuple[str, str]]:
    """(two machines on one host, two machines on different hosts), apps and data."""
    machines = [m.info for m in testbed.machines() if m.info.role in ("app", "data")]
    same = next((a.name, b.name) for a in machines for b in machines
                if a.name != b.name and a.host == b.host)
    across = next((a.name, b.name) for a in machines for b in machines if a.host != b.host)
    return same, across


def host_loss_seconds(testbed: Testbed) -> dict[str, Any]:
    """Stop a host that runs lab machines (not the front host); seconds until every
    machine of the lab runs healthy again, wherever Swarm put it."""
    lab = testbed.catalogue.lab("tiers")
    victim = next(m.info.host for m in testbed.machines() if m.info.host not in ("", FRONT))
    moved = sorted(m.name for m in testbed.machines() if m.info.host == victim)
    started = time.perf_counter()
    testbed.nemesis.host_stop(victim)
    stopped = time.perf_counter() - started
    time.sleep(1)
    testbed.wait_healthy(lab, timeout=300)
    # wait_healthy sees the machines that exist: also wait for the moved ones to be back
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        infos = {m.name: m.info for m in testbed.machines()}
        if all(infos.get(n) and infos[n].host != victim and infos[n].health == "healthy"
               for n in moved):
            break
        time.sleep(0.5)
    total = time.perf_counter() - started
    testbed.nemesis.heal()
    return {"host": victim, "machines_moved": moved, "engine_stop_seconds": round(stopped, 1),
            "to_all_healthy_seconds": round(total, 1)}


def run() -> dict[str, Any]:
    root = project_root()
    report: dict[str, Any] = {"benchmark": "cluster", "machine": rpc_overhead.machine_facts()}
    compose = Testbed(ComposeRuntime(root), root=root)
    compose.clean()
    report["compose_up_seconds"] = round(healthy_seconds(compose), 1)
    compose.clean()
    testhosts.remove(root)
    try:
        specs = testhosts.make(root, 3)
        started = time.perf_counter()
        steps.create(root, parse_hosts(specs), identity=testhosts.key_path(root))
        report["cluster_create_seconds"] = round(time.perf_counter() - started, 1)
        swarm = Testbed(SwarmRuntime(root), root=root)
        choose_runtime(root, "swarm")
        report["swarm_up_seconds"] = round(healthy_seconds(
            swarm, placement={"data-master": FRONT, "switch": FRONT}), 1)
        report["swarm_vs_compose_up"] = round(report["swarm_up_seconds"]
                                              / report["compose_up_seconds"], 2)
        same, across = pairs(swarm)
        report["rpc_same_host"] = latency(swarm, *same)
        report["rpc_across_hosts"] = latency(swarm, *across)
        report["rpc_across_vs_same"] = {
            q: round(report["rpc_across_hosts"][q] / report["rpc_same_host"][q], 2)
            for q in ("p50_ms", "p99_ms")}
        report["host_loss"] = host_loss_seconds(swarm)
        swarm.down()
    finally:
        choose_runtime(root, "compose")
        try:
            steps.destroy(root)
        except Exception as exc:  # noqa: BLE001 - a bench reports and still cleans up
            report["destroy_problem"] = str(exc)
        testhosts.remove(root)
    return report


def main(argv: list[str] | None = None) -> None:
    del argv
    report = run()
    out = Path("reports/bench/cluster.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
