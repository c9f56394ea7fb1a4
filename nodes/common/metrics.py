"""The metrics every node exports, registered on a registry the caller passes in.

Names follow `distlab_<area>_<what>_<unit>`. Labels are bounded: a method
name, a status code name, a peer machine name, a fault kind — never a key or
a request id. Tests build a fresh `CollectorRegistry` per node.

Bounded is enforced here, not trusted to each call site: a label whose value
can come from outside (a method name a caller sent, a peer or backend name
found through DNS or told by another machine) goes through a `BoundedLabels`
wrapper that maps every value outside its bounded set to `other`. A method
keeps its name only when it belongs to a service compiled into this process
(`MethodLabels`); a peer keeps its name only among the first MAX_PEER_LABELS
well-formed names seen (`NameLabels`). So 3000 made-up method names sent to
a node add one series, not 60 000. The RPC client metrics take a bound of their
own (`client_peer_labels`, METRICS_PEER_LABELS): a Chord peer calls most of a
64-peer ring, and 64 peers naming 63 each made 190 000 series, more than
Prometheus's 512 MiB held.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nodes.common.faults import ACTIONS

# From 0.5 ms (loopback) to 10 s (a deadline under a partition).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
#: The label value for everything outside a label's bounded set.
OTHER = "other"
#: Distinct peer (or backend) names a node labels on its own; later ones count as `other`.
#: Labs run a few to a few dozen machines; a label per machine up to this many.
MAX_PEER_LABELS = 64
#: The kinds of faults the host marks from outside (Control.MarkFault checks the same list).
FAULT_KINDS = ("partition", "loss", "bandwidth", "delay")
STATUS_CODE_NAMES = frozenset(code.name for code in grpc.StatusCode)
# A machine name (`kv-2`, `data-master-1`) or an address (`10.0.0.7:50051`), at most 63 chars.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,62}$")


class MethodLabels:
    """`/pkg.Service/Method` stays itself when that service is compiled into this process.

    The set is the protos this image carries (distlab's own, health,
    reflection): finite and known before any call, whatever callers send.
    Lookups of known methods are remembered, so the request path pays a
    dict lookup; unknown names are not remembered, so they cannot grow it.
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()
        self._known: dict[str, str] = {}

    def __call__(self, method: str) -> str:
        if method in self._known:
            return method
        _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "", "")
        try:
            found = name in self._pool.FindServiceByName(service).methods_by_name
        except KeyError:
            found = False
        if not found:
            return OTHER
        self._known[method] = method
        return method


class NameLabels:
    """The first `limit` distinct well-formed names keep their own label; the rest are `other`.

    For peers and backends: machine names a node learns at run time, from DNS or
    from other machines, so no list of them exists in advance. Names are never
    given back (a counter's series outlive the peer), so the bound holds for
    the life of the process.
    """

    def __init__(self, limit: int = MAX_PEER_LABELS) -> None:
        self._limit = limit
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> str:
        if name in self._kept:
            return name
        if not _NAME.match(name):
            return OTHER
        with self._lock:
            if len(self._kept) < self._limit:
                self._kept.add(name)
                return name
        return OTHER


def one_of(values: Iterable[str]) -> Callable[[str], str]:
    """A bound for a label whose values are a fixed list: anything else is `other`."""
    allowed = frozenset(values)
    return lambda value: value if value in allowed else OTHER


class BoundedLabels:
    """A labelled metric whose label values pass through a bound before they make a series.

    `labels()` and `remove()` take the metric's label names, as on the metric
    itself; a label without a bound is used as given (for values the code
    chooses from a constant list). Everything else is the wrapped metric's.
    """

    def __init__(self, metric: Any, **bounds: Callable[[str], str]) -> None:
        unknown = set(bounds) - set(metric._labelnames)
        if unknown:
            raise ValueError(f"{metric._name} has no label {', '.join(sorted(unknown))}")
        self.metric = metric
        self._names = metric._labelnames
        self._bounds = bounds

    def bounded(self, *values: str, **labels: str) -> dict[str, str]:
        """The label values this metric would use for these."""
        if values:
            labels = dict(zip(self._names, values, strict=True))
        return {name: self._bounds[name](value) if name in self._bounds else value
                for name, value in labels.items()}

    def labels(self, *values: str, **labels: str) -> Any:
        return self.metric.labels(**self.bounded(*values, **labels))

    def remove(self, *values: str) -> None:
        bounded = self.bounded(*values)
        self.metric.remove(*(bounded[name] for name in self._names))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)


