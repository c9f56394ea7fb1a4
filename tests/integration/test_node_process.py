"""`python -m nodes.kv` as a real process: configuration errors, logs, SIGTERM, the
credential file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodes.common.auth import METADATA_KEY, Credential
from nodes.rpc import control_pb2, control_pb2_grpc
from tests.integration.conftest import credential_file


def node_env(tmp_path, **overrides) -> dict[str, str]:
    env = {**os.environ, "NODE_NAME": "kv-9", "GRPC_PORT": "0", "METRICS_PORT": "0",
           "DATA_DIR": str(tmp_path), "GRACE_SECONDS": "5",
           "CREDENTIAL_FILE": credential_file(tmp_path)}
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


def run_until_started(env: dict[str, str], check) -> tuple[list[dict], str]:
    """Start `python -m nodes.kv`, call `check(channel)` once it serves, stop it with SIGTERM;
    return its events and everything it wrote."""
    process = subprocess.Popen([sys.executable, "-m", "nodes.kv"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [process.stdout.readline()]
        while json.loads(lines[-1])["event"] != "node_started":
            lines.append(process.stdout.readline())
        port = json.loads(lines[-1])["grpc_port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check(channel)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        lines += process.stdout.read().splitlines()
        written = "".join(lines) + process.stderr.read()
    finally:
        process.kill()
        process.wait()
    return [json.loads(line) for line in lines], written


def status_code(channel, metadata=()) -> grpc.StatusCode:
    try:
        control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest(), timeout=5,
                                                     metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_the_credential_file_is_read_at_start_and_never_written_out(tmp_path):
    env = node_env(tmp_path)
    token = Credential.from_file(env["CREDENTIAL_FILE"]).metadata()[0][1]

    def check(channel):
        assert status_code(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert status_code(channel, ((METADATA_KEY, token),)) == grpc.StatusCode.OK

    events, written = run_until_started(env, check)
    assert token not in written
    assert "credential_missing" not in [e["event"] for e in events]


def test_without_the_file_the_node_serves_says_so_once_and_refuses_control(tmp_path):
    def check(channel):
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert status_code(channel, Credential.generate().metadata()) == \
            grpc.StatusCode.UNAUTHENTICATED

    events, _ = run_until_started(node_env(tmp_path, CREDENTIAL_FILE=str(tmp_path / "none")),
                                  check)
    assert [e["event"] for e in events].count("credential_missing") == 1
