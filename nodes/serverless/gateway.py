"""The runner's HTTP gateway, in OpenFaaS's shape, so `curl` works as it does there:

- `POST /function/NAME` with a JSON body: 200 and the function's JSON result (headers
  X-Invocation-Id, X-Start-Path: warm, paused, prewarm or cold, X-Run-Seconds); the
  function's own error is 500 with `{"error": ..., "logs": [...]}`;
- `POST /async-function/NAME`: 202 and `{"id": ...}` once the invocation is on the
  runner's disk; `GET /result/ID`: `{"done": false, ...}` while it waits, then its one
  outcome (`ok`, `result` or `error`, `attempts`);
- `GET /system/functions`: the deployed functions, their instances and counts.

The platform's refusals keep their meaning: 404 no such function, 400 not JSON, 413 over
the payload limit (refused before the body is read), 429 too many requests, 504 timed
out, 502 the instance died or exceeded its memory, 503 could not start. Every error body
is `{"error": "what was wrong"}`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

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


class Functions(Protocol):
    """What the gateway asks of the runner."""

    def invoke(self, name: str, data: str) -> Any: ...
    def invoke_async(self, name: str, data: str) -> str: ...
    def result(self, invocation_id: str) -> Any: ...
    def list_functions(self) -> list: ...


class Gateway:
    def __init__(self, functions: Functions, port: int, max_payload: int) -> None:
        gateway = self
        self.functions, self.max_payload = functions, max_payload

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
        path = self.path.split("?")[0]
        if path == "/system/functions":
            return self._send(200, [_as_json(f) for f in self.owner.functions.list_functions()])
        if path.startswith("/result/"):
            reply = self.owner.functions.result(path[len("/result/"):])
            if reply is None:
                return self._send(404, {"error": f"no asynchronous invocation "
                                                 f"{path[len('/result/'):]!r}"})
            return self._send(200, _as_json(reply))
        return self._send(404, {"error": f"GET {path}: try GET /system/functions or "
                                         f"GET /result/ID"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        prefix = next((p for p in ("/function/", "/async-function/") if path.startswith(p)
                       and len(path) > len(p)), None)
        if prefix is None:
            self._discard_body()
            return self._send(404, {"error": f"POST {path}: try POST /function/NAME or "
                                             f"POST /async-function/NAME"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._send(400, {"error": "Content-Length is not a number"}, close=True)
        if length > self.owner.max_payload:
            return self._send(413, {"error": f"a payload of {length} bytes is over the "
                                             f"{self.owner.max_payload // 1024} KiB limit"},
                              close=True)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        name = path[len(prefix):]
        try:
            if prefix == "/async-function/":
                invocation = self.owner.functions.invoke_async(name, body)
                return self._send(202, {"id": invocation}, {"X-Call-Id": invocation})
            reply = self.owner.functions.invoke(name, body)
        except InvokeFailed as exc:
            return self._send(HTTP_STATUS.get(exc.code, 500), {"error": str(exc)})
        headers = {"X-Invocation-Id": reply.id, "X-Start-Path": reply.path,
                   "X-Run-Seconds": f"{reply.run_seconds:.6f}"}
        if reply.ok:
            return self._send(200, reply.result.encode(), headers)
        return self._send(500, {"error": reply.error, "logs": list(reply.logs)}, headers)

    def _discard_body(self) -> None:  # so the connection can carry the next request
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


def _as_json(message) -> dict:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
