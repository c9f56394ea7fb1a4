"""A closed-loop gRPC load generator for the benchmarks: processes x threads, raw bytes.

Each client process opens its own channel (so the load is not capped by one
process's GIL), and each of its threads sends the same serialized request to
one method, back to back, for `seconds`, recording every latency and error.
`run_load` merges what every process saw into throughput and percentiles.
Bounded by time; traffic only to the `target` it is given (loopback or a
port published on 127.0.0.1).
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc


@dataclass
class LoadResult:
    seconds: float
    calls: int
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float | int | dict]:
        return {"throughput_per_s": round(self.throughput, 1), "calls": self.calls,
                "p50_ms": round(self.percentile(0.50) * 1000, 3),
                "p99_ms": round(self.percentile(0.99) * 1000, 3),
                "errors": self.errors}


def _client(target: str, method: str, request: bytes, seconds: float, threads: int,
            timeout: float, metadata: tuple, out) -> None:
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(method)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: Counter = Counter()
    lock = threading.Lock()
    grpc.channel_ready_future(channel).result(timeout=10)
    ends = time.perf_counter() + seconds

    def loop(mine: list[float]) -> None:
        while (started := time.perf_counter()) < ends:
            try:
                call(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                with lock:
                    errors[exc.code().name] += 1
                continue
            mine.append(time.perf_counter() - started)

    workers = [threading.Thread(target=loop, args=(mine,)) for mine in latencies]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    channel.close()
    out.send(([x for mine in latencies for x in mine], dict(errors)))
    out.close()


def run_load(target: str, method: str, request: bytes, *, seconds: float = 5.0,
             processes: int = 2, threads: int = 8, timeout: float = 5.0,
             metadata: tuple = ()) -> LoadResult:
    context = multiprocessing.get_context("spawn")
    pipes, children = [], []
    for _ in range(processes):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_client, args=(target, method, request, seconds,
                                                      threads, timeout, metadata, sender))
        child.start()
        pipes.append(receiver)
        children.append(child)
    result = LoadResult(seconds=seconds, calls=0)
    errors: Counter = Counter()
    for receiver, child in zip(pipes, children, strict=True):
        if receiver.poll(seconds + timeout + 60):
            latencies, child_errors = receiver.recv()
            result.latencies.extend(latencies)
            errors.update(child_errors)
        child.join(10)
        if child.is_alive():
            child.kill()
    result.calls = len(result.latencies)
    result.errors = dict(errors)
    return result


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
