"""The container's health probe: exit 0 when this machine's gRPC health says SERVING.

Docker runs it every few seconds in every machine, so it must cost next to
nothing: the image runs it as `python -I -S /app/nodes/common/healthcheck.py`
(no site, no imports beyond the socket module) and it asks the node's
`/healthz` on METRICS_PORT, which the node answers by calling its own
grpc.health.v1 service (nodes.common.httpd). `python -m
nodes.common.healthcheck` works too.
"""

import os
import socket
import sys


def main() -> int:
    setting = os.environ.get("METRICS_PORT") or "9100"
    if not setting.isdigit():
        print(f"unhealthy: METRICS_PORT={setting!r} is not a port number", file=sys.stderr)
        return 1
    port = int(setting)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.5) as conn:
            conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
    except OSError as exc:
        print(f"unhealthy: metrics port {port}: {exc}", file=sys.stderr)
        return 1
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or status_line[1] != b"200":
        print(f"unhealthy: {body.decode(errors='replace').strip() or head[:80]!r}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
