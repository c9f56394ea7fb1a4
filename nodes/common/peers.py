"""Peers: who else is in this lab, and which of them answer.

`discover` turns the PEERS setting (DNS names) into machine names and
addresses. `HealthChecks` health-checks a set of targets through the node's
channels (so every check shows in the client metrics and obeys fault rules)
and feeds each answer to a detector; `Heartbeat` is the peer watcher every
node runs with it, and the data-master checks the chain with it.

The detector is phi accrual (nodes.common.phi). A check's answer is one of:
- a heartbeat: SERVING;
- a refusal, definite: the connection was refused, the peer (or its path)
  answered an error status, or it said it does not serve. PEER_FALL of them
  in a row make the peer down at once;
- silence: the deadline passed. Only evidence: the peer is down once phi
  reaches PEER_PHI_THRESHOLD. Phi follows the checks' own rhythm, so a peer
  whose answers come late and irregularly (a busy machine) is given more
  time before it is suspected, and one that answers like clockwork is
  suspected soon after it stops; PEER_ACCEPTABLE_PAUSE_SECONDS is silence
  always forgiven on top (a stop-the-world pause, a scheduler hiccup).
Settings (every node): PEER_INTERVAL_SECONDS (how often each peer is
checked; a check's deadline is 0.8 x that, at most 1.6 s), PEER_PHI_THRESHOLD,
PEER_ACCEPTABLE_PAUSE_SECONDS, PEER_FALL, PEER_RISE (heartbeats in a row
before a down or new peer is up). The window (`nodes.common.phi.DEFAULT_WINDOW`
inter-arrival times) and the minimum standard deviation (a tenth of the
interval, as Akka's 100 ms at 1 s) are fixed.

`FailureDetector` is the older rise/fall detector (HAProxy's and Envoy's
active health checks): the switch's backends keep it, and the data-master
offers it as CHAIN_CHECK_DETECTOR=fixed for comparison.
"""

from __future__ import annotations

import ipaddress
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.resolver
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodes.common.channel import Channels
from nodes.common.config import own_ip
from nodes.common.logs import EventLog
from nodes.common.metrics import NodeMetrics
from nodes.common.phi import PhiDetector

#: A heartbeat's minimum standard deviation, as a share of the interval between checks.
MIN_STD_DEVIATION_SHARE = 0.1
#: Codes that mean "no answer in time": silence, which phi weighs. Every other error is an
#: answer that says no.
SILENCE_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
HEARTBEAT, REFUSED, SILENT = "heartbeat", "refused", "silent"


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


class CountingDetector:
    """`FailureDetector` behind `PhiDetector`'s methods: every failed check counts, a
    timeout like a refusal, and `fall` in a row make a peer down. The old data-master
    detector, kept so the two can be measured side by side (bench.failover)."""

    def __init__(self, *, rise: int, fall: int) -> None:
        self._counts = FailureDetector(rise=rise, fall=fall)

    def presume_up(self, peer: str, now: float) -> bool | None:
        verdict = None
        while not self._counts.is_up(peer):
            verdict = self._counts.observe(peer, True)
        return verdict

    def heartbeat(self, peer: str, now: float) -> bool | None:
        return self._counts.observe(peer, True)

    def refused(self, peer: str, now: float) -> bool | None:
        return self._counts.observe(peer, False)

    silent = refused

    def judge(self, peer: str, now: float) -> bool | None:
        return None

    def is_up(self, peer: str) -> bool:
        return self._counts.is_up(peer)

    def verdicts(self) -> dict[str, bool]:
        return self._counts.verdicts()


def phi_detector(*, interval: float, threshold: float, acceptable_pause: float, rise: int,
                 fall: int) -> PhiDetector:
    """A detector for checks every `interval` seconds, with the fixed parts set here."""
    return PhiDetector(threshold=threshold, first_interval=interval,
                       acceptable_pause=acceptable_pause,
                       min_std_deviation=interval * MIN_STD_DEVIATION_SHARE, rise=rise, fall=fall)


def answer_kind(future: Any) -> tuple[str, str]:
    """HEARTBEAT, REFUSED or SILENT: what a finished health check says about its target,
    and the status it came back with (for the logs: why a peer was taken for down)."""
    try:
        status = future.result().status
    except grpc.RpcError as exc:
        return (SILENT if exc.code() in SILENCE_CODES else REFUSED), exc.code().name
    serving = status == health_pb2.HealthCheckResponse.SERVING
    return (HEARTBEAT if serving else REFUSED), health_pb2.HealthCheckResponse.ServingStatus.Name(
        status)


