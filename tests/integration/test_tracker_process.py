"""`python -m nodes.tracker` as a real process: --help, a bad variable, JSON logs, and SIGTERM
draining an HTTP announce in flight before exiting 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from nodes.bittorrent.bencode import decode
from tests.integration.conftest import credential_file


def tracker_env(tmp_path, **overrides) -> dict[str, str]:
    env = {**os.environ, "NODE_NAME": "tracker-9", "GRPC_PORT": "0", "METRICS_PORT": "0",
           "TRACKER_HTTP_PORT": "0", "TRACKER_UDP_PORT": "0", "DATA_DIR": str(tmp_path),
           "GRACE_SECONDS": "5",
           "CREDENTIAL_FILE": credential_file(tmp_path)}
    env.update(overrides)
    return env


def test_help_lists_the_tracker_settings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nodes.tracker", "--help"], capture_output=True,
                          text=True, env=tracker_env(tmp_path), timeout=30)
    assert done.returncode == 0
    for name in ("TRACKER_HTTP_PORT", "TRACKER_INTERVAL_SECONDS", "TRACKER_MISSED_ANNOUNCES",
                 "TRACKER_MAX_NUMWANT", "GRPC_PORT", "METRICS_PORT"):
        assert name in done.stdout


def test_a_bad_variable_exits_2_naming_it(tmp_path):
    for name, value in (("TRACKER_HTTP_PORT", "70000"), ("TRACKER_INTERVAL_SECONDS", "0"),
                        ("TRACKER_MAX_NUMWANT", "many"), ("TRACKER_MIN_INTERVAL_SECONDS", "600"),
                        ("TRACKER_DEFAULT_NUMWANT", "500")):
        done = subprocess.run([sys.executable, "-m", "nodes.tracker"], capture_output=True,
                              text=True, env=tracker_env(tmp_path, **{name: value}), timeout=30)
        assert done.returncode == 2, (name, done.stderr)
        assert name in done.stderr and "Traceback" not in done.stderr


def test_sigterm_finishes_the_announce_in_flight_then_exits_0(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "nodes.tracker"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=tracker_env(tmp_path))
    try:
        events = {}
        while "node_started" not in events:
            line = json.loads(process.stdout.readline())
            events[line["event"]] = line
        port = events["tracker_started"]["http_port"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /announce?info_hash=" + b"%41" * 20)  # half a request
            process.send_signal(signal.SIGTERM)
            for line in iter(process.stdout.readline, ""):
                if json.loads(line)["event"] == "node_stopping":
                    break
            conn.sendall(b"&peer_id=-DL0001-000000000001&port=6881&event=started"
                         b" HTTP/1.0\r\n\r\n")
            response = b""
            while chunk := conn.recv(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.0 200")
        assert decode(response.partition(b"\r\n\r\n")[2])[b"incomplete"] == 1
        assert process.wait(timeout=20) == 0
        rest = [json.loads(line) for line in process.stdout.read().splitlines()]
        assert rest[-1]["event"] == "node_stopped"
        assert all({"ts", "node", "role", "event"} <= set(line) for line in rest)
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()
