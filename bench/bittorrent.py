"""The textbook experiment (Kurose & Ross, "P2P file distribution"): the time to give a file
of F bytes to N peers, client-server against P2P, with the lower bounds beside it
(reports/bench/bittorrent.json and bittorrent.png).

Every machine is a real process on loopback: our tracker (nodes.tracker), one seeder and N
leechers (nodes.peer) speaking BEP 3 over TCP, their links modelled by the peers' upload
caps. Client-server is the same swarm with the leechers never uploading (PEER_MODE
free-rider) and the seeder serving all of them at once: everything comes from the server,
at u_s. P2P caps every peer's upload at u, the seeder's at u_s. Downloads are not capped
(d_min is infinite), so the bounds are

    D_cs  = max(N F / u_s, F / d_min)                      = N F / u_s
    D_p2p = max(F / u_s, F / d_min, N F / (u_s + N u))

The leechers and the seeder are started first, knowing no one, and the tracker last: the
clock starts when the tracker answers (the peers announce again every 0.1 s) and stops when
the last leecher says it is complete. A capped upload is a token bucket that starts full
(a quarter second's worth, nodes/peer/limits.py): a link's first burst, so a time can come
in up to 0.25 s under its bound.

Two more experiments go into the same report: incentives (`incentives`: leechers that upload
more finish sooner, a free rider last) and our peers beside real clients in the lab's
containers (bench.bittorrent_clients).

Usage: python -m bench.bittorrent [--out PATH] [--max-n 16] [--file-mib 4] [--rate-mib 1]
       [--incentive-runs 3] [--incentive-file-mib 24] [--clients-file-mib 64 256]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

import grpc

from bench import bittorrent_clients
from bench.rpc_overhead import machine_facts
from bench.tiers_local import free_port, lab_credential, node
from distlab.bittorrent.torrents import make_torrent
from nodes.common.auth import Credential, with_credential
from nodes.rpc import peer_pb2, peer_pb2_grpc

DEFAULT_OUT = Path("reports/bench/bittorrent.json")
MIB = 1024 * 1024
PIECE_BYTES = 64 * 1024
CLIENT_SERVER, P2P = "client-server", "p2p"
#: Housekeeping fast enough not to be what is measured (test_peer_swarm.FAST, but announces
#: retried every 0.1 s: the tracker starts last, and its start is the clock's).
PACE = {"PEER_PORT": 0, "PEER_TICK_SECONDS": 0.2, "PEER_RECHOKE_SECONDS": 1,
        "PEER_OPTIMISTIC_SECONDS": 2, "PEER_REDIAL_SECONDS": 0.5,
        "PEER_ANNOUNCE_RETRY_SECONDS": 0.1}
POLL_SECONDS = 0.05


def bounds(n: int, file_bytes: int, server_rate: float, peer_rate: float) -> dict[str, float]:
    """Kurose & Ross's lower bounds with unlimited downloads (d_min infinite)."""
    return {CLIENT_SERVER: n * file_bytes / server_rate,
            P2P: max(file_bytes / server_rate, n * file_bytes / (server_rate + n * peer_rate))}


class Machines(Protocol):
    """Where the tracker and the peers run: `start(role, **settings)` is a context manager
    giving the machine's gRPC address; every machine holds `credential_file`."""

    credential_file: str
    credential: Credential

    def start(self, role: str, **settings: Any) -> AbstractContextManager[str]: ...


class Processes:
    """Every machine a process on loopback (bench.tiers_local.node), as `make bench` runs."""

    def __init__(self, credential_file: str, credential: Credential) -> None:
        self.credential_file, self.credential = credential_file, credential

    @contextmanager
    def start(self, role: str, **settings: Any) -> Iterator[str]:
        with node(role, CREDENTIAL_FILE=self.credential_file, **settings) as (_, target):
            yield target


def distribute(n: int, mode: str, *, file_bytes: int, rate: float, timeout: float = 300.0,
               machines: Machines | None = None) -> float:
    """Seconds to get a file of `file_bytes` from one seeder to `n` leechers, every upload
    capped at `rate` bytes/s (in client-server the leechers upload nothing)."""
    if mode not in (CLIENT_SERVER, P2P):
        raise ValueError(f"mode is {CLIENT_SERVER} or {P2P}, not {mode!r}")
    leecher = ({"PEER_MODE": "free-rider"} if mode == CLIENT_SERVER
               else {"PEER_UPLOAD_RATE_BYTES": int(rate)})
    # The server serves every client at once; a P2P seeder is a peer like the others.
    seeder = {"PEER_UPLOAD_RATE_BYTES": int(rate)}
    if mode == CLIENT_SERVER:
        seeder["PEER_UPLOAD_SLOTS"] = n
    return max(swarm_times([leecher] * n, seeder, file_bytes=file_bytes, timeout=timeout,
                           machines=machines))


