"""A real BitTorrent client as a machine of the bittorrent lab: aria2 or libtorrent.

The client does all of the protocol with its own code. This supervisor only does what a
person at the client's window would: it hands the client every torrent dropped into
/data/torrents (the payload, if any, already in /data/downloads is checked and seeded by
the client itself), and writes what the client reports to /data/status.json once a
second, which the host reads (`distlab bt swarm`, the e2e tests). Health: the status file
is fresh. Runs with Debian's python3 and its standard library only, plus libtorrent's
binding for that client; it never sees the lab's credential.

    btclient.py --client aria2|libtorrent [--port 6881] [--upload-limit B/s]
                [--download-limit B/s]
    btclient.py --health         exit 0 when the status file is less than 10 s old
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DATA = Path(os.environ.get("BTCLIENT_DATA", "/data"))
TORRENTS = DATA / "torrents"
DOWNLOADS = DATA / "downloads"
STATUS = DATA / "status.json"
STALE_AFTER_SECONDS = 10.0
# How often the status file is written: each second in a lab, finer when a benchmark times
# a transfer that takes a second (bench/bittorrent_clients.py).
STATUS_SECONDS = float(os.environ.get("BTCLIENT_STATUS_SECONDS", "1.0"))
ARIA2_RPC_PORT = 6800


class Aria2:
    """aria2c as a daemon, driven through its JSON-RPC interface on loopback."""

    name = "aria2"

    def __init__(self, port: int, upload_limit: int, download_limit: int) -> None:
        self.secret = secrets.token_hex(16)  # only this machine's processes reach the port
        self.process = subprocess.Popen([
            "aria2c", "--enable-rpc", f"--rpc-listen-port={ARIA2_RPC_PORT}",
            "--rpc-listen-all=false", f"--rpc-secret={self.secret}",
            f"--dir={DOWNLOADS}", f"--listen-port={port}", "--disable-ipv6",
            "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
            "--seed-ratio=0.0",  # 0.0: seed for as long as the machine runs
            "--check-integrity=true", "--bt-hash-check-seed=true", "--follow-torrent=false",
            f"--max-overall-upload-limit={upload_limit}",
            f"--max-overall-download-limit={download_limit}",
            "--console-log-level=warn", "--summary-interval=0", "--auto-save-interval=5",
        ])
        self.version = self._wait_for_rpc()

    def _call(self, method: str, *params):
        body = json.dumps({"jsonrpc": "2.0", "id": "btclient", "method": method,
                           "params": [f"token:{self.secret}", *params]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{ARIA2_RPC_PORT}/jsonrpc", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            return json.load(reply)["result"]

    def _wait_for_rpc(self) -> str:
        deadline = time.monotonic() + 30
        while True:
            try:
                return "aria2 " + self._call("aria2.getVersion")["version"]
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("aria2c did not start its RPC interface") from None
                time.sleep(0.2)

    def add(self, torrent: Path) -> None:
        self._call("aria2.addTorrent", base64.b64encode(torrent.read_bytes()).decode(), [],
                   {"dir": str(DOWNLOADS)})

    def torrents(self) -> list[dict]:
        keys = ["gid", "status", "infoHash", "totalLength", "completedLength", "uploadLength",
                "downloadSpeed", "uploadSpeed", "connections", "seeder", "bittorrent"]
        found = []
        for group in (self._call("aria2.tellActive", keys),
                      self._call("aria2.tellWaiting", 0, 1000, keys),
                      self._call("aria2.tellStopped", 0, 1000, keys)):
            for item in group:
                if "infoHash" not in item:
                    continue
                total, done = int(item["totalLength"]), int(item["completedLength"])
                found.append({
                    "info_hash": item["infoHash"],
                    "name": item.get("bittorrent", {}).get("info", {}).get("name", ""),
                    "state": item["status"], "total": total, "done": done,
                    "progress": done / total if total else 0.0,
                    "uploaded": int(item["uploadLength"]),
                    "download_rate": int(item["downloadSpeed"]),
                    "upload_rate": int(item["uploadSpeed"]),
                    "peers": int(item["connections"]),
                    "seeding": item.get("seeder") == "true"})
        return found

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Libtorrent:
    """libtorrent-rasterbar's session, in this process."""

    name = "libtorrent"

    def __init__(self, port: int, upload_limit: int, download_limit: int) -> None:
        import libtorrent as lt

        self.lt = lt
        self.version = f"libtorrent {lt.__version__}"
        self.session = lt.session({
            "listen_interfaces": f"0.0.0.0:{port}",
            "enable_dht": False, "enable_lsd": False, "enable_upnp": False,
            "enable_natpmp": False, "upload_rate_limit": upload_limit,
            "download_rate_limit": download_limit,
            "alert_mask": lt.alert.category_t.error_notification})
        # libtorrent exempts peers on private networks from rate limits (its local peer
        # class). Every peer of the lab is on one, and the limits model link capacities,
        # so every address goes to the global, limited class.
        every_address = lt.ip_filter()
        every_address.add_rule("0.0.0.0", "255.255.255.255",
                               1 << lt.session.global_peer_class_id)
        self.session.set_peer_class_filter(every_address)
        self.handles = []

    def add(self, torrent: Path) -> None:
        info = self.lt.torrent_info(str(torrent))
        self.handles.append(self.session.add_torrent({"ti": info, "save_path": str(DOWNLOADS)}))

    def torrents(self) -> list[dict]:
        found = []
        for handle in self.handles:
            status = handle.status()
            found.append({
                "info_hash": str(status.info_hashes.v1), "name": status.name,
                "state": str(status.state), "total": status.total_wanted,
                "done": status.total_wanted_done, "progress": status.progress,
                "uploaded": status.all_time_upload,
                "download_rate": status.download_payload_rate,
                "upload_rate": status.upload_payload_rate, "peers": status.num_peers,
                "seeding": status.is_seeding})
        return found

    def close(self) -> None:
        self.session.pause()


