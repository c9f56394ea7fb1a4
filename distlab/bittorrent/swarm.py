"""`distlab bt swarm`: every peer machine's PeerStatus, as one table; and how far the pieces
have spread (`pieces_spread`, for scenarios that wait for every piece to exist somewhere).

`fetch_swarm` asks each running peer machine (role "peer") for its status over gRPC
(the `distlab.peer.PeerStatus` service, with the lab credential) and returns the
replies and a line for each machine that did not answer; `swarm_table` renders them:
peer, client, progress, rates, choke and interest counts, completion. Reads only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from rich.table import Table

from nodes.bittorrent.wire import Bitfield
from nodes.rpc import peer_pb2, peer_pb2_grpc

STATUS_TIMEOUT_SECONDS = 2.0
PEER_ROLE = "peer"


@dataclass(frozen=True)
class PeerView:
    machine: str
    status: peer_pb2.StatusReply


def status_of(channel: grpc.Channel) -> peer_pb2.StatusReply:
    return peer_pb2_grpc.PeerStatusStub(channel).Status(peer_pb2.StatusRequest(),
                                                        timeout=STATUS_TIMEOUT_SECONDS)


def fetch_swarm(machines: Iterable) -> tuple[list[PeerView], list[str]]:
    views, silent = [], []
    for machine in machines:
        if machine.info.role != PEER_ROLE or machine.info.grpc_endpoint is None:
            continue
        channel = machine.protected_channel()
        try:
            views.append(PeerView(machine.name, status_of(channel)))
        except grpc.RpcError as exc:
            silent.append(f"{machine.name}: no answer ({exc.code().name})")
        finally:
            channel.close()
    return views, silent


def pieces_spread(views: Iterable[PeerView]) -> tuple[int, int]:
    """(pieces at least one of `views` holds, pieces in the torrent): every piece "exists
    somewhere" among them when the two are equal."""
    views = [view for view in views if view.status.pieces_total]
    if not views:
        return 0, 0
    total = max(view.status.pieces_total for view in views)
    held = set().union(*(Bitfield(view.status.have).pieces() for view in views))
    return len({index for index in held if index < total}), total


def rate(bytes_per_second: float) -> str:
    for unit, size in (("MiB/s", 1024 * 1024), ("KiB/s", 1024)):
        if bytes_per_second >= size:
            return f"{bytes_per_second / size:.1f} {unit}"
    return f"{bytes_per_second:.0f} B/s"


def swarm_table(views: list[PeerView], title: str = "swarm") -> Table:
    """One row a peer: choked = connections choking us / that we choke; interested = we are
    in / are in us."""
    table = Table(title=title, title_justify="left")
    for column in ("peer", "client", "mode", "progress", "up", "down", "peers",
                   "choked (by/us)", "interested (we/they)", "bad/banned", "completed"):
        table.add_column(column)
    for view in sorted(views, key=lambda v: v.machine):
        status = view.status
        connections = status.connections
        completed = (f"{status.completed_seconds:.1f} s" if status.completed_seconds else
                     "seed" if status.complete else "-")
        table.add_row(
            view.machine, status.client or "-", status.mode,
            f"{status.progress:.0%} ({status.pieces_have}/{status.pieces_total})"
            if status.pieces_total else status.state,
            rate(status.upload_rate), rate(status.download_rate), str(len(connections)),
            f"{sum(c.peer_choking for c in connections)}/{sum(c.am_choking for c in connections)}",
            f"{sum(c.am_interested for c in connections)}/"
            f"{sum(c.peer_interested for c in connections)}",
            f"{status.pieces_bad}/{status.banned}", completed)
    return table
