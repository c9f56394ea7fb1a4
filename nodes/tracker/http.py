"""The HTTP tracker: a thin adapter from HTTP requests to the swarm core and back.

`TrackerHTTPServer` serves GET /announce and GET /scrape (the paths clients derive
from an announce URL, BEP 48) with nodes.tracker.protocol and nodes.tracker.swarm,
on its own port (TRACKER_HTTP_PORT). A refused announce is an HTTP 200 whose body is
a bencoded `failure reason`, as clients expect; an unknown path is a 404 with one too.
HTTP/1.0 and 1.1 requests are served alike; every response closes its connection, so
no idle keep-alive connection holds a thread. Bounds: `max_connections` requests at
once (more are closed at once), a per-connection socket timeout, a request line of at
most `MAX_REQUEST_LINE` bytes, GET only.

Callers: nodes.tracker.service (starts it in `serving`, drains it in `close`). Touches
its listening socket and the `TrackerMetrics` it is given.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address

from prometheus_client import CollectorRegistry, Counter, Histogram

from nodes.common.logs import EventLog
from nodes.common.metrics import LATENCY_BUCKETS
from nodes.tracker.protocol import (
    REFUSAL_REASONS,
    RequestRefused,
    announce_reply,
    failure,
    parse_announce,
    parse_query,
    parse_scrape,
    scrape_reply,
)
from nodes.tracker.swarm import Tracker, TrackerFull

MAX_REQUEST_LINE = 16 * 1024  # 100 fully escaped info_hashes of a scrape fit in 8 KB
ANNOUNCE_EVENTS = {"started": "started", "completed": "completed", "stopped": "stopped",
                   "paused": "paused", "": "update"}


class TrackerMetrics:
    """The HTTP tracker's counters; the swarm gauges are the node's (service.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.announces = Counter("distlab_tracker_announces_total",
                                 "Announces served, by event (update: a regular one).",
                                 ["event"], registry=registry)
        self.completed = Counter("distlab_tracker_completed_total",
                                 "Completions reported (event=completed), each peer once.",
                                 registry=registry)
        self.scrapes = Counter("distlab_tracker_scrapes_total", "Scrapes served.",
                               registry=registry)
        self.refused = Counter("distlab_tracker_refused_total",
                               "Requests answered with a failure reason, by reason.",
                               ["reason"], registry=registry)
        self.expired = Counter("distlab_tracker_expired_peers_total",
                               "Peers forgotten after missing their announces.",
                               registry=registry)
        self.latency = Histogram("distlab_tracker_request_seconds",
                                 "Time to serve an HTTP tracker request.", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        for event in ANNOUNCE_EVENTS.values():
            self.announces.labels(event=event)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason=reason)
        for path in ("announce", "scrape", "other"):
            self.latency.labels(path=path)


@dataclass(frozen=True)
class TrackerPolicy:
    """What the tracker tells clients and how much it gives them."""

    interval: int
    min_interval: int
    default_numwant: int
    max_numwant: int
    max_scrape_hashes: int


class TrackerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # an idle client cannot keep the process from exiting
    block_on_close = False  # `drain` waits for requests in flight, with a deadline

    def __init__(self, address: tuple[str, int], *, tracker: Tracker, policy: TrackerPolicy,
                 metrics: TrackerMetrics, log: EventLog, timeout: float,
                 max_connections: int) -> None:
        self.tracker = tracker
        self.policy = policy
        self.metrics = metrics
        self.log = log
        self.connection_timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._in_flight = 0
        self._idle = threading.Condition()
        super().__init__(address, TrackerRequestHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # at capacity: the client retries later
            return
        with self._idle:
            self._in_flight += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._finished()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._finished()

    def _finished(self) -> None:
        self._slots.release()
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def handle_error(self, request, client_address) -> None:
        """A connection that failed outside a handler (a reset mid-reply): one log line,
        not the stack trace socketserver would print."""
        self.log.debug("tracker_connection_failed", client=client_address[0])

    def drain(self, grace: float) -> None:
        """Stop accepting, give requests in flight up to `grace` seconds, close."""
        self.shutdown()
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=grace)
        self.server_close()


class TrackerRequestHandler(BaseHTTPRequestHandler):
    server: TrackerHTTPServer
    server_version = "distlab-tracker"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.connection_timeout
        super().setup()

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self.close_connection = True

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.send_error(414, f"request line over {MAX_REQUEST_LINE} bytes")
            return False
        return True

    def do_GET(self) -> None:
        started = time.perf_counter()
        # The request line was read as latin-1: encoding it back gives the bytes sent.
        path, _, raw_query = self.path.encode("latin-1").partition(b"?")
        handlers = {b"/announce": ("announce", self._announce),
                    b"/scrape": ("scrape", self._scrape)}
        name, handler = handlers.get(path, ("other", None))
        try:
            if handler is None:
                raise RequestRefused("not_found", "this tracker serves /announce and /scrape")
            body = handler(parse_query(raw_query))
            status = 200
        except RequestRefused as exc:
            self.server.metrics.refused.labels(reason=exc.reason).inc()
            self.server.log.debug("tracker_refused", path=name, reason=exc.reason,
                                  detail=str(exc), client=self.client_address[0])
            body, status = failure(str(exc)), 404 if exc.reason == "not_found" else 200
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and a log line, not a crash
            self.server.log.error("tracker_internal_error", path=name,
                                  error=f"{type(exc).__name__}: {exc}")
            body, status = failure("internal tracker error"), 500
        self._send(status, body)
        self.server.metrics.latency.labels(path=name).observe(time.perf_counter() - started)

    def do_POST(self) -> None:
        self.server.metrics.refused.labels(reason="bad_request").inc()
        self._send(405, failure("the tracker protocol uses GET"))

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _announce(self, query) -> bytes:
        server = self.server
        policy = server.policy
        announce, options = parse_announce(
            query, self._client_ip(), default_numwant=policy.default_numwant,
            max_numwant=policy.max_numwant)
        try:
            reply = server.tracker.announce(announce)
        except TrackerFull as exc:
            raise RequestRefused("full", str(exc)) from None
        server.metrics.announces.labels(event=ANNOUNCE_EVENTS[announce.event]).inc()
        if reply.completed_now:
            server.metrics.completed.inc()
        if reply.expired:
            server.metrics.expired.inc(reply.expired)
        if announce.event:
            server.log.info("tracker_announce", announce_event=announce.event,
                            info_hash=announce.info_hash.hex(),
                            peer=f"{announce.endpoint.ip}:{announce.endpoint.port}",
                            seeders=reply.counts.complete, leechers=reply.counts.incomplete)
        return announce_reply(reply, options, interval=policy.interval,
                              min_interval=policy.min_interval)

    def _scrape(self, query) -> bytes:
        hashes = parse_scrape(query, max_hashes=self.server.policy.max_scrape_hashes)
        self.server.metrics.scrapes.inc()
        return scrape_reply(self.server.tracker.scrape(hashes),
                            min_interval=self.server.policy.min_interval)

    def _client_ip(self) -> IPv4Address:
        return IPv4Address(self.client_address[0])  # the server listens on IPv4 only

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        self.server.log.debug("tracker_http", client=self.client_address[0],
                              line=format % args)