class NodeMetrics:
    """Every metric of the node contract; roles add their own on `registry`."""

    def __init__(self, registry: CollectorRegistry, *, node: str, role: str,
                 version: str, client_peer_labels: int = MAX_PEER_LABELS) -> None:
        self.registry = registry
        methods, peers, called = MethodLabels(), NameLabels(), NameLabels(client_peer_labels)
        codes = one_of(STATUS_CODE_NAMES)
        self.info = Gauge("distlab_node_info", "Always 1; labels say who this node is.",
                          ["node", "role", "version"], registry=registry)
        self.info.labels(node=node, role=role, version=version).set(1)
        self.server_handled = BoundedLabels(Counter(
            "distlab_rpc_server_handled_total", "RPCs this node served, by final status.",
            ["method", "code"], registry=registry), method=methods, code=codes)
        self.server_latency = BoundedLabels(Histogram(
            "distlab_rpc_server_latency_seconds", "Time to serve an RPC, faults included.",
            ["method"], buckets=LATENCY_BUCKETS, registry=registry), method=methods)
        self.server_in_flight = Gauge(
            "distlab_rpc_server_in_flight", "RPCs being served right now.", registry=registry)
        self.server_concurrency_limit = Gauge(
            "distlab_rpc_server_concurrency_limit",
            "MAX_CONCURRENT_RPCS: calls of the role's services this node works on at once.",
            registry=registry)
        self.server_overloaded = BoundedLabels(Counter(
            "distlab_rpc_server_overloaded_total",
            "Calls refused RESOURCE_EXHAUSTED on arrival because MAX_CONCURRENT_RPCS calls "
            "were already in progress.", ["method"], registry=registry), method=methods)
        self.server_undecodable = BoundedLabels(Counter(
            "distlab_rpc_server_undecodable_total",
            "Calls refused INVALID_ARGUMENT because their request body did not decode.",
            ["method"], registry=registry), method=methods)
        self.client_handled = BoundedLabels(Counter(
            "distlab_rpc_client_handled_total", "RPCs this node sent, by peer and final status.",
            ["method", "peer", "code"], registry=registry), method=methods, peer=called,
            code=codes)
        self.client_latency = BoundedLabels(Histogram(
            "distlab_rpc_client_latency_seconds",
            "Time from sending an RPC to its answer, as the caller saw it.",
            ["method", "peer"], buckets=LATENCY_BUCKETS, registry=registry),
            method=methods, peer=called)
        self.fault_rules_active = Gauge(
            "distlab_fault_rules_active", "RPC-level fault rules in force on this node.",
            registry=registry)
        self.fault_injected = BoundedLabels(Counter(
            "distlab_fault_injected_total", "RPCs an RPC-level fault rule acted on.",
            ["method", "action"], registry=registry), method=methods, action=one_of(ACTIONS))
        self.fault_active = BoundedLabels(Gauge(
            "distlab_fault_active",
            "Faults the host applied to this machine from outside (iptables, tc), by kind.",
            ["kind"], registry=registry), kind=one_of(FAULT_KINDS))
        # Bounded by its one writer: nodes.common.auth.CredentialCheck labels only the
        # node's protected methods, a fixed set (test roles protect methods of their own).
        self.auth_refused = Counter(
            "distlab_auth_refused_total",
            "Calls to a protected method refused: no lab credential, or a wrong one.",
            ["method"], registry=registry)
        self.peer_up = BoundedLabels(Gauge(
            "distlab_peer_up", "This node's failure-detector verdict on a peer (1 up, 0 down).",
            ["peer"], registry=registry), peer=peers)
