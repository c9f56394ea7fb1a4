"""Chord in containers, for `make bench` (added to reports/bench/chord.json as "containers"):

for N = 16, 32, 64, 128 peers: time from healthy to one correct ring, and then
- lookups of random keys from random peers: mean and p99 hops, and the ratio of the
  mean to the analysis' ½·log2 N; lookup latency p50/p99 as the host saw it;
- what an idle peer costs: CPU and resident memory per container, and the engine's
  CPU (bench.idle_cost);
- (at CHURN_PEERS) time from killing 25 % of the peers at once to every stored key
  readable again, and time for a new peer to own keys (scale up by one, until its
  Chord.State reports owned keys).
Past 64 peers the lab grows GROWTH_STEP peers at a time (`growth_steps`), as one would
grow a ring on a laptop, and from PATIENT_PROBE_PEERS on the peers' Docker health check
runs every 30 s instead of 10 (DISTLAB_CHORD_PROBE_INTERVAL: each probe is an exec the
host pays ~30 ms for; docs/chord.md). A size that does not come up or form a ring within
its bound is reported as such, and the next size runs.
Bounded: a fixed number of lookups and keys, and a cap on every wait.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from typing import Any

import grpc

from bench import idle_cost
from distlab.chord.ringmap import check_ring, fetch_states
from distlab.errors import DistlabError
from distlab.testbed import Testbed
from nodes.rpc import chord_pb2, chord_pb2_grpc

SIZES = (16, 32, 64, 128)
CHURN_PEERS = 32
UP_SECONDS = 600
#: Peers started by one `compose up` past the first two steps (see growth_steps).
GROWTH_STEP = 32
IDLE_WINDOW_SECONDS = 30
LOOKUPS = 300
KEYS = 100
WAIT_SECONDS = 300
PATIENT_PROBE_PEERS = 100
PATIENT_PROBE = "30s"


def wait_ring(testbed: Testbed, size: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < WAIT_SECONDS:
        states, silent = fetch_states(testbed.machines())
        check = check_ring(states)
        if check.ok and not silent and len(check.ordered) == size:
            return time.monotonic() - started
        time.sleep(1)
    raise RuntimeError(f"no single ring of {size} within {WAIT_SECONDS} s")


def peers(testbed: Testbed) -> list:
    return [m for m in testbed.machines() if m.info.role == "chord" and m.info.state == "running"]


def lookups(testbed: Testbed, rng: random.Random) -> dict[str, Any]:
    stubs = [chord_pb2_grpc.ChordStub(m.channel()) for m in peers(testbed)]
    hops, latencies = [], []
    for n in range(LOOKUPS):
        stub = rng.choice(stubs)
        started = time.perf_counter()
        reply = stub.Lookup(chord_pb2.LookupRequest(key=f"lookup-{n}-{rng.random()}"), timeout=10)
        latencies.append(time.perf_counter() - started)
        hops.append(reply.hops)
    hops.sort()
    latencies.sort()
    return {"hops_mean": round(statistics.fmean(hops), 3),
            "hops_p99": hops[int(0.99 * (len(hops) - 1))],
            "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "latency_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2)}


def all_readable(testbed: Testbed, keys: list[str]) -> bool:
    stub = chord_pb2_grpc.ChordStub(peers(testbed)[0].channel())
    for key in keys:
        try:
            stub.Get(chord_pb2.GetRequest(key=key), timeout=5)
        except grpc.RpcError:
            return False
    return True


def churn(testbed: Testbed, size: int, rng: random.Random) -> dict[str, Any]:
    stub = chord_pb2_grpc.ChordStub(peers(testbed)[0].channel())
    keys = [f"bench-{n}" for n in range(KEYS)]
    for key in keys:
        stub.Put(chord_pb2.PutRequest(key=key, value=key.encode()), timeout=10)
    victims = rng.sample([m.name for m in peers(testbed)], size // 4)
    killed = time.monotonic()
    for name in victims:
        testbed.nemesis.kill(name)
    while not all_readable(testbed, keys):
        if time.monotonic() - killed > WAIT_SECONDS:
            raise RuntimeError("keys not readable again after killing 25 % of the peers")
        time.sleep(0.5)
    readable = time.monotonic() - killed
    testbed.nemesis.heal()
    wait_ring(testbed, size)
    before = {m.name for m in peers(testbed)}
    added = time.monotonic()
    testbed.runtime.up(["chord"], {"chord": size + 1})
    newcomer = None
    while time.monotonic() - added < WAIT_SECONDS:
        fresh = [m for m in peers(testbed) if m.name not in before]
        if fresh:
            newcomer = fresh[0]
            try:
                state = chord_pb2_grpc.ChordStub(newcomer.channel()).State(
                    chord_pb2.StateRequest(), timeout=3)
                if state.keys > 0:
                    break
            except grpc.RpcError:
                pass
        time.sleep(0.5)
    return {"peers": size, "killed": len(victims),
            "kill_25pct_to_all_keys_readable_s": round(readable, 2),
            "new_peer_owns_keys_after_s": round(time.monotonic() - added, 2),
            "new_peer": newcomer.name if newcomer else None}


def growth_steps(size: int) -> list[int]:
    """The scales a lab of `size` peers is brought up through: at once up to twice
    GROWTH_STEP, else GROWTH_STEP more at a time (each step joins a ring that exists, and
    no single `compose up` has to start more than GROWTH_STEP containers on 2 cores)."""
    if size <= 2 * GROWTH_STEP:
        return [size]
    return [*range(2 * GROWTH_STEP, size, GROWTH_STEP), size]


def one_size(testbed: Testbed, size: int, rng: random.Random) -> dict[str, Any]:
    testbed.clean()
    started = time.monotonic()
    steps = growth_steps(size)
    environment = ({"DISTLAB_CHORD_PROBE_INTERVAL": PATIENT_PROBE}
                   if size >= PATIENT_PROBE_PEERS else {})
    row: dict[str, Any] = {"growth_steps": steps, "probe_interval": environment.get(
        "DISTLAB_CHORD_PROBE_INTERVAL", "compose.yaml's default")}
    try:
        for step in steps:
            testbed.up("chord", [f"chord={step}"], timeout=UP_SECONDS, environment=environment)
    except DistlabError as exc:
        return {**row, "came_up": False, "problem": str(exc)[:300],
                "seconds_trying": round(time.monotonic() - started, 1)}
    row.update(came_up=True, seconds_to_healthy=round(time.monotonic() - started, 1))
    try:
        row["seconds_to_one_ring_after_healthy"] = round(wait_ring(testbed, size), 1)
    except RuntimeError as exc:
        row["problem"] = str(exc)
        return row
    row.update(lookups(testbed, rng))
    row["ratio_mean_to_half_log2_n"] = round(row["hops_mean"] / (0.5 * math.log2(size)), 3)
    cost = idle_cost.sample(testbed, IDLE_WINDOW_SECONDS)
    peers_only = [c for name, c in cost.pop("per_container").items() if name.startswith("chord")]
    row["idle_cores_per_peer"] = round(statistics.fmean(c["cores"] for c in peers_only), 4)
    row["idle_rss_mib_per_peer"] = round(statistics.fmean(c["rss_mib"] for c in peers_only), 1)
    row["idle_engine_cores"] = cost["engine_cores"]
    row["idle_host_busy_cores"] = cost["host_busy_cores"]  # the kernel's share included
    return row


def run() -> dict[str, Any]:
    testbed = Testbed()
    rng = random.Random(2001)
    figures: dict[str, Any] = {"sizes": {}}
    try:
        for size in SIZES:
            figures["sizes"][f"n_{size}"] = one_size(testbed, size, rng)
        testbed.clean()
        testbed.up("chord", [f"chord={CHURN_PEERS}"], timeout=UP_SECONDS)
        wait_ring(testbed, CHURN_PEERS)
        figures["churn"] = churn(testbed, CHURN_PEERS, rng)
    finally:
        testbed.clean()
    return figures
