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


def targets_document(machines: Iterable[MachineInfo]) -> bytes:
    groups = [{"targets": [f"{m.container}:{METRICS_PORT}"],
               "labels": {"machine": m.name, "role": m.role, "lab": m.lab}}
              for m in machines if m.lab != "common"]
    return json.dumps(groups, indent=1).encode()


class Prometheus:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[dict]:
        try:
            response = requests.get(f"{self.url}/api/v1/query", params={"query": expr},
                                    timeout=self.timeout)
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise DistlabError(f"Prometheus at {self.url} did not answer: {exc}") from None
        if body.get("status") != "success":
            raise DistlabError(f"Prometheus refused {expr!r}: {body.get('error')}")
        return body["data"]["result"]

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
