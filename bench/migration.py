"""Live migration in containers (reports/bench/migration.json and migration.png): Clark's
experiment at lab scale, every strategy in one run, on the migration lab.

For each guest dirty rate, vm-1 (a 256 MiB image, a hot working set of 2048 pages) is
started again on a host with that rate, and moved by each strategy to the next host
while a client calls Get on it in a closed loop through vm-switch. Recorded per move:
the vm's downtime (pause to the destination's commit), the client's longest gap between
two answers (client-observed downtime; its baseline is the same client's longest gap
over 2 s without a migration, in the same run, and the ratio is beside it), total time,
bytes sent / image, rounds and pre-copy's stop reason. The link is the vm's rate limit
(VM_MAX_RATE_MIB, 64 MiB/s: pre-copy's first round at 32); the fastest guest dirties
faster than that. For pre-copy at the middle rate, Clark's per-round bars.

The kv guest beside it (kv-1, the kv role's store, moved by dirty keys): KV_KEYS keys
of KV_VALUE_BYTES are put into it, then for each client write rate it is moved by
stop-and-copy and by pre-copy while writers put to a hot set of keys at that rate and a
client reads through kv-switch; the same figures per move.

Anchor, from the literature rather than this run: container migration with CRIU is
reported at about 6 s of downtime.

Usage: python -m bench.migration [--out PATH] [--image-mib N] [--only vm|kv]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench.rpc_overhead import machine_facts
from distlab.migration.client import MIB, Hypervisors
from distlab.testbed import Testbed
from nodes.rpc import kv_pb2, kv_pb2_grpc, vm_pb2, vm_pb2_grpc

DEFAULT_OUT = Path("reports/bench/migration.json")
STRATEGIES = ("stop-and-copy", "pre-copy", "post-copy")
DIRTY_RATES = (0, 2000, 8000, 32000)  # guest page writes per second
BARS_AT = 8000  # the pre-copy run whose per-round bars are kept
LINK_MIB = 64.0  # compose.yaml's VM_MAX_RATE_MIB for the lab
CRIU_ANCHOR_SECONDS = 6.0
KV_KEYS = 20_000
KV_VALUE_BYTES = 512
KV_HOT_KEYS = 2_000
KV_WRITE_RATES = (0, 200, 500)  # client puts per second during the move (2 cores: ~500 at most)
KV_WRITERS = 4


class GapClient:
    """`call()` (one client call) in a closed loop: the longest time between two answers.
    A call that raises grpc.RpcError is counted as an error (its gap goes on)."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.call = call
        self.longest = 0.0
        self.calls = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def through(cls, channel: grpc.Channel) -> GapClient:
        """Get on the vm at the other end of `channel` (here: vm-switch)."""
        stub = vm_pb2_grpc.VMStub(channel)
        return cls(lambda: stub.Get(vm_pb2.GetRequest(key=b"k"), timeout=60))

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                self.call()
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")
                time.sleep(0.01)
                continue
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now
            self.calls += 1

    def __enter__(self) -> GapClient:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(90)


def restart_vm(testbed: Testbed, dirty_rate: int) -> str:
    """vm-1 started again, on the host it is on, with this guest rate; that host."""
    hypervisors = Hypervisors.of(testbed)
    host = hypervisors.locate("vm-1").host
    stub = vm_pb2_grpc.HypervisorStub(hypervisors.hosts[host].protected_channel())
    stub.StopVm(vm_pb2.StopVmRequest(name="vm-1"), timeout=60)
    stub.StartVm(vm_pb2.StartVmRequest(name="vm-1", settings={
        "VM_DIRTY_RATE": str(dirty_rate)}), timeout=120)
    return host


def timed_move(testbed: Testbed, vm: str, strategy: str,
               gap_client: Callable[[], GapClient]) -> tuple[dict[str, Any], Any]:
    """Move `vm` to the next host while a gap client calls it; the figures every move has
    (client-observed gap against the same client's baseline), and the migration result."""
    hypervisors = Hypervisors.of(testbed)
    source = hypervisors.locate(vm)
    hosts = sorted(hypervisors.hosts)
    to = hosts[(hosts.index(source.host) + 1) % len(hosts)]
    with gap_client() as baseline:
        time.sleep(2.0)
    with gap_client() as client:
        time.sleep(0.5)
        started = time.monotonic()
        result = hypervisors.migrate(vm, to, strategy=strategy)
        wall = time.monotonic() - started
        time.sleep(1.0)
    return {
        "strategy": strategy, "from": source.host, "to": to,
        "downtime_ms": round(result.downtime_seconds * 1000, 2),
        "client_longest_gap_ms": round(client.longest * 1000, 2),
        "baseline_longest_gap_ms": round(baseline.longest * 1000, 2),
        "gap_ratio_to_baseline": round(client.longest / baseline.longest, 1)
        if baseline.longest else None,
        "client_calls": client.calls, "client_errors": len(client.errors),
        "total_seconds": round(result.total_seconds, 3), "wall_seconds": round(wall, 3),
        "sent_per_image": round(result.bytes_sent / result.image_bytes, 3),
        "rounds": len(result.rounds), "stop_reason": result.stop_reason,
    }, result


