"""Peers: who else is in this lab, and which of them answer.

`FailureDetector` is the sans-I/O heartbeat detector (rise/fall thresholds,
like HAProxy's and Envoy's active health checks). `discover` turns the PEERS
setting (DNS names) into machine names and addresses. `Heartbeat` is the
thread that health-checks every peer each interval through the node's
channels, so every check shows in the client metrics and obeys fault rules.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.exception
import dns.resolver
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodes.common.channel import Channels
from nodes.common.config import own_ip
from nodes.common.logs import EventLog
from nodes.common.metrics import NodeMetrics


@dataclass
class PeerHealth:
    up: bool = False
    streak: int = 0  # consecutive results that disagree with `up`


class FailureDetector:
    """A peer goes down after `fall` failed checks in a row and comes back after `rise` good ones.

    A newly seen peer starts down and must pass `rise` checks first, so a
    machine that is still starting is not reported up too early.
    """

    def __init__(self, *, rise: int, fall: int) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self._peers: dict[str, PeerHealth] = {}

    def observe(self, peer: str, ok: bool) -> bool | None:
        """Record one check; return the new verdict when it changed, else None."""
        health = self._peers.setdefault(peer, PeerHealth())
        if ok == health.up:
            health.streak = 0
            return None
        health.streak += 1
        if health.streak >= (self.rise if ok else self.fall):
            health.up, health.streak = ok, 0
            return ok
        return None

    def is_up(self, peer: str) -> bool:
        health = self._peers.get(peer)
        return bool(health and health.up)

    def verdicts(self) -> dict[str, bool]:
        return {peer: health.up for peer, health in self._peers.items()}


def machine_name_of(address: str) -> str | None:
    """The machine name Docker's DNS gives `address`: `<project>-<service>-<n>.<network>`.

    Asks the resolver in /etc/resolv.conf directly: the system lookup reads
    /etc/hosts first, where a container finds only its own id for itself.
    """
    try:
        answer = dns.resolver.resolve_address(address, lifetime=1.0)
        full = str(answer[0].target).rstrip(".")
    except (dns.exception.DNSException, OSError, IndexError):
        return None
    container = full.split(".")[0]
    project, _, rest = container.partition("-")
    return rest if project and rest else container


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return True


def discover(entries: Iterable[str], *, default_port: int, own_targets: set[str],
             resolve: Callable[[str], list[str]] | None = None,
             name_of: Callable[[str], str | None] = machine_name_of) -> dict[str, str]:
    """Map each peer's machine name to its `ip:port`, leaving out this node itself.

    An entry is `host[:port]`; a DNS name may resolve to many replicas. Literal
    addresses (tests on loopback) are named by the entry itself.
    """
    resolve = resolve or resolve_ipv4
    peers: dict[str, str] = {}
    for entry in entries:
        host, _, port_text = entry.partition(":")
        port = int(port_text) if port_text else default_port
        try:
            addresses = resolve(host)
        except OSError:
            continue  # a service with no running replica resolves to nothing: no peer yet
        for address in addresses:
            target = f"{address}:{port}"
            if target in own_targets:
                continue
            name = f"{host}:{port}" if _is_literal(host) else (name_of(address) or address)
            peers[name] = target
    return peers


def resolve_ipv4(host: str) -> list[str]:
    """Every IPv4 address of `host`; a Compose service name gives every running replica."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return []  # a service with no running replica resolves to nothing yet
    return sorted({info[4][0] for info in infos})


def own_targets(port: int) -> set[str]:
    targets = {f"127.0.0.1:{port}", f"localhost:{port}"}
    address = own_ip()
    if address:
        targets.add(f"{address}:{port}")
    return targets


class Heartbeat:
    """Health-checks every peer each interval and keeps the detector's verdicts current."""

    def __init__(self, *, entries: tuple[str, ...], port: int, interval: float,
                 detector: FailureDetector, channels: Channels, metrics: NodeMetrics,
                 log: EventLog) -> None:
        self._entries = entries
        self._port = port
        self._interval = interval
        self._detector = detector
        self._channels = channels
        self._metrics = metrics
        self._log = log
        self._targets: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        if self._entries:
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval * 2 + 1)

    def peers(self) -> list[tuple[str, str, bool]]:
        with self._lock:
            targets = dict(self._targets)
        return [(name, target, self._detector.is_up(name)) for name, target in
                sorted(targets.items())]

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.check_once()
            self._stopped.wait(self._interval)

    def check_once(self) -> None:
        found = discover(self._entries, default_port=self._port,
                         own_targets=own_targets(self._port))
        with self._lock:
            for name, target in found.items():
                if self._targets.get(name) != target:
                    old = self._targets.get(name)
                    if old is not None:
                        self._channels.forget(old, name)  # restarted with a new address
                    self._targets[name] = target
                    self._log.info("peer_discovered", peer=name, address=target)
            targets = dict(self._targets)
        timeout = max(0.05, min(self._interval, 2.0) * 0.8)
        pending = {}
        for name, target in targets.items():
            stub = health_pb2_grpc.HealthStub(self._channels.get(target, name))
            pending[name] = stub.Check.future(health_pb2.HealthCheckRequest(), timeout=timeout)
        for name, future in pending.items():
            try:
                ok = future.result().status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                ok = False
            verdict = self._detector.observe(name, ok)
            self._metrics.peer_up.labels(peer=name).set(1 if self._detector.is_up(name) else 0)
            if verdict is not None:
                self._log.info("peer_up" if verdict else "peer_down", peer=name,
                               address=targets[name])
