"""nodes/switch/metrics.py: per-backend metrics, with a bounded number of backend labels."""

from prometheus_client import CollectorRegistry

from nodes.common.metrics import MAX_PEER_LABELS, OTHER
from nodes.switch.backends import BackendPool
from nodes.switch.metrics import SwitchMetrics


def test_backends_past_the_label_limit_count_under_other_and_export_no_gauges():
    registry = CollectorRegistry()
    metrics = SwitchMetrics(registry)
    pool = BackendPool(rise=1, fall=1, eject_after=3, eject_seconds=5, max_ejected_percent=50,
                       panic_threshold_percent=50)
    backends = [pool.new_backend(f"app-{n}", f"10.0.0.{n}:50051")
                for n in range(MAX_PEER_LABELS + 6)]
    for backend in backends:
        metrics.watch(backend)
        metrics.requests.labels(backend=backend.name, code="OK").inc()
    gauges = {sample.labels["backend"] for family in registry.collect()
              for sample in family.samples if sample.name == "distlab_switch_backend_outstanding"}
    assert len(gauges) == MAX_PEER_LABELS and OTHER not in gauges
    assert registry.get_sample_value("distlab_switch_backend_requests_total",
                                     {"backend": OTHER, "code": "OK"}) == 6
    for backend in backends:
        metrics.forget(backend)  # the extra ones had no gauges: nothing to remove, no error
    assert registry.get_sample_value("distlab_switch_backend_outstanding",
                                     {"backend": "app-0"}) is None