def one_move(testbed: Testbed, switch: grpc.Channel, strategy: str,
             dirty_rate: int) -> dict[str, Any]:
    steps = Hypervisors.of(testbed).locate("vm-1").guest_step
    row, result = timed_move(testbed, "vm-1", strategy, lambda: GapClient.through(switch))
    achieved = (Hypervisors.of(testbed).locate("vm-1").guest_step - steps) / (
        row["wall_seconds"] + 1.5)
    return {
        "dirty_pages_per_second": dirty_rate,
        "guest_writes_per_second_achieved": round(achieved), **row,
        "per_round": [{"round": r.number, "live": r.live, "pages_sent": r.pages_sent,
                       "pages_skipped": r.pages_skipped, "pages_dirtied": r.pages_dirtied,
                       "rate_mib_s": round(r.rate / MIB, 1), "seconds": round(r.seconds, 4)}
                      for r in result.rounds],
    }


def plot(runs: list[dict[str, Any]], path: Path, *, image_mib: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (downtime, total, bars) = plt.subplots(1, 3, figsize=(15, 4.2))
    for strategy, colour in zip(STRATEGIES, ("tab:red", "tab:blue", "tab:green"), strict=True):
        rows = [r for r in runs if r["strategy"] == strategy]
        rates = [r["dirty_pages_per_second"] for r in rows]
        downtime.plot(rates, [r["client_longest_gap_ms"] for r in rows], "o-", color=colour,
                      label=f"{strategy} (client's longest gap)")
        downtime.plot(rates, [r["downtime_ms"] for r in rows], "x--", color=colour,
                      label=f"{strategy} (vm)")
        total.plot(rates, [r["total_seconds"] for r in rows], "o-", color=colour,
                   label=strategy)
    downtime.set_yscale("log")
    downtime.set(title=f"Downtime, {image_mib:g} MiB image", xlabel="guest dirty pages/s",
                 ylabel="ms (log)")
    total.set(title="Total migration time", xlabel="guest dirty pages/s", ylabel="s")
    downtime.legend(fontsize=7)
    total.legend(fontsize=8)
    barred = next((r for r in runs if "per_round" in r), None)
    if barred is not None:
        rounds = barred["per_round"]
        numbers = [r["round"] for r in rounds]
        sent = [r["pages_sent"] * 4096 / MIB for r in rounds]
        dirtied = [r["pages_dirtied"] * 4096 / MIB for r in rounds]
        bars.bar([n - 0.2 for n in numbers], sent, width=0.4, label="sent")
        bars.bar([n + 0.2 for n in numbers], dirtied, width=0.4, label="dirtied meanwhile")
        bars.set(title=f"Pre-copy rounds at {barred['dirty_pages_per_second']} pages/s",
                 xlabel="round (the last: stop-and-copy)", ylabel="MiB")
        bars.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class Writers:
    """KV_WRITERS threads putting to the hot keys through kv-switch, `rate` puts a second
    in all (0: none); `done` counts the acknowledged puts, `errors` the refused ones."""

    def __init__(self, stub: kv_pb2_grpc.KVStub, rate: int) -> None:
        self.stub, self.rate = stub, rate
        self.done, self.errors = 0, 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(KV_WRITERS if rate else 0)]

    def _run(self, n: int) -> None:
        interval, i = KV_WRITERS / self.rate, n
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.stub.Put(kv_pb2.PutRequest(key=f"key-{i % KV_HOT_KEYS}",
                                                value=b"w" * KV_VALUE_BYTES), timeout=60)
                self.done += 1
            except grpc.RpcError:
                self.errors += 1
            i += KV_WRITERS
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