CLIENTS = {"aria2": Aria2, "libtorrent": Libtorrent}


def adopt(path: Path) -> None:
    """Make a payload the host copied in (owned by root, read-only to us) this client's own,
    so it can seed it, and write beside it if the torrent is not complete yet."""
    if path.is_dir():
        if path.stat().st_uid != os.getuid():
            temporary = path.with_name(f".{path.name}.adopting")
            shutil.copytree(path, temporary)
            shutil.rmtree(path, ignore_errors=True)
            temporary.rename(path)
        for child in path.iterdir():
            adopt(child)
    elif path.is_file() and path.stat().st_uid != os.getuid():
        temporary = path.with_name(f".{path.name}.adopting")
        shutil.copyfile(path, temporary)
        os.replace(temporary, path)


def write_status(client, started: float) -> None:
    status = {"client": client.name, "version": client.version, "updated": time.time(),
              "uptime": time.time() - started, "torrents": client.torrents()}
    temporary = STATUS.with_suffix(".tmp")
    temporary.write_text(json.dumps(status))
    os.replace(temporary, STATUS)


def healthy() -> int:
    try:
        age = time.time() - json.loads(STATUS.read_text())["updated"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"unhealthy: no status yet ({exc})", file=sys.stderr)
        return 1
    if age > STALE_AFTER_SECONDS:
        print(f"unhealthy: status is {age:.0f} s old", file=sys.stderr)
        return 1
    return 0


def serve(arguments: argparse.Namespace) -> int:
    TORRENTS.mkdir(parents=True, exist_ok=True)
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    client = CLIENTS[arguments.client](arguments.port, arguments.upload_limit,
                                       arguments.download_limit)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    started, added = time.time(), set()
    print(json.dumps({"event": "started", "client": client.version}), flush=True)
    try:
        while not stopping:
            for torrent in sorted(TORRENTS.glob("*.torrent")):
                if torrent.name in added:
                    continue
                for payload in DOWNLOADS.iterdir():
                    adopt(payload)
                try:
                    client.add(torrent)
                except Exception as exc:  # a torrent the client refuses must not stop it
                    print(json.dumps({"event": "refused", "torrent": torrent.name,
                                      "error": str(exc)}), flush=True)
                else:
                    print(json.dumps({"event": "added", "torrent": torrent.name}), flush=True)
                added.add(torrent.name)
            write_status(client, started)
            time.sleep(STATUS_SECONDS)
    finally:
        client.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=sorted(CLIENTS), default="libtorrent")
    parser.add_argument("--port", type=int, default=6881)
    parser.add_argument("--upload-limit", type=int, default=0, help="bytes/s, 0: none")
    parser.add_argument("--download-limit", type=int, default=0, help="bytes/s, 0: none")
    parser.add_argument("--health", action="store_true")
    arguments = parser.parse_args()
    return healthy() if arguments.health else serve(arguments)


if __name__ == "__main__":
    sys.exit(main())
