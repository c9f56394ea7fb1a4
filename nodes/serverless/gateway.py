"""The runner's HTTP gateway, in OpenFaaS's shape, so `curl` works as it does there:

- `POST /function/NAME` with a JSON body: 200 and the function's JSON result (headers
  X-Invocation-Id, X-Start-Path: warm, paused, prewarm or cold, X-Run-Seconds); the
  function's own error is 500 with `{"error": ..., "logs": [...]}`;
- `GET /system/functions`: the deployed functions, their instances and counts.

The platform's refusals keep their meaning: 404 no such function, 400 not JSON, 413 over
the payload limit (refused before the body is read), 429 too many requests, 504 timed
out, 502 the instance died or exceeded its memory, 503 could not start. Every error body
is `{"error": "what was wrong"}`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format

HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.ABORTED: 502,
    grpc.StatusCode.UNAVAILABLE: 503,
}


class InvokeFailed(Exception):
    """The platform could not give an answer: refused, timed out, out of memory, died."""

    def __init__(self, code: grpc.StatusCode, outcome: str, message: str) -> None:
        super().__init__(message)
        self.code, self.outcome = code, outcome


class Gateway:
    def __init__(self, invoke: Callable, list_functions: Callable, port: int,
                 max_payload: int) -> None:
        gateway = self
        self.invoke, self.list_functions, self.max_payload = invoke, list_functions, max_payload

        class Handler(_Handler):
            owner = gateway

        self._server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="fn-gateway",
                         daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: Gateway
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Invocations are counted by the runner; no access log."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0] == "/system/functions":
            functions = [json_format.MessageToDict(f, always_print_fields_with_no_presence=True)
                         for f in self.owner.list_functions()]
            return self._send(200, functions)
        return self._send(404, {"error": f"GET {self.path}: try POST /function/NAME or "
                                         f"GET /system/functions"})

    def do_POST(self) -> None:  # noqa: N802
        prefix = "/function/"
        path = self.path.split("?")[0]
        if not path.startswith(prefix) or len(path) == len(prefix):
            self._discard_body()
            return self._send(404, {"error": f"POST {path}: try POST /function/NAME"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._send(400, {"error": "Content-Length is not a number"}, close=True)
        if length > self.owner.max_payload:
            return self._send(413, {"error": f"a payload of {length} bytes is over the "
                                             f"{self.owner.max_payload // 1024} KiB limit"},
                              close=True)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        try:
            reply = self.owner.invoke(path[len(prefix):], body)
        except InvokeFailed as exc:
            return self._send(HTTP_STATUS.get(exc.code, 500), {"error": str(exc)})
        headers = {"X-Invocation-Id": reply.id, "X-Start-Path": reply.path,
                   "X-Run-Seconds": f"{reply.run_seconds:.6f}"}
        if reply.ok:
            return self._send(200, reply.result.encode(), headers)
        return self._send(500, {"error": reply.error, "logs": list(reply.logs)}, headers)

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= self.owner.max_payload:
            self.rfile.read(length)

    def _send(self, status: int, body, headers: dict[str, str] | None = None, *,
              close: bool = False) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:  # the body was not read: this connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)
