"""The bittorrent lab, for real: our seeder and leechers end with one file, byte for byte;
real clients (aria2, libtorrent) trade with our peers and with each other through our
tracker; a .torrent made by `distlab bt make-torrent`, announces through the published port,
scrape and the tracker's gRPC view agreeing, Prometheus counting the announces, and a
killed tracker answering again once healed."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess

import grpc
import pytest
import requests

from distlab.bittorrent.clients import ClientMachine
from distlab.bittorrent.download import NODE_USER
from nodes.bittorrent.bencode import decode
from nodes.bittorrent.metainfo import Metainfo
from nodes.rpc import control_pb2, control_pb2_grpc, tracker_pb2, tracker_pb2_grpc
from tests.e2e.conftest import DISTLAB, assert_dashboards_answer, eventually, lab_fixture, run_valid

pytestmark = pytest.mark.e2e
TRACKER = f"http://127.0.0.1:{os.environ.get('DISTLAB_TRACKER_PORT', '6969')}"

LEECHERS = 8  # the issue's `distlab up bittorrent --scale leecher=8`
testbed = lab_fixture("bittorrent", scale=[f"leecher={LEECHERS}"])
OUR_LEECHERS = tuple(f"leecher-{n}" for n in range(1, LEECHERS + 1))
OUR_PEERS = ("seeder-1", *OUR_LEECHERS)
LAB_TORRENT = "/data/torrents/lab.torrent"


@pytest.fixture(scope="module")
def torrent(tmp_path_factory) -> Metainfo:
    folder = tmp_path_factory.mktemp("bt")
    (folder / "lecture.bin").write_bytes(os.urandom(200_000))
    subprocess.run([DISTLAB, "bt", "make-torrent", str(folder / "lecture.bin"), "--tracker",
                    "http://tracker:6969/announce", "--out", str(folder / "lecture.torrent")],
                   check=True, capture_output=True, timeout=60)
    return Metainfo.from_bytes((folder / "lecture.torrent").read_bytes())


def announce(info_hash: bytes, peer: int, **params) -> dict:
    query = {"info_hash": info_hash, "peer_id": b"-DL0001-%012d" % peer, "port": 6880 + peer,
             "uploaded": 0, "downloaded": 0, "left": 200_000, **params}
    reply = requests.get(f"{TRACKER}/announce", params=query, timeout=5)
    assert reply.status_code == 200, reply.text
    return decode(reply.content)


def swarms(testbed) -> dict[str, tracker_pb2.Swarm]:
    with testbed.machine("tracker-1").refresh().channel() as channel:
        reply = tracker_pb2_grpc.TrackerStub(channel).Swarms(tracker_pb2.SwarmsRequest(),
                                                             timeout=5)
    return {swarm.info_hash: swarm for swarm in reply.swarms}


def test_peers_find_each_other_and_scrape_agrees_with_the_tracker(healed, torrent):
    info_hash = torrent.info_hash
    assert announce(info_hash, 1, event="started")[b"peers"] == b""
    second = announce(info_hash, 2, event="started")
    assert len(second[b"peers"]) == 6  # one compact peer: the first
    announce(info_hash, 3, event="completed", left=0)
    files = decode(requests.get(f"{TRACKER}/scrape", params={"info_hash": info_hash},
                                timeout=5).content)[b"files"]
    assert files[info_hash] == {b"complete": 1, b"downloaded": 1, b"incomplete": 2}
    swarm = swarms(healed)[info_hash.hex()]
    assert (swarm.seeders, swarm.leechers) == (1, 2)
    eventually(lambda: healed.prometheus.query(
        'sum(distlab_tracker_announces_total{lab="bittorrent"})'), timeout=60,
        what="Prometheus counts the tracker's announces")


def test_a_bad_announce_gets_a_failure_reason(healed):
    reply = requests.get(f"{TRACKER}/announce", params={"info_hash": b"short"}, timeout=5)
    assert b"failure reason" in decode(reply.content)


def test_control_needs_the_credential_and_the_cli_has_it(healed):
    machine = healed.machine("tracker-1")
    with grpc.insecure_channel(machine.endpoint()) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with machine.control() as control:
        assert "swarms" in control.status().state


def read_bytes(testbed, machine: str, path: str) -> bytes:
    result = testbed.runtime.exec(testbed.machine(machine).container, ["base64", "-w0", path])
    return base64.b64decode(result.output)


def sha1_on(testbed, machine: str, path: str) -> str | None:
    result = testbed.runtime.exec(testbed.machine(machine).container, ["sha1sum", path],
                                  check=False)
    return result.output.split()[0] if result.returncode == 0 else None


def scrape(info_hash: bytes) -> dict:
    reply = requests.get(f"{TRACKER}/scrape", params={"info_hash": info_hash}, timeout=5)
    return decode(reply.content)[b"files"].get(info_hash, {})


@pytest.fixture(scope="module")
def lab_torrent(testbed) -> bytes:
    return eventually(lambda: _try_read(testbed, "seeder-1", LAB_TORRENT), timeout=60,
                      what="the seeder has made the lab's torrent")


def _try_read(testbed, machine: str, path: str) -> bytes | None:
    try:
        return read_bytes(testbed, machine, path)
    except Exception:  # not written yet
        return None


def test_every_leecher_ends_with_the_seeders_file_and_scrape_agrees(healed, lab_torrent):
    metainfo = Metainfo.from_bytes(lab_torrent)

    def digests():
        found = {peer: sha1_on(healed, peer, f"/data/{peer}/{metainfo.name}")
                 for peer in OUR_PEERS}
        return found if len(set(found.values())) == 1 and None not in found.values() else None

    eventually(digests, timeout=120, what="every leecher holds the seeder's file")
    seed = read_bytes(healed, "seeder-1", f"/data/seeder-1/{metainfo.name}")
    assert len(seed) == metainfo.total_length
    size = metainfo.piece_length
    assert all(hashlib.sha1(seed[i * size:(i + 1) * size]).digest() == metainfo.piece_hashes[i * 20:
               (i + 1) * 20] for i in range(metainfo.piece_count))
    eventually(lambda: scrape(metainfo.info_hash).get(b"complete") == len(OUR_PEERS),
               timeout=30, what=f"the tracker's scrape says complete = {len(OUR_PEERS)}")


def test_a_real_client_downloads_from_our_peers(healed, lab_torrent):
    aria2 = ClientMachine(healed, "aria2-1")
    metainfo = aria2.add(lab_torrent)
    key = metainfo.info_hash.hex()
    try:
        eventually(lambda: (t := aria2.torrents().get(key)) and t.progress >= 1.0,
                   timeout=120, what="aria2 completes the lab's torrent from our seeder and "
                   "leechers")
        assert aria2.sha1(metainfo) == sha1_on(healed, "seeder-1",
                                               f"/data/seeder-1/{metainfo.name}")
    finally:
        # An uncapped second seeder would make the scenarios below (the seeder alone, its
        # upload capped) finish before their faults.
        aria2.forget(metainfo)
    # The status file is replaced whole: the key leaves it when the new process writes it.
    eventually(lambda: key not in aria2.torrents(), timeout=60,
               what="aria2, restarted, no longer holds the lab's torrent")


def test_our_leechers_fetch_from_a_real_clients_seed_in_a_mixed_swarm(healed, lab_torrent):
    """Our seeder stopped: libtorrent seeds the lab's file, and our leechers (emptied) and
    aria2 download it together, from libtorrent and from each other."""
    metainfo = Metainfo.from_bytes(lab_torrent)
    payload = read_bytes(healed, "seeder-1", f"/data/seeder-1/{metainfo.name}")
    digest = hashlib.sha1(payload).hexdigest()
    seeder, leecher = ClientMachine(healed, "libtorrent-1"), ClientMachine(healed, "aria2-1")
    ours = [healed.machine(name) for name in OUR_LEECHERS]
    healed.machine("seeder-1").stop()
    try:
        for machine in ours:
            machine.exec(["rm", "-rf", "--", f"/data/{machine.name}"], user=NODE_USER)
            machine.stop(timeout=0)
        seeder.add(lab_torrent, payload)
        key = metainfo.info_hash.hex()
        eventually(lambda: (t := seeder.torrents().get(key)) and t.seeding, timeout=60,
                   what="libtorrent has checked the lab's file and seeds it")
        leecher.add(lab_torrent)
        for machine in ours:
            machine.start()

        def everyone_done():
            found = {name: sha1_on(healed, name, f"/data/{name}/{metainfo.name}")
                     for name in OUR_LEECHERS}
            aria2 = leecher.torrents().get(key)
            return (all(value == digest for value in found.values())
                    and aria2 is not None and aria2.progress >= 1.0)

        eventually(everyone_done, timeout=120, what="our leechers and aria2 complete from "
                   "libtorrent's seed")
        assert leecher.sha1(metainfo) == digest
    finally:
        seeder.forget(metainfo)  # uncapped real seeds would outrun the scenarios' faults
        leecher.forget(metainfo)
        healed.machine("seeder-1").start()


def test_real_clients_trade_through_our_tracker(healed, tmp_path):
    payload = os.urandom(3 * 1024 * 1024 + 12345)  # a last piece shorter than the others
    (tmp_path / "notes.bin").write_bytes(payload)
    subprocess.run([DISTLAB, "bt", "make-torrent", str(tmp_path / "notes.bin"), "--tracker",
                    "http://tracker:6969/announce", "--piece-size", "32KiB",
                    "--out", str(tmp_path / "notes.torrent")],
                   check=True, capture_output=True, timeout=60)
    torrent = (tmp_path / "notes.torrent").read_bytes()
    seeder, leecher = ClientMachine(healed, "libtorrent-1"), ClientMachine(healed, "aria2-1")
    metainfo = seeder.add(torrent, payload)
    key = metainfo.info_hash.hex()
    eventually(lambda: (t := seeder.torrents().get(key)) and t.seeding, timeout=60,
               what="libtorrent has checked the payload and seeds it")
    leecher.add(torrent)
    eventually(lambda: (t := leecher.torrents().get(key)) and t.progress >= 1.0, timeout=120,
               what="aria2 completes from libtorrent through our tracker")
    assert leecher.sha1(metainfo) == hashlib.sha1(payload).hexdigest()
    eventually(lambda: scrape(metainfo.info_hash).get(b"complete") == 2, timeout=30,
               what="the tracker counts both clients complete")


def test_a_killed_tracker_forgets_and_peers_announce_again_after_heal(healed, torrent):
    announce(torrent.info_hash, 1, event="started")
    healed.nemesis.kill("tracker-1")
    with pytest.raises(requests.RequestException):
        requests.get(f"{TRACKER}/announce", timeout=2)
    assert healed.nemesis.heal() == []
    healed.wait_healthy(healed.lab, timeout=120)
    first = eventually(lambda: _try_announce(torrent.info_hash, 2), timeout=30,
                       what="the tracker answers again")
    assert first[b"peers"] == b""  # a restarted tracker knows no peer until they re-announce


def _try_announce(info_hash: bytes, peer: int) -> dict | None:
    try:
        return announce(info_hash, peer, event="started")
    except requests.RequestException:
        return None


# -- what a user watches and runs ----------------------------------------------------------


def test_every_bittorrent_dashboard_query_returns_series(healed):
    assert_dashboards_answer("bittorrent")


@pytest.mark.parametrize("scenario, kinds", [
    ("bittorrent-kill-seeder.py", ["kill"]),
    ("bittorrent-corrupt-peer.yaml", ["migration"]),  # the reconfigure, journaled too
    ("bittorrent-restart-leecher.yaml", ["restart"]),
    ("bittorrent-tracker-down.yaml", ["kill"])])
def test_each_bittorrent_scenario_comes_out_valid(testbed, tmp_path, scenario, kinds):
    """Every leecher ends with the seed's bytes through the fault (the pieces check)."""
    outcome = run_valid(scenario, tmp_path)
    assert [fault["kind"] for fault in outcome["faults"]] == kinds
    (check,) = outcome["checks"]
    assert (check["name"], check["outcome"]) == ("pieces", "valid"), check
    assert testbed.nemesis.active() == [], "a fault outlived its scenario"