class HealthChecks:
    """Health-checks targets, at most one check in flight per target, and feeds a detector.

    `round(targets)` sends a check to every target that has none in flight, takes
    the answers as they come (each at the time it arrived) until every check is
    back or `wait` seconds pass, then asks the detector about everyone (silence
    grows while a check hangs) and returns the verdicts that changed, in order.
    A check that outlives its round is taken in a later one. The detector is
    touched only under `lock` and only on the caller's thread.
    """

    def __init__(self, *, channels: Channels, detector: Any, timeout: float,
                 lock: AbstractContextManager | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._channels = channels
        self.detector = detector
        self._timeout = timeout
        self._lock = lock if lock is not None else threading.Lock()
        self._clock = clock
        self._in_flight: set[str] = set()
        self._answers: queue.SimpleQueue[tuple[str, tuple[str, str], float]] = \
            queue.SimpleQueue()
        self._last_answer: dict[str, tuple[str, str, float]] = {}  # name -> kind, status, at

    def round(self, targets: Mapping[str, str], wait: float) -> list[tuple[str, bool]]:
        deadline = self._clock() + wait
        for name, target in targets.items():
            if name in self._in_flight:
                continue
            self._in_flight.add(name)
            stub = health_pb2_grpc.HealthStub(self._channels.get(target, name))
            future = stub.Check.future(health_pb2.HealthCheckRequest(), timeout=self._timeout)
            future.add_done_callback(
                lambda done, name=name: self._answers.put((name, answer_kind(done),
                                                           self._clock())))
        changes: list[tuple[str, bool]] = []
        while self._in_flight:
            try:
                answer = self._answers.get(timeout=max(0.0, deadline - self._clock()))
            except queue.Empty:
                break
            self._take(answer, targets, changes)
        while True:  # answers of checks that outlived an earlier round and came in meanwhile
            try:
                self._take(self._answers.get_nowait(), targets, changes)
            except queue.Empty:
                break
        now = self._clock()
        with self._lock:
            for name in targets:
                verdict = self.detector.judge(name, now)
                if verdict is not None:
                    changes.append((name, verdict))
        return changes

    def why(self, name: str) -> str:
        """What the last check of `name` said, and, where the detector weighs silence, the
        suspicion now: the reason a verdict changed, for the log line that reports it."""
        kind, status, when = self._last_answer.get(name, ("no answer yet", "", 0.0))
        now = self._clock()
        said = f"last check {kind} ({status}) {now - when:.2f} s ago" if status else kind
        phi = getattr(self.detector, "phi", None)
        return said if phi is None else f"{said}, phi {phi(name, now):.1f}"

    def _take(self, answer: tuple[str, tuple[str, str], float], targets: Mapping[str, str],
              changes: list[tuple[str, bool]]) -> None:
        name, (kind, status), when = answer
        self._in_flight.discard(name)
        if name not in targets:
            return  # no longer checked (taken out of the chain, gone from DNS)
        self._last_answer[name] = (kind, status, when)
        with self._lock:
            record = {HEARTBEAT: self.detector.heartbeat, REFUSED: self.detector.refused,
                      SILENT: self.detector.silent}[kind]
            verdict = record(name, when)
        if verdict is not None:
            changes.append((name, verdict))


def container_name_of(address: str) -> str | None:
    """The container name Docker's DNS gives `address` (`<project>-<service>-<n>`, from
    `<project>-<service>-<n>.<network>`), which every machine on its networks resolves.

    Asks the resolver in /etc/resolv.conf directly: the system lookup reads
    /etc/hosts first, where a container finds only its own id for itself.
    """
    try:
        answer = dns.resolver.resolve_address(address, lifetime=1.0)
        full = str(answer[0].target).rstrip(".")
    except (dns.exception.DNSException, OSError, IndexError):
        return None
    task = SWARM_TASK.match(full)
    return task.group(0) if task else full.split(".")[0]


# A Swarm task's name (what its DNS answers, before `.<network>`):
# `<stack>_<service>.<slot>.<task id>`.
SWARM_TASK = re.compile(r"^(?P<stack>[^_.]+)_(?P<service>[^.]+)\.(?P<slot>\d+)\.[0-9a-z]+")


def machine_name_of(address: str) -> str | None:
    """The machine name distlab shows for `address`: its container name without the
    Compose project (`kv-2`), or its Swarm service and slot (`distlab_kv.2.<id>`: `kv-2`)."""
    container = container_name_of(address)
    return None if container is None else machine_name_from(container)


def machine_name_from(container: str) -> str:
    task = SWARM_TASK.match(container)
    if task:
        return f"{task['service']}-{task['slot']}"
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
    """The peer watcher: health-checks every peer each interval and keeps verdicts current."""

    def __init__(self, *, entries: tuple[str, ...], port: int, interval: float,
                 detector: PhiDetector, channels: Channels, metrics: NodeMetrics,
                 log: EventLog) -> None:
        self._entries = entries
        self._port = port
        self._interval = interval
        self._detector = detector
        self._checks = HealthChecks(channels=channels, detector=detector,
                                    timeout=max(0.05, min(interval, 2.0) * 0.8))
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
            started = time.monotonic()
            self.check_once()
            self._stopped.wait(max(0.0, self._interval - (time.monotonic() - started)))

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
        for name, verdict in self._checks.round(targets, wait=self._interval):
            # A down verdict is news at the default level; coming back is not.
            (self._log.info if verdict else self._log.warning)(
                "peer_up" if verdict else "peer_down", peer=name, address=targets[name],
                why=self._checks.why(name))
        for name in targets:
            self._metrics.peer_up.labels(peer=name).set(1 if self._detector.is_up(name) else 0)
