"""`python -m nodes.kv` as a real process: configuration errors, logs, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def node_env(tmp_path, **overrides) -> dict[str, str]:
    env = {**os.environ, "NODE_NAME": "kv-9", "GRPC_PORT": "0", "METRICS_PORT": "0",
           "DATA_DIR": str(tmp_path), "GRACE_SECONDS": "5"}
    env.update(overrides)
    return env


def test_a_bad_variable_exits_2_naming_it(tmp_path):
    for name, value in (("GRPC_PORT", "abc"), ("PEER_FALL", "0"), ("LOG_LEVEL", "loud"),
                        ("KV_MAX_VALUE_BYTES", "-5")):
        done = subprocess.run([sys.executable, "-m", "nodes.kv"], capture_output=True, text=True,
                              env=node_env(tmp_path, **{name: value}), timeout=30)
        assert done.returncode == 2, (name, done.stderr)
        assert name in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_help_lists_every_variable(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nodes.kv", "--help"], capture_output=True,
                          text=True, env=node_env(tmp_path), timeout=30)
    assert done.returncode == 0
    for name in ("GRPC_PORT", "METRICS_PORT", "PEERS", "DATA_DIR", "KV_MAX_VALUE_BYTES"):
        assert name in done.stdout


def test_sigterm_drains_and_exits_0_with_json_logs(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "nodes.kv"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=node_env(tmp_path))
    try:
        started = json.loads(process.stdout.readline())
        while started["event"] != "node_started":
            started = json.loads(process.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{started['grpc_port']}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        events = [json.loads(line) for line in process.stdout.read().splitlines()]
    finally:
        process.kill()
        process.wait()
    assert [e["event"] for e in events][-2:] == ["node_stopping", "node_stopped"]
    assert all(e["node"] == "kv-9" and e["role"] == "kv" and "ts" in e for e in events)
