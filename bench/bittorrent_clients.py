"""Our peers beside real clients, in the bittorrent lab's containers, no rate limits
(added to reports/bench/bittorrent.json as "clients"):

- aria2 fetches the lab's file from our seeder, then from libtorrent's seed (our seeder
  stopped): the ratio says how well our seeder serves a real client;
- our leecher fetches it from libtorrent's seed, as aria2 just did: the ratio says how well
  our leecher downloads, next to a real one;
- what our seeder holds in memory idle and while it serves the file (the aim: not in
  proportion to the file, since pieces are read from disk when asked for).

One transfer at a time, each machine at its compose CPU limit (0.5 cores). Throughput is
bytes over time between the first and the last sample taken while the download was under
way (a real client's status file is rewritten every 0.1 s with its own timestamp; our
leecher is asked every 0.1 s), so neither a client's start-up nor its folder scan counts.

Each at two file sizes (64 and 256 MiB by default): the bigger one is timed more closely,
and our seeder's memory at both says whether it grows with the file.

Usage: python -m bench.bittorrent_clients [--file-mib 64 256]
"""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import Callable
from typing import Any

import docker
import grpc

from bench import idle_cost
from distlab.bittorrent.clients import ClientMachine
from distlab.bittorrent.swarm import status_of
from distlab.testbed import Testbed
from nodes.bittorrent.metainfo import Metainfo

MIB = 1024 * 1024
PIECE_BYTES = 256 * 1024
FILE_MIB = (64, 256)
LAB_TORRENT = "/data/torrents/lab.torrent"
TRANSFER_SECONDS = 300
POLL_SECONDS = 0.1
CLIENT_STATUS_SECONDS = 0.1  # a real client writes its status this often (1 s in a lab)

Sample = tuple[float, int]  # (when, bytes done)


def throughput(samples: list[Sample], total: int) -> float:
    """Bytes per second while the download was under way: between the first and the last
    sample strictly between nothing and everything (the first and last with any progress
    when fewer than two lie inside)."""
    inside = [(at, done) for at, done in samples if 0 < done < total]
    if len(inside) < 2:
        moving = [s for s in samples if s[1] > 0]
        first = moving[0] if moving else samples[0]
        inside = [first, samples[-1]]
    (t0, d0), (t1, d1) = inside[0], inside[-1]
    if t1 <= t0 or d1 <= d0:
        raise RuntimeError(f"too few samples to time the transfer: {samples}")
    return (d1 - d0) / (t1 - t0)


def follow(sample: Callable[[], Sample | None], total: int, what: str) -> list[Sample]:
    """Samples of one download until it holds all `total` bytes."""
    samples: list[Sample] = []
    deadline = time.monotonic() + TRANSFER_SECONDS
    while time.monotonic() < deadline:
        taken = sample()
        if taken is not None and (not samples or taken != samples[-1]):
            samples.append(taken)
            if taken[1] >= total:
                return samples
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{what} did not complete within {TRANSFER_SECONDS} s")


def client_sample(client: ClientMachine, key: str) -> Callable[[], Sample | None]:
    def sample() -> Sample | None:
        updated, torrents = client.report()
        torrent = torrents.get(key)
        return (updated, torrent.done) if torrent else None
    return sample


def peer_sample(testbed: Testbed, name: str) -> Callable[[], Sample | None]:
    def sample() -> Sample | None:
        channel = testbed.machine(name).refresh().protected_channel()
        try:
            status = status_of(channel)
        except grpc.RpcError:  # not up yet
            return None
        finally:
            channel.close()
        if not status.total_bytes:
            return None
        done = status.total_bytes if status.complete else status.downloaded
        return time.time(), min(done, status.total_bytes)
    return sample


def rss_mib(testbed: Testbed, name: str) -> float:
    engine = docker.from_env(timeout=120)
    return idle_cost.container_rss_bytes(
        engine.containers.get(testbed.machine(name).container).id) / MIB


def read_file(testbed: Testbed, machine: str, path: str) -> bytes:
    """A file of a machine, read through the runtime (as the e2e tests read them)."""
    result = testbed.runtime.exec(testbed.machine(machine).container, ["base64", "-w0", path])
    return base64.b64decode(result.output)


