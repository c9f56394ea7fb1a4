"""The mapreduce dashboard (grafana/dashboards/mapreduce.json) reads only what the master and
the workers export: after a job on loopback, every metric its panels name is in a scrape of
one of them, with every label the panel groups by. (Against a live Prometheus the e2e test
runs the queries themselves; `machine` is the label Prometheus adds to each target.)"""

from __future__ import annotations

import re
from pathlib import Path

from distlab.dashboards import load_dashboards
from tests.integration.conftest import scrape
from tests.integration.mapreduce_support import mr, write_corpus  # noqa: F401 - the fixture

DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
#: Labels Prometheus adds to every target (distlab.observe.targets_document), or PromQL makes.
TARGET_LABELS = {"machine", "role", "lab", "job", "instance"}


def test_every_metric_of_the_mapreduce_dashboard_is_exported_with_its_labels(mr):  # noqa: F811
    inputs = write_corpus(mr.input_dir, files=2, lines=200)
    mr.start_master()
    workers = [mr.start_worker(f"mr-worker-{i}") for i in range(2)]
    status = mr.wait(mr.submit("wordcount", inputs=inputs, reducers=2))
    assert status.state == "done", status.error
    exported: dict[str, set[str]] = {}
    for node in (mr.master, *workers):
        for name, labels in scrape(node).samples:
            exported.setdefault(name, set()).update(label for label, _ in labels)
    (dashboard,) = [d for d in load_dashboards(DASHBOARDS, lab="mapreduce")
                    if d.uid == "distlab-mapreduce"]
    checked = 0
    for query in dashboard.panels:
        grouped = {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", query.expr)
                   for label in group.split(",")}
        for name in re.findall(r"\b(distlab_mapreduce_\w+)", query.expr):
            assert name in exported, f"{query}: {name} is not exported by the master or a worker"
            missing = grouped - exported[name] - TARGET_LABELS
            assert not missing, f"{query}: {name} has no label {sorted(missing)}"
            checked += 1
    assert checked >= 10
