"""FaultExporter: the faults a scenario run injects, as Prometheus gauges served from the host.

A killed or paused machine cannot report the fault done to it, so the scenario runner
(host side) reports every fault itself: it starts this exporter on the host's address on
the lab's Docker network (`lab_gateway`), writes `target_document` to RUNNER_TARGETS_PATH
in the Prometheus container (job "scenario" reads /distlab/targets/*.yml), calls
`fault_started` / `fault_ended` as the nemesis acts, and on the way out rewrites that file
as `[]` and calls `stop`. Grafana annotates the dashboards from
`distlab_scenario_fault_active`.

It touches only its own CollectorRegistry (never the process-wide one) and one HTTP
server socket, bound to the address it is given and never to every interface.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Sequence
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app

from distlab.errors import DistlabError
from distlab.runtime.base import MachineInfo

RUNNER_TARGETS_PATH = "/distlab/targets/runner.yml"  # job "scenario", not "nodes": not a machine
FAULT_ACTIVE = "distlab_scenario_fault_active"
RUNNING = "distlab_scenario_running"
#: The labels Prometheus attaches to the runner's series (file_sd target labels).
RUNNER_MACHINE = "runner"
COMMON_LAB = "common"
#: How often the serving thread checks for stop(): stop() waits up to this long.
_POLL_INTERVAL = 0.05


class FaultExporter:
    """Serves, while a scenario runs, one gauge series per fault (1 active, 0 ended)
    and `distlab_scenario_running{scenario} 1`.

    A gauge rather than a counter because Grafana annotates the interval during which
    the value is 1; an ended fault keeps its series at 0 so a graph shows it ending
    instead of the series merely going stale.
    """

    def __init__(self, scenario: str, *, registry: CollectorRegistry | None = None,
                 lab: str | None = None) -> None:
        if not scenario.strip():
            raise DistlabError("a FaultExporter needs a scenario name")
        self.scenario = scenario
        self.lab = lab
        self.registry = registry if registry is not None else CollectorRegistry()
        self._fault_active = Gauge(
            FAULT_ACTIVE, "1 while the fault a scenario injected is active, 0 once it ended.",
            ["scenario", "fault", "kind", "machines"], registry=self.registry)
        self._running = Gauge(RUNNING, "1 while the scenario runs.", ["scenario"],
                              registry=self.registry)
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[str, str]] = {}  # fault id -> (kind, machines label)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- serving ---------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The bound port while serving, else None."""
        return self._server.server_address[1] if self._server is not None else None

    def start(self, bind_host: str, port: int = 0) -> int:
        """Serve /metrics on bind_host:port (0: any free port); return the bound port."""
        _refuse_wildcard(bind_host)
        if self._server is not None:
            raise DistlabError(f"the fault exporter of {self.scenario!r} already serves on "
                               f"port {self.port}")
        # prometheus_client's start_http_server would do, but its serving loop polls for
        # shutdown every 0.5 s, and stop() would wait that long.
        server_class = _ThreadingServerV6 if ":" in bind_host else _ThreadingServer
        try:
            server = make_server(bind_host, port, make_wsgi_app(self.registry), server_class,
                                 handler_class=_QuietHandler)
        except OSError as exc:
            raise DistlabError(f"the fault exporter cannot listen on {bind_host}:{port}: {exc}",
                               hint="is the lab up (its network gives the host that address)?"
                               ) from None
        thread = threading.Thread(target=server.serve_forever, name="distlab-fault-exporter",
                                  kwargs={"poll_interval": _POLL_INTERVAL}, daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        self._running.labels(scenario=self.scenario).set(1)
        return server.server_address[1]

    def stop(self) -> None:
        """Stop serving and free the port. Safe to call twice, or without start."""
        self._running.labels(scenario=self.scenario).set(0)
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def target_document(self, bind_host: str) -> bytes:
        """The file_sd JSON that makes Prometheus scrape this exporter (needs `start` first)."""
        if self._server is None:
            raise DistlabError("the fault exporter is not serving: call start() before "
                               "target_document()")
        host = f"[{bind_host}]" if ":" in bind_host else bind_host
        group = {"targets": [f"{host}:{self.port}"],
                 "labels": {"machine": RUNNER_MACHINE, "role": RUNNER_MACHINE,
                            "lab": self.lab or COMMON_LAB}}
        return json.dumps([group], indent=1).encode()

    # -- faults ----------------------------------------------------------------------------

    def fault_started(self, fault_id: str, kind: str, machines: Sequence[str]) -> None:
        """Set the fault's series to 1. Machines are joined with commas into one label."""
        if not fault_id or not kind:
            raise DistlabError(f"a fault needs an id and a kind (got id {fault_id!r}, "
                               f"kind {kind!r})")
        if isinstance(machines, str):
            # A bare string would be joined letter by letter: "k,v,-,1".
            raise DistlabError(f"machines of fault {fault_id!r} must be a list of names, "
                               f"not the string {machines!r}")
        labels = (kind, ",".join(machines))
        with self._lock:
            known = self._faults.setdefault(fault_id, labels)
            if known != labels:
                raise DistlabError(f"fault {fault_id!r} was started as {known[0]} on "
                                   f"[{known[1]}], not {kind} on [{labels[1]}]")
            self._series(fault_id, labels).set(1)

    def fault_ended(self, fault_id: str) -> None:
        """Set the fault's series to 0 (kept, so the end shows on a graph)."""
        with self._lock:
            labels = self._faults.get(fault_id)
            if labels is None:
                started = ", ".join(self._faults) or "none"
                raise DistlabError(f"fault {fault_id!r} was never started "
                                   f"(faults started: {started})")
            self._series(fault_id, labels).set(0)

    def _series(self, fault_id: str, labels: tuple[str, str]):
        kind, machines = labels
        return self._fault_active.labels(scenario=self.scenario, fault=fault_id, kind=kind,
                                         machines=machines)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress does not hold the process open


class _ThreadingServerV6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # one line per scrape is noise
        pass


def lab_gateway(machines: list[MachineInfo]) -> str | None:
    """The host's address on the lab network: the first gateway of a running lab machine
    (common machines such as prometheus are skipped), or None when no lab runs."""
    for machine in machines:
        if machine.lab != COMMON_LAB and machine.state == "running" and machine.gateways:
            return machine.gateways[0]
    return None


def _refuse_wildcard(bind_host: str) -> None:
    """Every-interface addresses would publish the exporter beyond the lab."""
    try:
        wildcard = ipaddress.ip_address(bind_host).is_unspecified
    except ValueError:
        wildcard = not bind_host.strip()
    if wildcard:
        raise DistlabError(f"the fault exporter must not listen on {bind_host!r} (every "
                           "interface)", hint="bind it to the lab network's gateway, "
                           "see lab_gateway()")