def swarm_times(leechers: list[dict[str, Any]], seeder: dict[str, Any], *, file_bytes: int,
                timeout: float = 300.0, machines: Machines | None = None) -> list[float]:
    """One distribution: a seeder and a leecher per entry of `leechers` (each its own extra
    settings); the seconds each leecher took, in order. Processes unless `machines`."""
    with ExitStack() as stack:
        if machines is None:
            machines = Processes(*stack.enter_context(lab_credential()))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distlab-bt-")))
        http_port = free_port()
        seed = work / "file.bin"
        seed.write_bytes(_content(file_bytes))
        torrent = work / "file.torrent"
        make_torrent(seed, f"http://127.0.0.1:{http_port}/announce", piece_size=PIECE_BYTES,
                     out=torrent)
        common = {**PACE, "PEER_TORRENT": torrent, "DATA_DIR": work / "data"}
        targets = [stack.enter_context(machines.start("peer", **common, **extra))
                   for extra in leechers]
        stack.enter_context(machines.start("peer", **common, **seeder, PEER_SEED_PATH=seed))
        # Everyone is up and knows no one: the tracker, last, starts the distribution the
        # moment its HTTP port accepts (its gRPC health answers a little later).
        opened = _Opened(http_port)
        stack.enter_context(machines.start(
            "tracker", TRACKER_HTTP_PORT=http_port, TRACKER_UDP_PORT=0,
            TRACKER_INTERVAL_SECONDS=1, TRACKER_MIN_INTERVAL_SECONDS=1))
        started = opened.at()
        done = _wait_complete(targets, machines.credential, started + timeout)
        return [done[target] - started for target in targets]


#: The incentives experiment: leechers in classes of upload cap (KiB/s; 0 is a free rider),
#: four of each contributing class, and a seeder giving a fifth of the swarm's upload.
#: The file is big enough for the download to outlast the choker's 20 s rate window: over
#: 8 MiB (10 s) every class finished together, since rates had not been told apart yet.
UPLOAD_CLASSES_KIB = (0, 128, 256, 512, 1024)
PEERS_PER_CLASS = 4
INCENTIVE_SEEDER_KIB = 2048


def incentives(*, file_bytes: int, runs: int, machines: Machines | None = None,
               classes_kib: tuple[int, ...] = UPLOAD_CLASSES_KIB,
               per_class: int = PEERS_PER_CLASS,
               seeder_kib: int = INCENTIVE_SEEDER_KIB) -> list[dict[str, Any]]:
    """Tit-for-tat at work: leechers that upload more finish sooner, a free rider last.

    Most of what a leecher receives comes from the other leechers, who unchoke whoever
    uploads to them fastest. A free rider (class 0; one, not `per_class`) gets only
    optimistic unchokes and its turns at the seed until the contributors finish and seed.
    The times of each class, over `runs` swarms."""
    leechers: list[dict[str, Any]] = []
    for kib in classes_kib:
        if kib == 0:
            leechers.append({"PEER_MODE": "free-rider"})
        else:
            leechers += [{"PEER_UPLOAD_RATE_BYTES": kib * 1024}] * per_class
    caps = [extra.get("PEER_UPLOAD_RATE_BYTES", 0) // 1024 for extra in leechers]
    times: dict[int, list[float]] = {kib: [] for kib in classes_kib}
    for _ in range(runs):
        seconds = swarm_times(leechers, {"PEER_UPLOAD_RATE_BYTES": seeder_kib * 1024},
                              file_bytes=file_bytes, machines=machines)
        for kib, took in zip(caps, seconds, strict=True):
            times[kib].append(took)
    rows = []
    for kib in classes_kib:
        mean = statistics.fmean(times[kib])
        rows.append({"upload_kib_per_second": kib, "peers": len(times[kib]) // runs,
                     "seconds_mean": round(mean, 2),
                     "seconds": [round(t, 2) for t in sorted(times[kib])],
                     "download_kib_per_second": round(file_bytes / 1024 / mean, 1)})
        print(f"upload {kib:5d} KiB/s: done in {mean:6.2f} s on average "
              f"({rows[-1]['download_kib_per_second']} KiB/s received)", flush=True)
    return rows


def _content(size: int) -> bytes:
    """Incompressible, reproducible bytes."""
    return random.Random(size).randbytes(size)


def _wait_complete(targets: list[str], credential: Credential,
                   deadline: float) -> dict[str, float]:
    """When each leecher was first seen complete (monotonic time)."""
    channels = [with_credential(grpc.insecure_channel(target), credential)
                for target in targets]
    done: dict[str, float] = {}
    try:
        pending = {target: peer_pb2_grpc.PeerStatusStub(channel)
                   for target, channel in zip(targets, channels, strict=True)}
        while pending:
            for target, stub in list(pending.items()):
                if stub.Status(peer_pb2.StatusRequest(), timeout=5).complete:
                    done[target] = time.monotonic()
                    del pending[target]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} of {len(targets)} leechers not complete")
            time.sleep(POLL_SECONDS)
    finally:
        for channel in channels:
            channel.close()
    return done