def wait_for(check: Callable[[], Any], what: str, seconds: float = 120) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {seconds:.0f} s")


def measure(file_mib: int) -> dict[str, Any]:
    testbed = Testbed()
    environment = {"DISTLAB_SEED_BYTES": str(file_mib * MIB),
                   "DISTLAB_PIECE_BYTES": str(PIECE_BYTES),
                   "DISTLAB_BTCLIENT_STATUS_SECONDS": str(CLIENT_STATUS_SECONDS)}
    testbed.clean()  # the seeder makes its file only on an empty volume
    try:
        testbed.up("bittorrent", ["leecher=0"], environment=environment, timeout=240)
        seeder = testbed.machine("seeder-1")
        wait_for(lambda: (s := peer_sample(testbed, "seeder-1")()) and s[1] > 0,
                 "seeder-1 makes the lab's file and seeds it", 300)
        torrent = read_file(testbed, "seeder-1", LAB_TORRENT)
        metainfo = Metainfo.from_bytes(torrent)
        key, total = metainfo.info_hash.hex(), metainfo.total_length
        aria2 = ClientMachine(testbed, "aria2-1")
        libtorrent = ClientMachine(testbed, "libtorrent-1")
        rss_idle = rss_mib(testbed, "seeder-1")

        aria2.add(torrent)
        rss_serving: list[float] = []

        def from_our_seeder() -> Sample | None:
            rss_serving.append(rss_mib(testbed, "seeder-1"))
            return client_sample(aria2, key)()

        ours_to_aria2 = throughput(follow(from_our_seeder, total, "aria2 from our seeder"),
                                   total)
        aria2.forget(metainfo)
        payload = read_file(testbed, "seeder-1", f"/data/seeder-1/{metainfo.name}")
        seeder.stop()
        libtorrent.add(torrent, payload)
        wait_for(lambda: (t := libtorrent.torrents().get(key)) and t.seeding,
                 "libtorrent checks the lab's file and seeds it")
        aria2.add(torrent)
        real_to_aria2 = throughput(follow(client_sample(aria2, key), total,
                                          "aria2 from libtorrent"), total)
        aria2.forget(metainfo)
        # Our seeder goes for good, so the leecher's only source is libtorrent; and not
        # through Testbed.up, which would return only once the leecher is healthy, by then
        # perhaps done.
        testbed.runtime.up(["bittorrent"], {"leecher": 1, "seeder": 0},
                           environment=environment)
        real_to_ours = throughput(follow(peer_sample(testbed, "leecher-1"), total,
                                         "our leecher from libtorrent"), total)
        libtorrent.forget(metainfo)
    finally:
        testbed.clean()
    mib_s = lambda rate: round(rate / MIB, 1)  # noqa: E731
    report = {
        "file_mib": file_mib, "piece_kib": PIECE_BYTES // 1024,
        "aria2_from_our_seeder_mib_s": mib_s(ours_to_aria2),
        "aria2_from_libtorrent_mib_s": mib_s(real_to_aria2),
        "our_leecher_from_libtorrent_mib_s": mib_s(real_to_ours),
        "our_seeder_over_libtorrent": round(ours_to_aria2 / real_to_aria2, 2),
        "our_leecher_over_aria2": round(real_to_ours / real_to_aria2, 2),
        "seeder_rss_mib_idle": round(rss_idle, 1),
        "seeder_rss_mib_serving_max": round(max(rss_serving), 1),
    }
    print(f"aria2 from our seeder {report['aria2_from_our_seeder_mib_s']} MiB/s, from "
          f"libtorrent {report['aria2_from_libtorrent_mib_s']} MiB/s; our leecher from "
          f"libtorrent {report['our_leecher_from_libtorrent_mib_s']} MiB/s; our seeder's "
          f"RSS {report['seeder_rss_mib_idle']} MiB idle, at most "
          f"{report['seeder_rss_mib_serving_max']} MiB serving {file_mib} MiB", flush=True)
    return report


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.bittorrent_clients",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file-mib", type=int, nargs="+", default=list(FILE_MIB))
    args = parser.parse_args(argv)
    return [measure(size) for size in args.file_mib]


if __name__ == "__main__":
    main()
