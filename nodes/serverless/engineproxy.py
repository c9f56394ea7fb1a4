"""python -m nodes.serverless.engineproxy — the only way to the Docker engine (see --help).

The serverless runner starts, pauses and removes function instances, so it needs the
engine; the engine's socket itself would give it — and anyone who took the runner over —
root on the host. This machine holds the socket and serves the Docker Engine API over
HTTP on ENGINE_PROXY_PORT, on a network only the runner shares, passing a request only if
the policy allows it (nodes.serverless.enginepolicy: instances of the lab's image,
labelled, non-root, read-only, limited; per-container calls only on labelled containers).
A refusal is HTTP 403 with the reason as Docker's `{"message": ...}`, so the runner's
Docker SDK raises it as an APIError saying why.

Every request but the version handshake (`/_ping`, `/version`) must carry the lab
credential (header X-Distlab-Credential): the network is private, and this says so twice.
Responses stream through (a `wait` is a long poll); each connection serves one request
(HTTP/1.0), which is all the Docker SDK needs.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from prometheus_client import Counter

from nodes.common.config import Setting, port, positive
from nodes.common.role import NodeContext, RoleNode, RoleSpec
from nodes.common.server import main
from nodes.serverless.engine import CREDENTIAL_HEADER
from nodes.serverless.enginepolicy import LAB_LABEL, MAX_BODY_BYTES, Policy, decide, deny

ENGINE_TIMEOUT_SECONDS = 60.0
COPY_BYTES = 64 * 1024
# Hop-by-hop headers are the proxy's own business, not the engine's.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-connection", "content-length", "host"}


class UnixConnection(http.client.HTTPConnection):
    """HTTP over the engine's unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class EngineProxyNode(RoleNode):
    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        self._ctx = ctx
        self.socket_path = config["ENGINE_SOCKET"]
        self.policy = Policy(lab=config["FN_LAB"], image=config["FN_IMAGE"],
                             network=config["FN_NETWORK"],
                             max_memory_bytes=config["FN_MAX_MEMORY_BYTES"],
                             max_nano_cpus=int(config["FN_MAX_CPUS"] * 1e9),
                             max_pids=config["FN_MAX_PIDS"])
        self.decisions = Counter("distlab_serverless_engine_requests_total",
                                 "Requests to the engine proxy, by verdict (passed, refused, "
                                 "unauthenticated, failed).", ["verdict"],
                                 registry=ctx.registry)
        self._server: ThreadingHTTPServer | None = None
        self.port = 0  # the proxy's, once serving (ENGINE_PROXY_PORT, or a free one for 0)

    def register(self, server: grpc.Server) -> None:
        """Only the node contract's services: the proxy itself speaks HTTP."""

    def serving(self, grpc_port: int) -> None:
        node = self

        class Handler(_ProxyHandler):
            proxy = node

        self._server = ThreadingHTTPServer(("0.0.0.0", self._ctx.config["ENGINE_PROXY_PORT"]),
                                           Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="engine-proxy",
                         daemon=True).start()
        self._ctx.log.info("engine_proxy_started", port=self.port,
                           lab=self.policy.lab, image=self.policy.image,
                           network=self.policy.network)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def status(self) -> dict[str, str]:
        return {"socket": self.socket_path, "lab": self.policy.lab,
                "network": self.policy.network}

    def engine(self) -> UnixConnection:
        return UnixConnection(self.socket_path, ENGINE_TIMEOUT_SECONDS)

    def labelled(self, container: str) -> bool:
        """Whether `container` exists and carries the lab's label."""
        connection = self.engine()
        try:
            connection.request("GET", f"/containers/{container}/json")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            return False
        labels = (json.loads(body).get("Config") or {}).get("Labels") or {}
        return labels.get(LAB_LABEL) == self.policy.lab


class _ProxyHandler(BaseHTTPRequestHandler):
    proxy: EngineProxyNode
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    do_POST = do_DELETE = do_HEAD = do_PUT = do_GET  # noqa: N815

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Every request is counted and refusals logged as events; no access log."""

    def _handle(self) -> None:
        proxy = self.proxy
        credential = proxy._ctx.credential
        # The SDK asks the version before it can be told a header; nothing else is open.
        open_call = self.command in ("GET", "HEAD") and self.path.split("?")[0].endswith(
            ("/_ping", "/version"))
        if not open_call and (credential is None
                              or not credential.matches(self.headers.get(CREDENTIAL_HEADER))):
            proxy.decisions.labels(verdict="unauthenticated").inc()
            return self._refuse(401, "the engine proxy needs the lab credential")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            proxy.decisions.labels(verdict="refused").inc()
            return self._refuse(413, f"a request body of {length} bytes "
                                     f"(at most {MAX_BODY_BYTES})")
        body = self.rfile.read(length) if length else b""
        decision = decide(proxy.policy, self.command, self.path, body)
        if decision.allowed and decision.container is not None \
                and not proxy.labelled(decision.container):
            decision = deny(f"{decision.container} is not a container of the lab "
                            f"{proxy.policy.lab}")
        if not decision.allowed:
            proxy.decisions.labels(verdict="refused").inc()
            proxy._ctx.log.warning("engine_request_refused", method=self.command,
                                   path=self.path.split("?")[0], reason=decision.reason)
            return self._refuse(403, decision.reason)
        try:
            self._forward(body)
            proxy.decisions.labels(verdict="passed").inc()
        except OSError as exc:
            proxy.decisions.labels(verdict="failed").inc()
            proxy._ctx.log.warning("engine_unreachable", problem=str(exc))
            self._refuse(502, f"the engine did not answer: {exc}")

    def _forward(self, body: bytes) -> None:
        connection = self.proxy.engine()
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in _HOP and k != CREDENTIAL_HEADER}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP:
                    self.send_header(key, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            while chunk := response.read1(COPY_BYTES):
                self.wfile.write(chunk)
                self.wfile.flush()
        finally:
            connection.close()

    def _refuse(self, status: int, reason: str) -> None:
        payload = json.dumps({"message": f"engine proxy: {reason}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


SPEC = RoleSpec(
    name="serverless.engineproxy",
    summary="the serverless runner's only way to the Docker engine: the Engine API over "
            "HTTP, each request passed only if the lab's policy allows it.",
    settings=(
        Setting("ENGINE_SOCKET", str, "/var/run/docker.sock", "the engine's socket"),
        Setting("ENGINE_PROXY_PORT", int, 2375, "port of the proxied Engine API", port),
        Setting("FN_LAB", str, "serverless", "the distlab.lab label every instance carries"),
        Setting("FN_IMAGE", str, "distlab/node:dev", "the only image instances may run"),
        Setting("FN_NETWORK", str, "distlab-functions", "the only network instances join"),
        Setting("FN_MAX_MEMORY_BYTES", int, 512 * 1024 * 1024, "largest memory limit",
                positive),
        Setting("FN_MAX_CPUS", float, 1.0, "largest CPU limit (cores)", positive),
        Setting("FN_MAX_PIDS", int, 128, "largest pids limit", positive),
    ),
    build=EngineProxyNode,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