def fill_kv(stub: kv_pb2_grpc.KVStub) -> None:
    """KV_KEYS keys of KV_VALUE_BYTES into kv-1, by 8 threads."""
    def put(first: int) -> None:
        for i in range(first, KV_KEYS, 8):
            stub.Put(kv_pb2.PutRequest(key=f"key-{i}", value=b"v" * KV_VALUE_BYTES),
                     timeout=60)
    threads = [threading.Thread(target=put, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def kv_moves(testbed: Testbed) -> list[dict[str, Any]]:
    """kv-1 filled, then moved by stop-and-copy and pre-copy at each client write rate."""
    (switch,) = [m for m in testbed.machines() if m.info.role == "kv-switch"]
    stub = kv_pb2_grpc.KVStub(switch.channel())
    fill_kv(stub)
    rows = []
    for rate in KV_WRITE_RATES:
        for strategy in ("stop-and-copy", "pre-copy"):
            with Writers(stub, rate) as writers:
                started = time.monotonic()
                row, result = timed_move(testbed, "kv-1", strategy, lambda: GapClient(
                    lambda: stub.Get(kv_pb2.GetRequest(key="key-0"), timeout=60)))
                achieved = writers.done / (time.monotonic() - started)
            keys = next(p.keys for p in Hypervisors.of(testbed).vms() if p.name == "kv-1")
            rows.append({"client_puts_per_second": rate,
                         "client_puts_per_second_achieved": round(achieved),
                         "writer_errors": writers.errors, "keys": keys, **row,
                         "store_mib": round(result.image_bytes / MIB, 2)})
            achieved_rate = rows[-1]["client_puts_per_second_achieved"]
            print(f"kv-1 {strategy:14} puts {rate:5}/s ({achieved_rate:5}/s): downtime "
                  f"{row['downtime_ms']:8.1f} ms, client gap "
                  f"{row['client_longest_gap_ms']:8.1f} ms (x{row['gap_ratio_to_baseline']} "
                  f"baseline), total {row['total_seconds']:6.2f} s, sent "
                  f"{row['sent_per_image']:.2f}x of {rows[-1]['store_mib']} MiB, rounds "
                  f"{row['rounds']} {row['stop_reason']}, errors "
                  f"{row['client_errors'] + writers.errors}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--image-mib", type=float, default=256.0)
    parser.add_argument("--only", choices=("vm", "kv"), help="one guest's part alone")
    args = parser.parse_args(argv)
    testbed = Testbed()
    testbed.clean()
    runs: list[dict[str, Any]] = []
    kv_runs: list[dict[str, Any]] = []
    try:
        testbed.up("migration", [], timeout=240,
                   environment={"DISTLAB_VM_IMAGE_MIB": f"{args.image_mib:g}"})
        (switch,) = [m for m in testbed.machines() if m.info.role == "vm-switch"]
        channel = switch.channel()
        for dirty_rate in DIRTY_RATES if args.only != "kv" else ():
            for strategy in STRATEGIES:
                restart_vm(testbed, dirty_rate)
                row = one_move(testbed, channel, strategy, dirty_rate)
                if not (strategy == "pre-copy" and dirty_rate == BARS_AT):
                    row.pop("per_round")
                runs.append(row)
                print(f"{strategy:14} dirty {dirty_rate:6}/s "
                      f"({row['guest_writes_per_second_achieved']:6}/s): downtime "
                      f"{row['downtime_ms']:8.1f} ms, client gap "
                      f"{row['client_longest_gap_ms']:8.1f} ms (x{row['gap_ratio_to_baseline']}"
                      f" baseline), total {row['total_seconds']:6.2f} s, sent "
                      f"{row['sent_per_image']:.2f}x, rounds {row['rounds']} "
                      f"{row['stop_reason']}, errors {row['client_errors']}", flush=True)
        if args.only != "vm":
            kv_runs = kv_moves(testbed)
    finally:
        testbed.clean()
    report = {"name": "migration", "machine": machine_facts(),
              "parameters": {"image_mib": args.image_mib, "hot_pages": 2048,
                             "hot_fraction": 0.9, "link_mib_s": LINK_MIB,
                             "first_round_mib_s": 32.0, "dirty_rates": DIRTY_RATES,
                             "client": "Get through vm-switch in a closed loop",
                             "baseline": "the same client's longest gap over 2 s without a "
                                         "migration, same vm, same run"},
              "anchor": {"criu_container_migration_downtime_s": CRIU_ANCHOR_SECONDS,
                         "source": "reported in the literature for container migration "
                                   "with CRIU; not measured here (no CRIU on this kernel)"},
              "runs": runs,
              "kv_guest": {"keys": KV_KEYS, "value_bytes": KV_VALUE_BYTES,
                           "hot_keys": KV_HOT_KEYS, "writers": KV_WRITERS,
                           "client": "Get of one key through kv-switch in a closed loop",
                           "runs": kv_runs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if runs:
        plot(runs, args.out.with_suffix(".png"), image_mib=args.image_mib)
    return report


if __name__ == "__main__":
    main()
