"""Prometheus from the host: the file_sd target list distlab writes, and queries.

Prometheus finds machines through /distlab/targets/nodes.json inside its
container. distlab rewrites it whenever the set of machines may have changed
(up, scale, status), listing stopped machines too, so a killed machine shows
as `up == 0` instead of vanishing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import requests

from distlab.errors import DistlabError
from distlab.runtime.base import MachineInfo

TARGETS_PATH = "/distlab/targets/nodes.json"
METRICS_PORT = 9100
LOCAL_HOST = "local"  # the `host` label of machines on this machine's own engine


def targets_document(machines: Iterable[MachineInfo]) -> bytes:
    """Prometheus's file_sd targets: every lab machine that keeps the node contract, but
    an ephemeral one (a serverless instance lives on a network Prometheus is not on, for
    seconds; the runner's metrics speak for it). `host` says which cluster host runs it
    (a swarm's `host-2`), `local` on this machine's engine. Docker DNS resolves a
    container's name on the lab network under Compose and a task's on a swarm overlay."""
    groups = [{"targets": [f"{m.container}:{METRICS_PORT}"],
               "labels": {"machine": m.name, "role": m.role, "lab": m.lab,
                          "host": m.host or LOCAL_HOST}}
              for m in machines if m.lab != "common" and m.contract and not m.ephemeral]
    return json.dumps(groups, indent=1).encode()


class PrometheusError(DistlabError):
    """Prometheus did not answer, or answered with an error; the message says which."""


class Prometheus:
    """Prometheus's HTTP API from the host: the one client (CLI, runner, dashboard checks)."""

    def __init__(self, url: str, *, timeout: float = 5.0,
                 session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = session or requests

    def data(self, expr: str) -> dict:
        """The `data` of an instant query (resultType and result); PrometheusError otherwise."""
        url = f"{self.url}/api/v1/query"
        try:
            response = self._http.get(url, params={"query": expr}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise PrometheusError(f"HTTP request to {url} failed: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            snippet = response.text[:200].strip()
            raise PrometheusError(f"HTTP {response.status_code}, not Prometheus API JSON: "
                                  f"{snippet!r}") from None
        if not isinstance(body, dict):
            raise PrometheusError(f"HTTP {response.status_code}, unexpected response body: "
                                  f"{body!r:.200}")
        status = body.get("status")
        if status != "success":
            raise PrometheusError(
                f"HTTP {response.status_code}, status {status!r} "
                f"({body.get('errorType', 'unknown')}): {body.get('error', 'no error text')}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise PrometheusError("status success but no data in the response")
        return data

    def query(self, expr: str) -> list[dict]:
        return self.data(expr).get("result") or []

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=self.timeout).ok
        except requests.RequestException:
            return False

    def wait_for(self, expr: str, predicate, *, timeout: float, interval: float = 1.0):
        """Poll `expr` until predicate(result) holds; return the result or raise after timeout."""
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < deadline:
            try:
                result = self.query(expr)
            except DistlabError:
                result = []
            if predicate(result):
                return result
            time.sleep(interval)
        raise DistlabError(f"Prometheus: {expr!r} did not reach the expected state within "
                           f"{timeout:.0f} s; last result: {result}")
