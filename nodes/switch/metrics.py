"""The switch's own metrics, per backend (label `backend` = its machine name).

Registered on the node's registry by nodes/switch/node.py. Counters and the
latency histogram are updated per attempt by the forwarder through children
cached on each backend's link; the gauges (in flight, healthy, ejected) are
read from the backend at scrape time, so they cost the request path nothing.
A backend's gauges go when it leaves the set; its counters stay, as counters do.

Backend names come from DNS and Control.Reconfigure, so like every peer
label they are bounded (nodes.common.metrics.NameLabels): past
MAX_PEER_LABELS distinct backends, counters add up under `other` and the
gauges of the extra backends are not exported. No metric here is labelled
by method: what the switch forwards shows in the node's server metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nodes.common.metrics import LATENCY_BUCKETS, OTHER, BoundedLabels, NameLabels
from nodes.switch.backends import EJECTED, HEALTHY, Backend


class SwitchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.backend_label = backend = NameLabels()
        self.requests = BoundedLabels(Counter(
            "distlab_switch_backend_requests_total",
            "Attempts the switch sent to a backend, by the backend's final status.",
            ["backend", "code"], registry=registry), backend=backend)
        self.latency = BoundedLabels(Histogram(
            "distlab_switch_backend_latency_seconds",
            "Time from sending one attempt to a backend to its answer.",
            ["backend"], buckets=LATENCY_BUCKETS, registry=registry), backend=backend)
        self.outstanding = Gauge(
            "distlab_switch_backend_outstanding", "Calls in flight to a backend.",
            ["backend"], registry=registry)
        self.healthy = Gauge(
            "distlab_switch_backend_healthy",
            "1 when a backend passed its active health checks (rise in a row), else 0.",
            ["backend"], registry=registry)
        self.ejected = Gauge(
            "distlab_switch_backend_ejected",
            "1 while a backend is ejected for consecutive failures, else 0.",
            ["backend"], registry=registry)
        self.ejections = BoundedLabels(Counter(
            "distlab_switch_ejections_total", "Times a backend was ejected.",
            ["backend"], registry=registry), backend=backend)
        self.retries = BoundedLabels(Counter(
            "distlab_switch_retries_total",
            "Retries of idempotent calls, by the backend whose failure caused them.",
            ["backend"], registry=registry), backend=backend)
        self.retry_budget_exhausted = Counter(
            "distlab_switch_retry_budget_exhausted_total",
            "Retries not made because the retry budget was spent.", registry=registry)
        self.refused = Counter(
            "distlab_switch_refused_total",
            "Calls answered UNIMPLEMENTED because their method is not one the switch forwards.",
            registry=registry)
        self.panic = Gauge(
            "distlab_switch_panic",
            "1 while too few backends look healthy (SWITCH_PANIC_THRESHOLD_PERCENT) and every "
            "backend takes calls, else 0.", registry=registry)
        self.held = Gauge(
            "distlab_switch_held_calls",
            "Calls waiting at the switch while the service behind it moves (a migration's "
            "blackout).", registry=registry)
        self.moved = Counter(
            "distlab_switch_moved_total",
            "Calls a backend refused as moved, sent again once the switch was re-pointed.",
            registry=registry)
        self.no_backend = Counter(
            "distlab_switch_no_backend_total",
            "Calls refused with UNAVAILABLE because no backend could take them.",
            registry=registry)

    def watch(self, backend: Backend) -> None:
        name = self.backend_label(backend.name)
        if name == OTHER:
            return  # several backends cannot share one gauge
        self.outstanding.labels(backend=name).set_function(lambda: backend.outstanding)
        self.healthy.labels(backend=name).set_function(
            lambda: 1 if backend.health == HEALTHY else 0)
        self.ejected.labels(backend=name).set_function(
            lambda: 1 if backend.state == EJECTED else 0)

    def forget(self, backend: Backend) -> None:
        name = self.backend_label(backend.name)
        for gauge in (self.outstanding, self.healthy, self.ejected):
            try:
                gauge.remove(name)
            except KeyError:
                pass  # never watched: it left before it was attached
