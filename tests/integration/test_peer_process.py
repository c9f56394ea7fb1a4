"""`python -m nodes.peer` as a real process: --help, a bad variable, JSON logs, a seeder that
makes its torrent and announces, and SIGTERM: `stopped` told to the tracker, exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

from nodes.bittorrent.bencode import decode
from nodes.bittorrent.metainfo import Metainfo
from nodes.tracker.__main__ import SPEC as TRACKER_SPEC
from tests.integration.conftest import credential_file


def peer_env(tmp_path, **overrides) -> dict[str, str]:
    env = {**os.environ, "NODE_NAME": "seeder-9", "GRPC_PORT": "0", "METRICS_PORT": "0",
           "PEER_PORT": "0", "DATA_DIR": str(tmp_path / "data"), "GRACE_SECONDS": "5",
           "PEER_TORRENT": str(tmp_path / "movie.torrent"),
           "CREDENTIAL_FILE": credential_file(tmp_path)}
    env.update(overrides)
    return env


def test_help_lists_the_peer_settings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nodes.peer", "--help"], capture_output=True,
                          text=True, env=peer_env(tmp_path), timeout=30)
    assert done.returncode == 0
    for name in ("PEER_TORRENT", "PEER_SEED_PATH", "PEER_PORT", "PEER_MODE",
                 "PEER_UPLOAD_RATE_BYTES", "PEER_DOWNLOAD_RATE_BYTES", "PEER_RECHOKE_SECONDS",
                 "PEER_OPTIMISTIC_SECONDS", "GRPC_PORT", "METRICS_PORT"):
        assert name in done.stdout


def test_a_bad_variable_exits_2_naming_it(tmp_path):
    for name, value in (("PEER_MODE", "leech-harder"), ("PEER_PORT", "70000"),
                        ("PEER_UPLOAD_RATE_BYTES", "-1"), ("PEER_TORRENT", "")):
        done = subprocess.run([sys.executable, "-m", "nodes.peer"], capture_output=True,
                              text=True, env=peer_env(tmp_path, **{name: value}), timeout=30)
        assert done.returncode == 2, (name, done.stderr)
        assert name in done.stderr and "Traceback" not in done.stderr


def test_a_seeder_announces_and_on_sigterm_tells_the_tracker_it_left(lab, tmp_path):
    tracker = lab.start("tracker-1", spec=TRACKER_SPEC, TRACKER_HTTP_PORT=0, TRACKER_UDP_PORT=0)
    url = f"http://127.0.0.1:{tracker.role.http.port}/announce"
    seed = tmp_path / "seed" / "movie.bin"  # made by the seeder: PEER_SEED_BYTES
    process = subprocess.Popen(
        [sys.executable, "-m", "nodes.peer"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=peer_env(tmp_path, PEER_SEED_PATH=str(seed), PEER_SEED_BYTES="300000",
                                PEER_TRACKER_URL=url))
    try:
        events = {}
        while "peer_started" not in events:
            line = json.loads(process.stdout.readline())
            events[line["event"]] = line
        assert seed.stat().st_size == 300_000
        assert events["peer_torrent_made"]["magnet"].startswith("magnet:?xt=urn:btih:")
        assert events["peer_pieces_found"]["pieces_have"] == events["peer_started"]["pieces_total"]
        info_hash = Metainfo.from_bytes((tmp_path / "movie.torrent").read_bytes()).info_hash
        scrape_url = url.replace("/announce", "/scrape") + "?info_hash=" + \
            urllib.parse.quote_from_bytes(info_hash, safe="")

        def seeders() -> int:
            with urllib.request.urlopen(scrape_url, timeout=5) as reply:
                files = decode(reply.read())[b"files"]
            return files[info_hash][b"complete"] if info_hash in files else 0

        lab.wait_until(lambda: seeders() == 1, what="the seeder announced")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert seeders() == 0
        rest = [json.loads(line) for line in process.stdout.read().splitlines()]
        assert rest[-1]["event"] == "node_stopped"
        assert "peer_stopped" in {line["event"] for line in rest}
        assert all({"ts", "node", "role", "event"} <= set(line) for line in rest)
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()
