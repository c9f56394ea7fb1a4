"""The node's HTTP side on METRICS_PORT: `/metrics` for Prometheus and `/healthz` for the
container's health probe.

`/healthz` asks the node's own gRPC health service over loopback (the callable
the server gives it), so it proves what the old probe proved — the gRPC server
answers and says SERVING — without starting a Python process that imports
gRPC every few seconds (about 0.1 s of CPU each time; with a probe every 3 s
that was a tenth of an idle Chord peer's cost). nodes.common.healthcheck is the
probe: a few lines of stdlib that read this answer. Started and stopped by
nodes.common.server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

HEALTH_PATH = "/healthz"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Scrapes and probes are not events worth a log line."""


def start(port: int, registry: CollectorRegistry,
          health: Callable[[], tuple[bool, str]]) -> _Server:
    """Serve /metrics from `registry` and /healthz from `health()` -> (serving, status)."""
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") == HEALTH_PATH:
            serving, status = health()
            start_response("200 OK" if serving else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{status}\n".encode()]
        return metrics(environ, start_response)

    server = make_server("0.0.0.0", port, app, server_class=_Server,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
