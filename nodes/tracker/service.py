"""The tracker node: the swarm core behind the HTTP tracker and the gRPC status service.

`TrackerNode` (built by the node bootstrap, nodes.common.server) owns one `Tracker`
(nodes.tracker.swarm), starts the HTTP tracker (nodes.tracker.http) on
TRACKER_HTTP_PORT once gRPC serves, sweeps out peers that missed their announces,
exports the swarm gauges, and answers the read-only `distlab.tracker.Tracker`
service and Control's status. On close (SIGTERM) the HTTP tracker stops accepting
and gets GRACE_SECONDS for requests in flight. Swarms live in memory only: after a
restart the tracker knows no one until peers announce again, as real trackers do.
"""

from __future__ import annotations

import threading

import grpc
from prometheus_client import Gauge

from nodes.common.config import ConfigError
from nodes.common.role import NodeContext, RoleNode
from nodes.rpc import tracker_pb2, tracker_pb2_grpc
from nodes.tracker.http import TrackerHTTPServer, TrackerMetrics, TrackerPolicy
from nodes.tracker.swarm import Tracker
from nodes.tracker.udp import UDPTrackerProtocol, UDPTrackerServer

SERVICE_NAME = tracker_pb2.DESCRIPTOR.services_by_name["Tracker"].full_name
LIST_LIMIT = 1000
MAX_SWEEP_SECONDS = 5.0


class TrackerNode(RoleNode, tracker_pb2_grpc.TrackerServicer):
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        self._ctx = ctx
        interval = config["TRACKER_INTERVAL_SECONDS"]
        if config["TRACKER_MIN_INTERVAL_SECONDS"] > interval:
            raise ConfigError("TRACKER_MIN_INTERVAL_SECONDS must not exceed "
                              "TRACKER_INTERVAL_SECONDS")
        if config["TRACKER_DEFAULT_NUMWANT"] > config["TRACKER_MAX_NUMWANT"]:
            raise ConfigError("TRACKER_DEFAULT_NUMWANT must not exceed TRACKER_MAX_NUMWANT")
        peer_timeout = interval * (config["TRACKER_MISSED_ANNOUNCES"] + 1)
        self.tracker = Tracker(peer_timeout=peer_timeout,
                               max_swarms=config["TRACKER_MAX_SWARMS"],
                               max_peers_per_swarm=config["TRACKER_MAX_PEERS_PER_SWARM"])
        self.policy = TrackerPolicy(
            interval=interval, min_interval=config["TRACKER_MIN_INTERVAL_SECONDS"],
            default_numwant=config["TRACKER_DEFAULT_NUMWANT"],
            max_numwant=config["TRACKER_MAX_NUMWANT"],
            max_scrape_hashes=config["TRACKER_MAX_SCRAPE_HASHES"])
        self.metrics = TrackerMetrics(ctx.registry)
        self._sweep_seconds = min(MAX_SWEEP_SECONDS, peer_timeout / 4)
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.http: TrackerHTTPServer | None = None
        self.udp: UDPTrackerServer | None = None
        Gauge("distlab_tracker_swarms", "Swarms (torrents) with at least one peer.",
              registry=ctx.registry).set_function(lambda: self.tracker.totals().swarms)
        peers = Gauge("distlab_tracker_peers", "Peers in every swarm, by state.", ["state"],
                      registry=ctx.registry)
        peers.labels(state="seeder").set_function(lambda: self.tracker.totals().seeders)
        peers.labels(state="leecher").set_function(lambda: self.tracker.totals().leechers)

    def register(self, server: grpc.Server) -> None:
        tracker_pb2_grpc.add_TrackerServicer_to_server(self, server)

    def serving(self, grpc_port: int) -> None:
        config = self._ctx.config
        self.http = TrackerHTTPServer(
            ("0.0.0.0", config["TRACKER_HTTP_PORT"]), tracker=self.tracker,
            policy=self.policy, metrics=self.metrics, log=self._ctx.log,
            timeout=config["TRACKER_HTTP_TIMEOUT_SECONDS"],
            max_connections=config["TRACKER_HTTP_MAX_CONNECTIONS"])
        self.udp = UDPTrackerServer(
            ("0.0.0.0", config["TRACKER_UDP_PORT"]),
            protocol=UDPTrackerProtocol(self.tracker, self.policy), metrics=self.metrics,
            log=self._ctx.log)
        for name, server in (("tracker-http", self.http), ("tracker-udp", self.udp)):
            threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        self._sweeper = threading.Thread(target=self._sweep, name="tracker-sweep", daemon=True)
        self._sweeper.start()
        self._ctx.log.info("tracker_started", http_port=self.http.port, udp_port=self.udp.port,
                           interval_seconds=self.policy.interval,
                           peer_timeout_seconds=self.tracker.peer_timeout)

    def _sweep(self) -> None:
        while not self._stopping.wait(self._sweep_seconds):
            expired = self.tracker.expire()
            if expired:
                self.metrics.expired.inc(expired)
                self._ctx.log.info("tracker_peers_expired", peers=expired)

    def status(self) -> dict[str, str]:
        totals = self.tracker.totals()
        return {"swarms": str(totals.swarms), "seeders": str(totals.seeders),
                "leechers": str(totals.leechers),
                "http_port": str(self.http.port if self.http else 0),
                "udp_port": str(self.udp.port if self.udp else 0)}

    def close(self) -> None:
        self._stopping.set()
        if self.udp is not None:
            self.udp.shutdown()  # a datagram being answered finishes first
            self.udp.server_close()
        if self.http is not None:
            self.http.drain(self._ctx.config["GRACE_SECONDS"])
        if self._sweeper is not None:
            self._sweeper.join()

    # -- distlab.tracker.Tracker ---------------------------------------------------------

    def Swarms(self, request, context):
        limit = _limit(request.limit, context)
        counts = self.tracker.scrape()
        return tracker_pb2.SwarmsReply(
            swarms=[tracker_pb2.Swarm(info_hash=swarm.info_hash.hex(), seeders=swarm.complete,
                                      leechers=swarm.incomplete, completed=swarm.downloaded)
                    for swarm in counts[:limit]],
            truncated=len(counts) > limit, http_port=self.http.port if self.http else 0,
            udp_port=self.udp.port if self.udp else 0, interval_seconds=self.policy.interval)

    def Peers(self, request, context):
        limit = _limit(request.limit, context)
        try:
            info_hash = bytes.fromhex(request.info_hash)
        except ValueError:
            info_hash = b""
        if len(info_hash) != 20:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"info_hash {request.info_hash[:60]!r} is not 40 hex digits")
        peers = self.tracker.peers(info_hash)
        if peers is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no swarm {request.info_hash}")
        return tracker_pb2.PeersReply(
            peers=[tracker_pb2.Peer(
                peer_id=peer.peer_id, ip=str(peer.endpoint.ip), port=peer.endpoint.port,
                seeder=peer.seeder, uploaded=peer.uploaded, downloaded=peer.downloaded,
                left=-1 if peer.left is None else peer.left,
                seconds_since_announce=self.tracker.seconds_since(peer.last_announce))
                for peer in peers[:limit]],
            truncated=len(peers) > limit)


def _limit(asked: int, context) -> int:
    if asked > LIST_LIMIT:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"limit {asked} is above the cap of {LIST_LIMIT}")
    return asked or LIST_LIMIT