class _Opened:
    """When a loopback port first accepts a connection, watched from now on."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._at: float | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.002)
                continue
            self._at = time.monotonic()
            return

    def at(self) -> float:
        self._thread.join()
        if self._at is None:
            raise RuntimeError(f"nothing listened on port {self.port}")
        return self._at


def experiment(sizes: list[int], *, file_bytes: int, rate: float) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        bound = bounds(n, file_bytes, rate, rate)
        row: dict[str, Any] = {"n": n}
        for mode in (CLIENT_SERVER, P2P):
            seconds = distribute(n, mode, file_bytes=file_bytes, rate=rate)
            row[mode] = {"seconds": round(seconds, 2), "bound_seconds": round(bound[mode], 2),
                         "over_bound": round(seconds / bound[mode], 3)}
        row["cs_over_p2p"] = round(row[CLIENT_SERVER]["seconds"] / row[P2P]["seconds"], 2)
        rows.append(row)
        print(f"N={n:3d}  client-server {row[CLIENT_SERVER]['seconds']:6.2f} s "
              f"(bound {bound[CLIENT_SERVER]:5.2f})  p2p {row[P2P]['seconds']:6.2f} s "
              f"(bound {bound[P2P]:5.2f})", flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path, *, file_mib: float, rate_mib: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["n"] for row in rows]
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for mode, colour in ((CLIENT_SERVER, "tab:red"), (P2P, "tab:blue")):
        axes.plot(sizes, [row[mode]["seconds"] for row in rows], "o-", color=colour,
                  label=f"{mode}, measured")
        axes.plot(sizes, [row[mode]["bound_seconds"] for row in rows], "--", color=colour,
                  label=f"{mode}, lower bound")
    axes.set_xlabel("N (leechers)")
    axes.set_ylabel("time to distribute (s)")
    axes.set_title(f"F = {file_mib:g} MiB, every upload {rate_mib:g} MiB/s")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_incentives(classes: list[dict[str, Any]], path: Path, *, file_mib: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    labels = [str(row["upload_kib_per_second"]) if row["upload_kib_per_second"]
              else "0\n(free rider)" for row in classes]
    axes.bar(labels, [row["seconds_mean"] for row in classes], color="tab:blue", alpha=0.6)
    for x, row in enumerate(classes):
        axes.plot([x] * len(row["seconds"]), row["seconds"], "k.", markersize=4)
    axes.set_xlabel("the leecher's upload cap (KiB/s)")
    axes.set_ylabel("time to complete (s)")
    axes.set_title(f"tit-for-tat: F = {file_mib:g} MiB, seeder {INCENTIVE_SEEDER_KIB} KiB/s")
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def sizes_up_to(largest: int) -> list[int]:
    return [2 ** k for k in range(int(math.log2(largest)) + 1)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.bittorrent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-n", type=int, default=16)
    parser.add_argument("--file-mib", type=float, default=4.0)
    parser.add_argument("--rate-mib", type=float, default=1.0)
    parser.add_argument("--incentive-runs", type=int, default=3,
                        help="swarms of the incentives experiment (0: skip it)")
    parser.add_argument("--incentive-file-mib", type=float, default=24.0)
    parser.add_argument("--clients-file-mib", type=int, nargs="*",
                        default=list(bittorrent_clients.FILE_MIB),
                        help="our peers beside real clients in containers, at these file "
                        "sizes (none: skip it)")
    args = parser.parse_args(argv)
    rows = experiment(sizes_up_to(args.max_n), file_bytes=int(args.file_mib * MIB),
                      rate=args.rate_mib * MIB)
    report: dict[str, Any] = {
        "benchmark": "bittorrent", "machine": machine_facts(),
        "file_mib": args.file_mib, "rate_mib_per_second": args.rate_mib,
        "piece_kib": PIECE_BYTES // 1024, "distribution": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out.with_suffix(".png"), file_mib=args.file_mib, rate_mib=args.rate_mib)
    written = [args.out, args.out.with_suffix(".png")]
    if args.incentive_runs:
        classes = incentives(file_bytes=int(args.incentive_file_mib * MIB),
                             runs=args.incentive_runs)
        report["incentives"] = {"file_mib": args.incentive_file_mib,
                                "seeder_upload_kib_per_second": INCENTIVE_SEEDER_KIB,
                                "runs": args.incentive_runs, "classes": classes}
        figure = args.out.with_name(args.out.stem + "-incentives.png")
        plot_incentives(classes, figure, file_mib=args.incentive_file_mib)
        written.append(figure)
    if args.clients_file_mib:
        report["clients"] = [bittorrent_clients.measure(size) for size in args.clients_file_mib]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("wrote " + ", ".join(str(path) for path in written))
    return report


if __name__ == "__main__":
    main()
