"""Live migration on loopback (reports/bench/migration_local.json): Clark's experiment at lab
scale without containers, every strategy in one run.

For each strategy and guest dirty rate, a source vm process (VM_IMAGE_MIB, a hot working set
of HOT_PAGES) and an incoming vm process; a client calls Get on the vm in a closed loop and
follows it to the destination; the vm reports its downtime (pause to the destination's
commit), the client the longest gap between two answers. The baseline is the client's
longest gap over the same time with no migration, measured in the same run (ratio beside
each gap). For the pre-copy run at the middle rate, Clark's per-round bars (pages sent vs
dirtied per round). The rate limit plays the link: MAX_RATE_MIB for every strategy.

Usage: python -m bench.migration_local [--out PATH] [--image-mib N]
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc

from bench.migration import GapClient
from bench.rpc_overhead import machine_facts
from bench.tiers_local import lab_credential, node
from nodes.common.auth import with_credential
from nodes.rpc import vm_pb2, vm_pb2_grpc

DEFAULT_OUT = Path("reports/bench/migration_local.json")
STRATEGIES = ("stop-and-copy", "pre-copy", "post-copy")
DIRTY_RATES = (0, 2000, 8000, 32000)  # guest page writes per second
HOT_PAGES = 2048  # 8 MiB writable working set
# The link: 32 MiB/s, so the fastest guest below dirties its working set faster than it.
MIN_RATE_MIB, MAX_RATE_MIB = 16.0, 32.0
MIB = 1024 * 1024


class Follower:
    """One Get on the vm, following it to `destination` once the source says it moved (no
    switch here: the client is its own)."""

    def __init__(self, target: str, destination: str) -> None:
        self.destination = destination
        self._channel = grpc.insecure_channel(target)
        self._stub = vm_pb2_grpc.VMStub(self._channel)

    def __call__(self) -> None:
        try:
            self._stub.Get(vm_pb2.GetRequest(key=b"k"), timeout=20)
        except grpc.RpcError as exc:
            if "moved to" not in (exc.details() or ""):
                raise
            self._channel.close()
            self._channel = grpc.insecure_channel(self.destination)
            self._stub = vm_pb2_grpc.VMStub(self._channel)
            self()


def vm_env(credential_file: str, image_mib: float, dirty_rate: int,
           link_mib: float) -> dict[str, Any]:
    return {"CREDENTIAL_FILE": credential_file, "VM_IMAGE_MIB": image_mib,
            "VM_DIRTY_RATE": dirty_rate, "VM_HOT_PAGES": HOT_PAGES, "VM_HOT_FRACTION": 0.9,
            "VM_MIN_RATE_MIB": min(MIN_RATE_MIB, link_mib), "VM_MAX_RATE_MIB": link_mib}


def one_run(credential, credential_file: str, strategy: str, dirty_rate: int,
            image_mib: float, link_mib: float) -> dict[str, Any]:
    with ExitStack() as stack:
        _, source = stack.enter_context(node("vm", **vm_env(credential_file, image_mib,
                                                           dirty_rate, link_mib)))
        _, destination = stack.enter_context(node("vm", CREDENTIAL_FILE=credential_file,
                                                  VM_INCOMING="true"))
        channel = stack.enter_context(grpc.insecure_channel(source))
        migration = vm_pb2_grpc.MigrationStub(with_credential(channel, credential))
        status = vm_pb2.VmStatusRequest()
        steps_before, clock = migration.Status(status, timeout=10).guest_step, time.monotonic()
        with GapClient(Follower(source, destination)) as baseline:
            time.sleep(1.0)
        baseline_gap = baseline.longest
        # What the guest really did: a Python guest on shared cores may fall short of its rate.
        achieved = ((migration.Status(status, timeout=10).guest_step - steps_before)
                    / (time.monotonic() - clock))
        with GapClient(Follower(source, destination)) as client:
            time.sleep(0.3)
            started = time.monotonic()
            progress = list(migration.Migrate(vm_pb2.MigrateRequest(
                destination=destination, strategy=strategy), timeout=300))
            wall = time.monotonic() - started
            time.sleep(0.5)
        result = progress[-1].result
        return {
            "strategy": strategy, "dirty_pages_per_second": dirty_rate,
            "guest_writes_per_second_achieved": round(achieved),
            "downtime_ms": round(result.downtime_seconds * 1000, 2),
            "client_longest_gap_ms": round(client.longest * 1000, 2),
            "baseline_longest_gap_ms": round(baseline_gap * 1000, 2),
            "gap_ratio_to_baseline": round(client.longest / baseline_gap, 1)
            if baseline_gap else None,
            "client_errors": len(client.errors),
            "total_seconds": round(result.total_seconds, 3), "wall_seconds": round(wall, 3),
            "sent_per_image": round(result.bytes_sent / result.image_bytes, 3),
            "rounds": len(result.rounds), "stop_reason": result.stop_reason,
            "per_round": [{"round": r.number, "live": r.live, "pages_sent": r.pages_sent,
                           "pages_skipped": r.pages_skipped, "pages_dirtied": r.pages_dirtied,
                           "rate_mib_s": round(r.rate / MIB, 1), "seconds": round(r.seconds, 4)}
                          for r in result.rounds],
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--image-mib", type=float, default=64.0)
    parser.add_argument("--link-mib", type=float, default=MAX_RATE_MIB,
                        help="the rate limit's maximum, MiB/s: the link pre-copy may fill")
    args = parser.parse_args(argv)
    runs = []
    with lab_credential() as (credential_file, credential):
        for dirty_rate in DIRTY_RATES:
            for strategy in STRATEGIES:
                row = one_run(credential, credential_file, strategy, dirty_rate, args.image_mib,
                              args.link_mib)
                if not (strategy == "pre-copy" and dirty_rate == DIRTY_RATES[2]):
                    row.pop("per_round")
                runs.append(row)
                achieved = row["guest_writes_per_second_achieved"]
                print(f"{strategy:14} dirty {dirty_rate:6}/s ({achieved:6}/s): downtime "
                      f"{row['downtime_ms']:8.1f} ms, client gap "
                      f"{row['client_longest_gap_ms']:8.1f} ms, total "
                      f"{row['total_seconds']:6.2f} s, sent {row['sent_per_image']:.2f}x, "
                      f"rounds {row['rounds']} {row['stop_reason']}", flush=True)
    report = {"name": "migration_local", "machine": machine_facts(),
              "parameters": {"image_mib": args.image_mib, "hot_pages": HOT_PAGES,
                             "hot_fraction": 0.9, "min_rate_mib_s": min(MIN_RATE_MIB,
                                                                         args.link_mib),
                             "max_rate_mib_s": args.link_mib, "dirty_rates": DIRTY_RATES,
                             "baseline": "the client's longest gap over 1 s without a "
                                         "migration, same vm, same run"},
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
