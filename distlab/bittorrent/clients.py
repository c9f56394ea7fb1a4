"""The real BitTorrent clients of the lab (aria2, libtorrent), seen from the host.

A client machine (images/btclients) takes a torrent dropped into its /data/torrents and
checks and seeds whatever payload is already in /data/downloads; it writes what its client
reports to /data/status.json. This module does the dropping and the reading, through the
Testbed's runtime (so it works wherever the machines run). Used by the e2e tests, and by
the workloads and commands that put real clients into a swarm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from distlab.errors import DistlabError
from distlab.testbed import Testbed
from nodes.bittorrent.metainfo import Metainfo

TORRENTS = "/data/torrents"
DOWNLOADS = "/data/downloads"
STATUS = "/data/status.json"
CLIENT_ROLES = ("aria2", "libtorrent")
CLIENT_USER = "btclient"  # images/btclients/Dockerfile: owns /data (no capability as root)


@dataclass(frozen=True)
class ClientTorrent:
    """One torrent as a real client reports it."""

    info_hash: str
    state: str
    progress: float
    done: int
    total: int
    uploaded: int
    download_rate: int
    upload_rate: int
    peers: int
    seeding: bool


class ClientMachine:
    """One real-client machine of a running lab, by name (`aria2-1`)."""

    def __init__(self, testbed: Testbed, name: str) -> None:
        machine = testbed.machine(name)
        if machine.info.role not in CLIENT_ROLES:
            raise DistlabError(f"{name} is not a real BitTorrent client",
                               hint=f"client machines have the roles {', '.join(CLIENT_ROLES)}")
        self.name, self.container = machine.name, machine.container
        self.runtime = testbed.runtime

    def add(self, torrent: bytes, payload: bytes | None = None) -> Metainfo:
        """Give the client a single-file torrent; with its payload, the client checks it
        and seeds, without it the client downloads."""
        metainfo = Metainfo.from_bytes(torrent)
        if metainfo.multi_file:
            raise DistlabError("only single-file torrents are handed to real clients here")
        if payload is not None:
            self.runtime.put_file(self.container, f"{DOWNLOADS}/{metainfo.name}", payload)
        self.runtime.put_file(self.container, f"{TORRENTS}/{metainfo.info_hash.hex()}.torrent",
                              torrent)
        return metainfo

    def forget(self, metainfo: Metainfo) -> None:
        """Take a torrent and its payload away: the client keeps no session, so once
        restarted it holds only the torrents left in its folder."""
        self.runtime.exec(self.container, [
            "rm", "-f", "--", f"{TORRENTS}/{metainfo.info_hash.hex()}.torrent",
            f"{DOWNLOADS}/{metainfo.name}"], user=CLIENT_USER)
        self.runtime.restart(self.container, 10.0)

    def torrents(self) -> dict[str, ClientTorrent]:
        """{infohash hex: what the client says of it}; empty until its first status."""
        return self.report()[1]

    def report(self) -> tuple[float, dict[str, ClientTorrent]]:
        """When the client last wrote its status (Unix time; 0 before the first) and its
        torrents as `torrents` gives them."""
        result = self.runtime.exec(self.container, ["cat", STATUS], check=False)
        if result.returncode != 0:
            return 0.0, {}
        try:
            status = json.loads(result.output)
            updated, reported = float(status["updated"]), status["torrents"]
        except (ValueError, KeyError, TypeError):
            return 0.0, {}
        fields = ClientTorrent.__dataclass_fields__
        return updated, {item["info_hash"]: ClientTorrent(**{k: item[k] for k in fields})
                         for item in reported}

    def sha1(self, metainfo: Metainfo) -> str:
        """The SHA-1 of the file the client has written for `metainfo`."""
        result = self.runtime.exec(self.container, ["sha1sum", f"{DOWNLOADS}/{metainfo.name}"])
        return result.output.split()[0]
