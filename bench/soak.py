"""A soak of the bank on loopback with real node processes, written to reports/bench/soak.json:
does state stay bounded under steady load?

The bank tier of bench.overload (`bank_tier`: a data-master, REPLICAS data
replicas, APPS app servers, a switch) with a short idempotency window
(`--window`, so records expire many times over within the run) and a short
statement history (`--history-lines`, APP_BANK_HISTORY_LINES: each of the
workload's 8 accounts gets a line every couple of seconds at 40 ops/s, so the
kept window is full within the first minutes, well inside warm-up), under the
bank workload (distlab.tiers.bank: transfers, balances, audits) at `--rate`
operations per second through the switch for `--seconds` (default 30 min).
Every `--every` seconds it samples each process's RSS, each replica's keys
(Control Status) and, on the tail, the idempotency records and their expiry
index (a prefix Read each). At the end the workload settles and the bank
checker judges the history; with a window shorter than the run, an
indefinite transfer (a timeout) older than the window can no longer be
resolved by replaying it, which makes that verdict unknown, never invalid.

The verdict compares the mean of the last third of the samples with the
middle third (the first third is warm-up): a series is flat when it grew by
at most FLAT_RATIO (or by less than its noise floor). Judged flat: the
idempotency records and their index, each replica's keys and RSS, the app
servers' and the switch's RSS. A replica's keys are its accounts, their kept
statement lines and about window + 60 s of idempotency records; its RSS also
holds its last DATA_RECENT_UPDATES (10 000) updates, which fill in about ten
minutes at the default rate: one reason the warm-up third of a 30-minute run
is ten minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import grpc

from bench.overload import BankTier, bank_tier, machine
from bench.tiers_local import Background, rss_mib
from distlab.tiers.bank import BankConfig, BankWorkload
from nodes.app.bank import IDEMPOTENCY_EXPIRY_PREFIX, IDEMPOTENCY_PREFIX
from nodes.rpc import chain_pb2, chain_pb2_grpc, control_pb2, control_pb2_grpc

OUT = Path("reports/bench/soak.json")
REPLICAS = 3
APPS = 2
APP_WORKERS = 8
FLAT_RATIO = 1.10
# Below these a difference is noise, whatever the ratio: a few MiB of allocator slack, and
# the records of a few seconds of load.
RSS_NOISE_MIB = 3.0
RECORDS_NOISE = 200
# Long enough that a loaded machine seldom turns a transfer indefinite.
OPERATION_TIMEOUT = 5.0
READ_LIMIT = 10_000  # the data tier's largest prefix Read (DATA_MAX_READ_LIMIT)
HISTORY_LINES = 200  # statement lines kept per account during the soak


class Sampler(Background):
    """Samples the tier every `every` seconds in a thread until stopped."""

    name = "soak-sampler"

    def __init__(self, tier: BankTier, every: float) -> None:
        super().__init__()
        self.tier = tier
        self.every = every
        self.samples: list[dict[str, Any]] = []
        self._started = time.monotonic()

    def step(self) -> None:
        try:
            self.samples.append(self.sample())
        except grpc.RpcError as exc:  # a slow answer skips a sample, never the soak
            print(f"soak: sample skipped: {exc.code().name}: {exc.details()}")

    def sample(self) -> dict[str, Any]:
        metadata = self.tier.credential.metadata()
        replicas = {}
        for address, pid in self.tier.replicas.items():
            with grpc.insecure_channel(address) as channel:
                state = control_pb2_grpc.ControlStub(channel).Status(
                    control_pb2.StatusRequest(), timeout=10, metadata=metadata).state
            replicas[address] = {"rss_mib": rss_mib([pid]), "keys": int(state["keys"]),
                                 "position": state["position"]}
        tail = next(a for a, r in replicas.items() if r["position"] == "tail")
        with grpc.insecure_channel(tail) as channel:
            data = chain_pb2_grpc.DataStub(channel)
            counts, truncated = {}, []
            for name, prefix in (("idempotency_records", IDEMPOTENCY_PREFIX),
                                 ("expiry_index", IDEMPOTENCY_EXPIRY_PREFIX)):
                reply = data.Read(chain_pb2.ReadRequest(prefix=prefix, limit=READ_LIMIT),
                                  timeout=30, metadata=metadata)
                counts[name] = len(reply.found)
                if reply.truncated:  # the count is a floor: it would not stay flat unseen
                    truncated.append(name)
        return {"t": round(time.monotonic() - self._started, 1), "replicas": replicas,
                "apps_rss_mib": {a: rss_mib([pid]) for a, pid in self.tier.apps.items()},
                "switch_rss_mib": rss_mib([self.tier.switch_pid]), **counts,
                "at_least": truncated}


def thirds(values: list[float]) -> tuple[float, float]:
    """Means of the middle and the last third."""
    third = len(values) // 3
    return statistics.fmean(values[third:2 * third]), statistics.fmean(values[2 * third:])


def judge(name: str, values: list[float], noise: float) -> dict[str, Any]:
    middle, last = thirds(values)
    flat = last <= middle * FLAT_RATIO or last - middle < noise
    return {"series": name, "middle_mean": round(middle, 1), "last_mean": round(last, 1),
            "flat": flat}


def verdict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    if len(samples) < 6:
        return {"flat": None, "why": f"only {len(samples)} samples: run longer"}
    judged = [judge("idempotency_records", [s["idempotency_records"] for s in samples],
                    RECORDS_NOISE),
              judge("expiry_index", [s["expiry_index"] for s in samples], RECORDS_NOISE),
              judge("switch_rss_mib", [s["switch_rss_mib"] for s in samples], RSS_NOISE_MIB)]
    judged += [judge(f"app_rss_mib {address}", [s["apps_rss_mib"][address] for s in samples],
                     RSS_NOISE_MIB) for address in samples[0]["apps_rss_mib"]]
    for address in samples[0]["replicas"]:
        judged += [judge(f"replica_keys {address}",
                         [s["replicas"][address]["keys"] for s in samples], RECORDS_NOISE),
                   judge(f"replica_rss_mib {address}",
                         [s["replicas"][address]["rss_mib"] for s in samples], RSS_NOISE_MIB)]
    return {"flat": all(j["flat"] for j in judged), "judged": judged}


def run(seconds: float, rate: float, every: float, window: float,
        history_lines: int) -> dict[str, Any]:
    with bank_tier(replicas=REPLICAS, apps=APPS, app_workers=APP_WORKERS,
                   APP_IDEMPOTENCY_WINDOW_SECONDS=window,
                   APP_BANK_HISTORY_LINES=history_lines,
                   APP_IDEMPOTENCY_SWEEP_SECONDS=2) as tier, \
            grpc.insecure_channel(tier.switch) as channel:
        workload = BankWorkload(channel, BankConfig(processes=4, max_ops=10**9, seconds=seconds,
                                                    rate=rate, timeout=OPERATION_TIMEOUT))
        workload.setup()
        with Sampler(tier, every) as sampler:
            history = workload.run()
        bank = workload.check()
    return {"setup": {"seconds": seconds, "rate_per_s": rate, "sample_every_s": every,
                      "idempotency_window_s": window, "history_lines": history_lines,
                      "replicas": REPLICAS, "apps": APPS},
            "machine": machine(), "operations": history.counts(),
            "bank_checker": {"valid": bank.valid, "problems": bank.problems[:5]},
            "verdict": verdict(sampler.samples), "samples": sampler.samples}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.soak",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1800.0, help="length of the load")
    parser.add_argument("--rate", type=float, default=40.0, help="bank operations per second")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--window", type=float, default=60.0,
                        help="the app servers' idempotency window in seconds")
    parser.add_argument("--history-lines", type=int, default=HISTORY_LINES,
                        help="statement lines the app servers keep per account "
                             "(APP_BANK_HISTORY_LINES)")
    options = parser.parse_args(argv)
    report = run(options.seconds, options.rate, options.every, options.window,
                 options.history_lines)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    return report


if __name__ == "__main__":
    main()
