"""The bittorrent lab's `download` workload and `pieces` check.

The clients of this lab are its own machines: the leechers (every peer machine
that is not the seeder) fetch the torrent from the swarm by themselves. The
workload follows each one through one download and records it in the History:
one operation `download` per leecher, invoked when its download starts and
completed `ok` when the leecher says it is complete (with the bytes), or `info`
when the run ends first (how far it got). It reads only PeerStatus, through the
lab's machines as they are at each poll (`WorkloadStart.machines`), so a
leecher restarted by a fault is found again on its new port; the process ids it
reports tell its incarnations apart, and the bytes each one downloaded add up
to what the leecher fetched in all (a resumed leecher fetches only the rest).

`fresh` (the default) makes every download start with the run: setup empties
each leecher's data directory (DATA_DIR/<machine>, on the lab's volume) and
stops it, and the run starts them all at time zero, so a scenario's faults land
while the pieces are moving and a lab used before does not answer "complete"
at once. Without it the leechers are followed from wherever they are.

The `pieces` check: every leecher finished (none missing), each has the seed's
torrent, and each one's content, as it is on its disk, has the seed's SHA-256
(PeerStatus.content_sha256, made by the peer from its files once complete);
the seed's is read from the seeder when the workload starts. `banned_at_least`
also asks for that many peers banned by the leechers in all (a corrupt peer
scenario: the others must have caught it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from distlab.bittorrent.swarm import PEER_ROLE, status_of
from distlab.checkers import Verdict
from distlab.errors import DistlabError
from distlab.history import INFO, OK, History, Op
from distlab.machine import Machine
from distlab.workloads.clients import ClientConfig, ClientWorkload, describe
from nodes.rpc import peer_pb2

SEEDER_SERVICE = "seeder"  # compose.yaml: the one service whose peers start with the file
NODE_USER = "distlab"  # images/node/Dockerfile: the user the node process runs as
DATA_DIR = "/data"  # the peers' DATA_DIR (compose.yaml), one directory per machine under it
POLL_SECONDS = 1.0
SEED_WAIT_SECONDS = 90.0  # the seeder makes a file and a torrent, then hashes them
DIGEST_WAIT_SECONDS = 30.0  # a complete peer hashes its content within a tick or two
OP = "download"


@dataclass
class DownloadConfig(ClientConfig):
    fresh: bool = True


@dataclass
class Watch:
    """One leecher followed through its download."""

    machine: str
    process: int
    invoke: float = 0.0
    done: bool = False
    last: peer_pb2.StatusReply | None = None
    problem: str = ""  # why the last poll got no status
    # piece bytes each incarnation (process, by its peer id) accepted, as last seen
    downloaded: dict[bytes, int] = field(default_factory=dict)

    def seen(self, status: peer_pb2.StatusReply) -> None:
        self.last, self.problem = status, ""
        self.downloaded[status.peer_id] = status.downloaded


class DownloadWorkload(ClientWorkload):
    name = OP

    def __init__(self, machines: Callable[[], Sequence[Machine]],
                 config: DownloadConfig | None = None, *, history: History | None = None,
                 run_id: str | None = None, first_process: int = 0) -> None:
        super().__init__(config or DownloadConfig(), history=history, run_id=run_id,
                         first_process=first_process)
        self.machines = machines
        self.seed: peer_pb2.StatusReply | None = None
        self.seeder = ""
        self.watches: list[Watch] = []
        self._channels: dict[str, tuple[str, grpc.Channel]] = {}  # machine -> endpoint, channel

    # -- setup ----------------------------------------------------------------------------

    def setup(self, *, deadline_seconds: float = SEED_WAIT_SECONDS) -> None:
        peers = [m for m in self.machines() if m.info.role == PEER_ROLE and m.info.contract]
        seeders = [m for m in peers if m.info.service == SEEDER_SERVICE]
        leechers = sorted((m for m in peers if m.info.service != SEEDER_SERVICE),
                          key=lambda m: m.name)
        if not seeders or not leechers:
            raise DistlabError(f"a download needs a {SEEDER_SERVICE} and leechers; the lab has "
                               f"{', '.join(m.name for m in peers) or 'no peer machine'}",
                               hint="distlab up bittorrent")
        self.seeder = seeders[0].name
        self.seed = self._wait_for_seed(deadline_seconds)
        self.watches = [Watch(m.name, self.first_process + index)
                        for index, m in enumerate(leechers)]
        if self.config.fresh:
            for machine in leechers:
                # Its pieces go; stopped at once (no checkpoint to write them back); the run
                # starts it again with nothing.
                # As the node's own user: root in a machine holds no capability
                # (cap_drop ALL), so it may not delete another user's files.
                machine.exec(["rm", "-rf", "--", f"{DATA_DIR}/{machine.name}"], user=NODE_USER)
                machine.stop(timeout=0)

    def _wait_for_seed(self, seconds: float) -> peer_pb2.StatusReply:
        deadline = time.monotonic() + seconds
        why = "no answer"
        while time.monotonic() < deadline:
            try:
                status = self._status(self.seeder)
            except (grpc.RpcError, DistlabError) as exc:
                why = describe(exc) if isinstance(exc, grpc.RpcError) else str(exc)
            else:
                if status.complete and status.content_sha256:
                    return status
                why = f"state {status.state or 'unknown'}, no content digest yet"
            time.sleep(POLL_SECONDS)
        raise DistlabError(f"{self.seeder} did not report a complete seed within {seconds:.0f} s"
                           f" ({why})", hint=f"distlab logs {self.seeder}")

    # -- the run --------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> History:
        """Start the downloads (fresh) and follow them until each is complete or time is up."""
        stop = stop or threading.Event()
        ends = time.monotonic() + self.config.seconds
        machines = {m.name: m for m in self.machines()}
        for watch in self.watches:
            watch.invoke = self.history.now()
            if self.config.fresh:
                machines[watch.machine].start()
        try:
            while not stop.is_set() and time.monotonic() < ends:
                self._poll([w for w in self.watches if not w.done])
                if all(w.done for w in self.watches):
                    break
                stop.wait(POLL_SECONDS)
            for watch in self.watches:
                if not watch.done:
                    self._record(watch, INFO)
        finally:
            self._close_channels()
        return self.history

    def _poll(self, pending: list[Watch]) -> None:
        for watch in pending:
            try:
                status = self._status(watch.machine)
            except grpc.RpcError as exc:  # down, restarting: found again at the next poll
                watch.problem = describe(exc)
                continue
            except DistlabError as exc:
                watch.problem = str(exc)
                continue
            watch.seen(status)
            if status.complete:
                self._record(watch, OK)

    def _record(self, watch: Watch, kind: str) -> None:
        last = watch.last
        result: dict[str, Any] = {"incarnations": len(watch.downloaded),
                                  "downloaded": sum(watch.downloaded.values())}
        if last is not None:
            result.update(bytes=last.total_bytes, pieces_have=last.pieces_have,
                          pieces_total=last.pieces_total, pieces_bad=last.pieces_bad,
                          banned=last.banned)
        error = "" if kind == OK else ("not complete when the run ended"
                                       + (f" ({watch.problem})" if watch.problem else ""))
        self.history.add(Op(watch.process, OP, {"leecher": watch.machine}, watch.invoke,
                            self.history.now(), kind, result=result, error=error[:200]))
        watch.done = True

    # -- machines -------------------------------------------------------------------------

    def _status(self, name: str) -> peer_pb2.StatusReply:
        """`name`'s PeerStatus, through a channel to where it is published now."""
        machine = next((m for m in self.machines() if m.name == name), None)
        if machine is None or machine.info.state != "running" or not machine.info.grpc_endpoint:
            raise DistlabError(f"{name} is not running")
        endpoint, channel = self._channels.get(name, ("", None))
        if endpoint != machine.info.grpc_endpoint:
            if channel is not None:
                channel.close()
            channel = machine.protected_channel()
            self._channels[name] = (machine.info.grpc_endpoint, channel)
        return status_of(channel)

    def _close_channels(self) -> None:
        for _, channel in self._channels.values():
            channel.close()
        self._channels.clear()

    # -- the check ------------------------------------------------------------------------

    def check(self, *, banned_at_least: int = 0, **_: Any) -> Verdict:
        """Every leecher finished with the seed's bytes (see the module docstring)."""
        if self.seed is None:
            return Verdict("pieces", None, ["the download workload never started"])
        ops = {op.args["leecher"]: op for op in self.history.of(OP)}
        problems, unread = [], []
        for watch in self.watches:
            op = ops.get(watch.machine)
            if op is None or op.type != OK:
                got = (op.result or {}) if op is not None else {}
                problems.append(f"{watch.machine} did not finish: {got.get('pieces_have', 0)}/"
                                f"{got.get('pieces_total', self.seed.pieces_total)} pieces when "
                                f"the run ended" + (f" ({op.error})" if op and op.error else ""))
        finished = [w.machine for w in self.watches if ops.get(w.machine) and
                    ops[w.machine].type == OK]
        statuses = self._final_statuses(finished, unread)
        want = self.seed.content_sha256
        for name, status in statuses.items():
            if status.info_hash != self.seed.info_hash:
                problems.append(f"{name} has another torrent: info hash {status.info_hash}, the "
                                f"seed's is {self.seed.info_hash}")
            elif status.content_sha256 != want:
                problems.append(f"{name}'s content differs from the seed: sha256 "
                                f"{status.content_sha256[:16]}..., the seed's {want[:16]}...")
        # Bans count wherever they happened: an unfinished leecher's last status says too.
        banned = sum(status.banned for status in statuses.values()) + sum(
            (op.result or {}).get("banned", 0) for name, op in ops.items() if name not in statuses)
        if banned < banned_at_least:
            problems.append(f"the leechers banned {banned} peers, expected at least "
                            f"{banned_at_least}: no bad piece was caught")
        if problems:
            valid = False
        elif unread:
            valid, problems = None, unread
        else:
            valid = True
        seconds = [op.latency for op in ops.values() if op.type == OK]
        return Verdict("pieces", valid, problems, {
            "leechers": len(self.watches), "finished": len(finished),
            "compared": len(statuses) - len(unread), "bytes": self.seed.total_bytes,
            "seed_sha256": want, "banned": banned,
            "pieces_bad": sum(status.pieces_bad for status in statuses.values()),
            "slowest_seconds": round(max(seconds), 3) if seconds else None,
            "downloaded": {name: (ops[name].result or {}).get("downloaded") for name in finished}})

    def _final_statuses(self, names: list[str], unread: list[str]
                        ) -> dict[str, peer_pb2.StatusReply]:
        """Each finished leecher's status once it reports its content digest (bounded)."""
        statuses: dict[str, peer_pb2.StatusReply] = {}
        waiting = dict.fromkeys(names, "no answer")
        deadline = time.monotonic() + DIGEST_WAIT_SECONDS
        try:
            while waiting and time.monotonic() < deadline:
                for name in list(waiting):
                    try:
                        status = self._status(name)
                    except grpc.RpcError as exc:
                        waiting[name] = describe(exc)
                        continue
                    except DistlabError as exc:
                        waiting[name] = str(exc)
                        continue
                    if status.complete and status.content_sha256:
                        statuses[name] = status
                        del waiting[name]
                    else:
                        waiting[name] = (f"no content digest (state {status.state}, "
                                         f"{status.pieces_have}/{status.pieces_total} pieces)")
                if waiting:
                    time.sleep(POLL_SECONDS)
        finally:
            self._close_channels()
        unread += [f"{name}: cannot compare its content: {why}" for name, why in waiting.items()]
        return statuses
