"""The hypervisor's metrics: what it holds and how its migrations go.

A vm process exits once it has moved, and its own counters with it, so the
host that drove the migration keeps the record: the progress it relays
(round, pages left, dirty rate, transfer rate: 0 between migrations) and each
migration's outcome, downtime, length and bytes. The `migration` dashboard
reads these.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nodes.rpc import vm_pb2

STRATEGIES = ("stop-and-copy", "pre-copy", "post-copy")
OUTCOMES = ("done", "failed")
PROGRESS = (
    ("round", "distlab_host_migration_round", "Round of the migration this host sends."),
    ("pages_left", "distlab_host_migration_pages_left",
     "Pages the migration this host sends has still to send."),
    ("dirty_pages_per_second", "distlab_host_migration_dirty_pages_per_second",
     "Pages the guest dirtied per second in the last pre-copy round."),
    ("bytes_per_second", "distlab_host_migration_transfer_bytes_per_second",
     "Page bytes per second the migration sends."),
)


class HostMetrics:
    def __init__(self, registry: CollectorRegistry, *, vms: Callable[[], int]) -> None:
        Gauge("distlab_host_vms", "vm processes on this host (incoming ones included).",
              registry=registry).set_function(vms)
        self._progress = {field: Gauge(name, help_text, registry=registry)
                          for field, name, help_text in PROGRESS}
        self.migrations = Counter("distlab_host_migrations_total",
                                  "Migrations this host sent, by strategy and outcome.",
                                  ["strategy", "outcome"], registry=registry)
        for strategy in STRATEGIES:
            for outcome in OUTCOMES:
                self.migrations.labels(strategy=strategy, outcome=outcome)
        self.sent = Counter("distlab_host_migration_sent_bytes_total",
                            "Page bytes sent by migrations that finished.", registry=registry)
        self.downtime = Histogram("distlab_host_migration_downtime_seconds",
                                  "From pausing the guest to the destination owning the vm.",
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10,
                                           30), registry=registry)
        self.total = Histogram("distlab_host_migration_seconds",
                               "A migration from start to its end.",
                               buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
                               registry=registry)

    def progress(self, message: vm_pb2.MigrationProgress) -> None:
        for field, gauge in self._progress.items():
            gauge.set(getattr(message, field))

    def finished(self, strategy: str, result: vm_pb2.MigrationResult | None) -> None:
        for gauge in self._progress.values():
            gauge.set(0)
        self.migrations.labels(strategy=strategy,
                               outcome="done" if result is not None else "failed").inc()
        if result is not None:
            self.sent.inc(result.bytes_sent)
            self.downtime.observe(result.downtime_seconds)
            self.total.observe(result.total_seconds)
