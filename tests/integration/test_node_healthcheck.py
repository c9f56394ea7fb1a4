"""The container health probe (nodes/common/healthcheck.py) against a real node: it runs the
way the image runs it, `python -I -S` with no site packages, and says what gRPC health says."""

import subprocess
import sys
import time
from pathlib import Path

import grpc

import nodes.common.healthcheck

PROBE = Path(nodes.common.healthcheck.__file__)


def probe(metrics_port: int | str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-S", str(PROBE)], capture_output=True,
                          text=True, timeout=10, env={"METRICS_PORT": str(metrics_port)})


def test_a_bad_port_setting_is_named_not_a_traceback():
    result = probe("nine")
    assert result.returncode == 1
    assert result.stderr.strip() == "unhealthy: METRICS_PORT='nine' is not a port number"


def test_a_serving_node_passes_the_probe(lab, node):
    result = probe(node.metrics_port)
    assert result.returncode == 0, result.stderr


def test_a_node_that_stopped_acknowledging_fails_the_probe_with_the_reason(lab, node):
    node.context.set_not_serving("the WAL could not be written")
    result = probe(node.metrics_port)
    assert result.returncode == 1
    assert "NOT_SERVING" in result.stderr


def test_no_node_listening_fails_the_probe_quickly(lab, node):
    port = node.metrics_port
    lab.stop(node)
    started = time.monotonic()
    result = probe(port)
    assert result.returncode == 1
    assert "metrics port" in result.stderr
    assert time.monotonic() - started < 5


def test_a_wedged_grpc_server_fails_the_probe_though_http_still_answers(lab, node):
    # Health goes through the node's gRPC server, not just its HTTP thread: with the gRPC
    # server stopped, /healthz still answers HTTP but reports the failed call.
    node._server.stop(0).wait()
    result = probe(node.metrics_port)
    assert result.returncode == 1
    assert grpc.StatusCode.UNAVAILABLE.name in result.stderr


def test_metrics_are_still_served_beside_the_probe(lab, node):
    samples = lab.scrape(node).samples
    assert any(name == "distlab_node_info" for name, _ in samples)
