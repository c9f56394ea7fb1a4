"""The metrics every node exports, registered on a registry the caller passes in.

Names follow `distlab_<area>_<what>_<unit>`. Labels are bounded: a method
name, a status code name, a peer machine name, a fault kind — never a key or
a request id. Tests build a fresh `CollectorRegistry` per node.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From 0.5 ms (loopback) to 10 s (a deadline under a partition).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    """Every metric of the node contract; roles add their own on `registry`."""

    def __init__(self, registry: CollectorRegistry, *, node: str, role: str,
                 version: str) -> None:
        self.registry = registry
        self.info = Gauge("distlab_node_info", "Always 1; labels say who this node is.",
                          ["node", "role", "version"], registry=registry)
        self.info.labels(node=node, role=role, version=version).set(1)
        self.server_handled = Counter(
            "distlab_rpc_server_handled_total", "RPCs this node served, by final status.",
            ["method", "code"], registry=registry)
        self.server_latency = Histogram(
            "distlab_rpc_server_latency_seconds", "Time to serve an RPC, faults included.",
            ["method"], buckets=LATENCY_BUCKETS, registry=registry)
        self.server_in_flight = Gauge(
            "distlab_rpc_server_in_flight", "RPCs being served right now.", registry=registry)
        self.client_handled = Counter(
            "distlab_rpc_client_handled_total", "RPCs this node sent, by peer and final status.",
            ["method", "peer", "code"], registry=registry)
        self.client_latency = Histogram(
            "distlab_rpc_client_latency_seconds",
            "Time from sending an RPC to its answer, as the caller saw it.",
            ["method", "peer"], buckets=LATENCY_BUCKETS, registry=registry)
        self.fault_rules_active = Gauge(
            "distlab_fault_rules_active", "RPC-level fault rules in force on this node.",
            registry=registry)
        self.fault_injected = Counter(
            "distlab_fault_injected_total", "RPCs an RPC-level fault rule acted on.",
            ["method", "action"], registry=registry)
        self.fault_active = Gauge(
            "distlab_fault_active",
            "Faults the host applied to this machine from outside (iptables, tc), by kind.",
            ["kind"], registry=registry)
        self.auth_refused = Counter(
            "distlab_auth_refused_total",
            "Calls to a protected method refused: no lab credential, or a wrong one.",
            ["method"], registry=registry)
        self.peer_up = Gauge(
            "distlab_peer_up", "This node's failure-detector verdict on a peer (1 up, 0 down).",
            ["peer"], registry=registry)
