"""The serverless lab's figures, for `make bench` (reports/bench/serverless.json and
reports/bench/serverless-keepalive.png).

The lab is brought up for real (`distlab up serverless`), and every call goes from this
host to the runner over gRPC, as `distlab fn invoke` does. Measured in the same run:

- latency p50/p99 of one call of a function that returns its event, by the path its
  instance took: warm (an idle instance), paused (unfrozen), prewarm (a pooled container
  specialized), cold (a container created: the lab brought up again without a pool); and,
  as the baseline, `docker run --rm` of the same image running the same function once
  (what one does without a runner). Warm overhead = call latency - the function's own
  run time;
- throughput of a CPU-bound function (fib) with 1, 2 and 4 instances at most;
- the keep-alive trade-off (Shahrad et al., "Serverless in the Wild", ATC 2020): one
  bursty trace of calls, seeded, replayed with keep-alive 0 s, 10 s and 60 s: the
  fraction of calls that started an instance (cold or prewarm) against the idle
  instance-seconds kept (idle or paused, sampled from the runner's List every 0.5 s).

Usage: python -m bench.serverless [--samples 20] [--trace-seconds 60] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.load import ratio
from bench.rpc_overhead import machine_facts
from distlab.runtime.compose import read_images_env
from distlab.serverless.client import FunctionsClient, runner_channel
from distlab.testbed import Testbed

DEFAULT_OUT = Path("reports/bench/serverless.json")
PLOT = Path("reports/bench/serverless-keepalive.png")
NOOP = "def handle(event, context):\n    return event\n"
FIB = ("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
       "def handle(event, context):\n    return fib(event)\n")
FIB_N = 26  # about 0.1 s at half a core: the work, not the platform, dominates
THROUGHPUT_CALLS = 48
KEEP_ALIVES = (0.0, 10.0, 60.0)
PAUSE_AFTER = 1.0  # the runner pauses an idle instance after this (DISTLAB_FN_PAUSE_AFTER)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(p99 * 1000, 2), "samples": len(ordered)}


def timed_call(fn: FunctionsClient, name: str, data: str = "1") -> tuple[float, Any]:
    started = time.perf_counter()
    reply = fn.invoke(name, data)
    return time.perf_counter() - started, reply


def pool_ready(testbed: Testbed) -> bool:
    with testbed.machine("runner-1").control() as control:
        return control.status().state.get("pool", "0") != "0"


def wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the lab did not get there in time")
        time.sleep(0.1)


def up(testbed: Testbed, prewarm: int) -> FunctionsClient:
    testbed.up("serverless", [], timeout=240, environment={
        "DISTLAB_FN_PREWARM": str(prewarm), "DISTLAB_FN_PAUSE_AFTER": str(PAUSE_AFTER)})
    return FunctionsClient(runner_channel(testbed))


def start_paths(testbed: Testbed, samples: int) -> dict[str, Any]:
    """Latency by path: warm, paused and prewarm with a pool of one; cold without one."""
    by_path: dict[str, list[float]] = {"warm": [], "paused": [], "prewarm": [], "cold": []}
    run_ms: list[float] = []
    overhead: list[float] = []
    fn = up(testbed, prewarm=1)
    for index in range(samples):  # a new function each time: its first call is prewarm
        name = f"bench-pre-{index}"
        fn.deploy(name, NOOP, keep_alive=600)
        wait_for(lambda: pool_ready(testbed))
        seconds, reply = timed_call(fn, name)
        by_path.setdefault(reply.path, []).append(seconds)
        fn.remove(name)
    fn.deploy("bench-warm", NOOP, keep_alive=600)
    fn.invoke("bench-warm", "1")
    for _ in range(samples * 5):
        seconds, reply = timed_call(fn, "bench-warm")
        by_path[reply.path].append(seconds)
        run_ms.append(reply.run_seconds * 1000)
        overhead.append(seconds - reply.run_seconds)
    for _ in range(samples):
        time.sleep(PAUSE_AFTER + 1.2)  # idle past pause_after: the next call unfreezes it
        seconds, reply = timed_call(fn, "bench-warm")
        by_path[reply.path].append(seconds)
    testbed.down()
    fn = up(testbed, prewarm=0)
    for index in range(samples):
        name = f"bench-cold-{index}"
        fn.deploy(name, NOOP, keep_alive=600)
        seconds, reply = timed_call(fn, name)
        by_path.setdefault(reply.path, []).append(seconds)
        fn.remove(name)
    image = read_images_env(testbed.root).get("DISTLAB_NODE_IMAGE", "distlab/node:dev")
    docker_run = [docker_run_once(image) for _ in range(samples)]
    figures = {path: percentiles(values) for path, values in by_path.items() if values}
    figures["docker_run"] = percentiles(docker_run)
    figures["warm_overhead"] = percentiles(overhead)
    figures["warm_run_ms_p50"] = round(statistics.median(run_ms), 3)
    base = figures["docker_run"]["p50_ms"]
    figures["p50_vs_docker_run"] = {path: ratio(figures[path]["p50_ms"], base)
                                    for path in ("warm", "paused", "prewarm", "cold")
                                    if path in figures}
    return figures


def docker_run_once(image: str) -> float:
    """One request the way one does without a runner: a container per call."""
    code = NOOP + "import json; print(json.dumps(handle(1, None)))"
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--memory", "128m", "--cpus", "0.5",
                    "--network", "none", "--read-only", "--user", "10001", image,
                    "python", "-c", code], check=True, capture_output=True, timeout=60)
    return time.perf_counter() - started


def throughput(fn: FunctionsClient) -> dict[str, Any]:
    """Calls per second of fib(FIB_N) with at most 1, 2, 4 instances, 8 callers."""
    rows = {}
    for instances in (1, 2, 4):
        name = f"bench-fib-{instances}"
        fn.deploy(name, FIB, max_instances=instances, keep_alive=600, timeout=30)
        with ThreadPoolExecutor(8) as pool:  # warm them all first
            list(pool.map(fn.invoke, [name] * instances * 2, [str(FIB_N)] * instances * 2))
            started = time.perf_counter()
            replies = list(pool.map(fn.invoke, [name] * THROUGHPUT_CALLS,
                                    [str(FIB_N)] * THROUGHPUT_CALLS))
            seconds = time.perf_counter() - started
        assert all(r.ok for r in replies)
        rows[str(instances)] = {"calls_per_second": round(THROUGHPUT_CALLS / seconds, 2),
                                "instances_used": len({r.instance for r in replies})}
        fn.remove(name)
    one = rows["1"]["calls_per_second"]
    for row in rows.values():
        row["speedup_vs_1"] = ratio(row["calls_per_second"], one)
    return rows


def bursty_trace(seconds: float, seed: int) -> list[float]:
    """Call times: bursts of 3-8 calls 0.2 s apart, with idle gaps of 2-25 s between."""
    rng = random.Random(seed)
    times, now = [], 0.0
    while now < seconds:
        for _ in range(rng.randint(3, 8)):
            times.append(now)
            now += 0.2
        now += rng.choice((2.0, 4.0, 8.0, 15.0, 25.0))
    return [t for t in times if t < seconds]


def keep_alive_tradeoff(fn: FunctionsClient, trace: list[float], seconds: float
                        ) -> list[dict[str, Any]]:
    rows = []
    for keep_alive in KEEP_ALIVES:
        name = f"bench-ka-{int(keep_alive)}"
        fn.deploy(name, NOOP, keep_alive=keep_alive, max_instances=8)
        idle_seconds = [0.0]
        done = threading.Event()
        sampler = threading.Thread(target=sample_idle, args=(fn, name, done, idle_seconds),
                                   daemon=True)
        sampler.start()
        started = time.monotonic()
        paths: list[str] = []
        with ThreadPoolExecutor(8) as pool:
            futures = []
            for at in trace:
                time.sleep(max(0.0, started + at - time.monotonic()))
                futures.append(pool.submit(fn.invoke, name, "1"))
            paths = [f.result().path for f in futures]
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        done.set()
        sampler.join()
        not_warm = sum(p != "warm" for p in paths)
        cold = sum(p in ("cold", "prewarm") for p in paths)
        rows.append({"keep_alive_s": keep_alive, "calls": len(paths),
                     "cold_fraction": round(cold / len(paths), 3),
                     "not_warm_fraction": round(not_warm / len(paths), 3),
                     "paths": {p: paths.count(p) for p in sorted(set(paths))},
                     "idle_instance_seconds": round(idle_seconds[0], 1)})
        fn.remove(name)
    return rows


def sample_idle(fn: FunctionsClient, name: str, done: threading.Event,
                total: list[float]) -> None:
    """Add up idle (and paused) instance-seconds of `name` every 0.5 s until `done`."""
    while not done.wait(0.5):
        info = {f.function.name: f for f in fn.list()}.get(name)
        if info is not None:
            total[0] += 0.5 * (info.instances.get("idle", 0) + info.instances.get("paused", 0))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    xs = [r["idle_instance_seconds"] for r in rows]
    ys = [r["cold_fraction"] for r in rows]
    axis.plot(xs, ys, marker="o")
    for row, x, y in zip(rows, xs, ys, strict=True):
        axis.annotate(f"keep-alive {row['keep_alive_s']:g} s", (x, y),
                      textcoords="offset points", xytext=(6, 6), fontsize=8)
    axis.set_xlabel("idle instance-seconds kept")
    axis.set_ylabel("fraction of calls that started cold")
    axis.set_title("The keep-alive trade-off, one bursty trace")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.serverless", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--trace-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    testbed = Testbed()
    testbed.clean()
    try:
        paths = start_paths(testbed, args.samples)
        fn = FunctionsClient(runner_channel(testbed))  # the lab without a pool, still up
        rates = throughput(fn)
        trace = bursty_trace(args.trace_seconds, seed=7)
        tradeoff = keep_alive_tradeoff(fn, trace, args.trace_seconds)
    finally:
        testbed.clean()
    result = {"name": "serverless", "machine": machine_facts(), "start_paths": paths,
              "throughput_fib": {"n": FIB_N, "calls": THROUGHPUT_CALLS, "by_max_instances": rates},
              "keep_alive": {"trace_seconds": args.trace_seconds, "rows": tradeoff}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(tradeoff, PLOT)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
