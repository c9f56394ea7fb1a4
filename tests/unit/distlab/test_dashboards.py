"""distlab.dashboards: the repo's Grafana dashboards load and are well formed, bad
dashboards are rejected naming the file, and check_queries reports every problem
against a real (tiny, fake) Prometheus HTTP API on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import yaml

from distlab.dashboards import (
    DashboardError,
    PanelQuery,
    QueryProblem,
    check_queries,
    load_dashboards,
    render_expr,
)
from distlab.scenarios.exporter import FaultExporter
from tests.support.promtool import UNAVAILABLE, promtool_argv, run_promtool

REPO = Path(__file__).resolve().parents[3]
DASHBOARDS = REPO / "grafana" / "dashboards"
DS = {"type": "prometheus", "uid": "prometheus"}


# --------------------------------------------------------------------------- the real dashboards


def test_repo_dashboards_load_with_queries_on_every_panel() -> None:
    dashboards = load_dashboards(DASHBOARDS)
    assert dashboards, "no dashboards in grafana/dashboards"
    uids = [d.uid for d in dashboards]
    assert len(uids) == len(set(uids))
    for dashboard in dashboards:
        raw = json.loads(dashboard.path.read_text())
        query_panels = [p for p in _all_panels(raw) if p.get("type") not in ("row", "text")]
        titled = {q.panel_title for q in dashboard.panels}
        for panel in query_panels:
            assert panel["title"] in titled, f"{dashboard.path}: {panel['title']} has no query"
        assert all(q.expr.strip() for q in dashboard.panels)


def test_overview_dashboard_settings() -> None:
    (overview,) = [d for d in load_dashboards(DASHBOARDS) if d.uid == "distlab-overview"]
    raw = json.loads(overview.path.read_text())
    assert overview.title == "distlab overview"
    assert raw["refresh"] == "5s"
    assert raw["time"]["from"] == "now-15m"
    exprs = [q.expr for q in overview.panels]
    assert any("distlab_peer_up" in e for e in exprs)
    assert any("distlab_fault_active" in e for e in exprs)
    assert any("distlab_fault_rules_active" in e for e in exprs)
    assert any("role:distlab_rpc_server_requests:rate30s" in e for e in exprs)
    # Which host each machine runs on (a swarm's host-1 ..., `local` on one engine).
    assert any("sum by (host)" in e for e in exprs)
    assert [v["name"] for v in raw["templating"]["list"]] == ["role", "host"]
    annotations = [a.get("expr", "") for a in raw["annotations"]["list"]]
    assert any('alertname="FaultActive"' in a for a in annotations)
    for panel in _all_panels(raw):
        if panel.get("type") not in ("row", "text"):
            assert panel["datasource"] == DS
            assert all(t["datasource"] == DS for t in panel["targets"])


def test_mapreduce_dashboard_shows_tasks_records_reexecutions_backups_and_load() -> None:
    (mapreduce,) = [d for d in load_dashboards(DASHBOARDS) if d.uid == "distlab-mapreduce"]
    exprs = {q.panel_title: q.expr for q in mapreduce.panels}
    wanted = {"by (phase, state) (distlab_mapreduce_tasks)": "tasks by phase and state",
              "rate(distlab_mapreduce_records_total": "records per second",
              "distlab_mapreduce_scheduler_events_total": "re-executions and backups",
              "by (machine) (rate(distlab_mapreduce_worker_task_seconds_sum": "load per worker"}
    for fragment, what in wanted.items():
        assert any(fragment in expr for expr in exprs.values()), f"no panel of {what}"
    raw = json.loads(mapreduce.path.read_text())
    assert raw["refresh"] == "5s" and raw["time"]["from"] == "now-15m"


def test_bittorrent_dashboard_shows_swarm_size_progress_rates_chokes_bad_pieces_and_announces(
) -> None:
    (bittorrent,) = [d for d in load_dashboards(DASHBOARDS, lab="bittorrent")
                     if d.uid == "distlab-bittorrent"]
    exprs = [q.expr for q in bittorrent.panels]
    wanted = {"by (state) (distlab_tracker_peers)": "swarm size",
              "by (machine) (distlab_bittorrent_progress_ratio)": "progress per peer",
              "rate(distlab_bittorrent_uploaded_bytes_total": "upload rate per peer",
              "rate(distlab_bittorrent_downloaded_bytes_total": "download rate per peer",
              "by (state) (distlab_bittorrent_connections)": "choke state",
              "distlab_bittorrent_pieces_bad_total": "bad pieces",
              "distlab_bittorrent_banned_peers": "bans",
              "rate(distlab_tracker_announces_total": "tracker announces"}
    for fragment, what in wanted.items():
        assert any(fragment in expr for expr in exprs), f"no panel of {what}"
    raw = json.loads(bittorrent.path.read_text())
    assert raw["refresh"] == "5s" and raw["time"]["from"] == "now-15m"


def test_repo_dashboard_queries_render_without_variables() -> None:
    for dashboard in load_dashboards(DASHBOARDS):
        for query in dashboard.panels:
            assert "$" not in render_expr(query.expr), query


def test_repo_dashboard_queries_only_use_recorded_rules_that_exist() -> None:
    rules = yaml.safe_load((REPO / "prometheus" / "rules" / "distlab.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for dashboard in load_dashboards(DASHBOARDS):
        for query in dashboard.panels:
            for name in _recording_rule_names(query.expr):
                assert name in recorded, f"{query}: {name} is not a recording rule"


@pytest.mark.skipif(promtool_argv() is None, reason=UNAVAILABLE)
def test_repo_dashboard_queries_parse_as_promql() -> None:
    """promtool has no 'parse this expression' command, but it checks the PromQL of
    rule files: wrap every rendered panel query in a recording rule."""
    queries = [q for d in load_dashboards(DASHBOARDS) for q in d.panels]
    rules = [
        {"record": f"dashboard:query_{i}", "expr": render_expr(q.expr)}
        for i, q in enumerate(queries)
    ]
    # Inside the checkout, where the promtool container can read it.
    rule_file = REPO / ".distlab" / "dashboard-queries.yml"
    rule_file.parent.mkdir(exist_ok=True)
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = run_promtool("check", "rules", str(rule_file))
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- scenario faults

SCENARIO_FAULTS = "max by (fault, kind, machines) (distlab_scenario_fault_active) > 0"
# Words of PromQL that look like metric names but are not.
_PROMQL_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right",
                           "bool", "and", "or", "unless", "offset"})


def _scenario_fault_annotations(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in raw["annotations"]["list"] if a.get("expr") == SCENARIO_FAULTS]


@pytest.mark.parametrize("uid", ["distlab-overview", "distlab-tiers", "distlab-mapreduce",
                                 "distlab-bittorrent"])
def test_dashboards_annotate_the_faults_a_scenario_injects(uid: str) -> None:
    (dashboard,) = [d for d in load_dashboards(DASHBOARDS) if d.uid == uid]
    raw = json.loads(dashboard.path.read_text())
    (annotation,) = _scenario_fault_annotations(raw)
    assert annotation["datasource"] == DS
    assert annotation["enable"] is True and annotation["hide"] is False
    assert annotation["titleFormat"] == "{{kind}} {{machines}}"


def test_scenario_fault_annotation_reads_what_the_exporter_exports() -> None:
    """The names in the annotation's query are the exporter's metric and labels, and
    its title and text only use labels the aggregation keeps."""
    exporter = FaultExporter("s")
    exporter.fault_started("f1", "kill", ["kv-1"])
    exported = {s.name: set(s.labels) for f in exporter.registry.collect() for s in f.samples}
    grouped = {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", SCENARIO_FAULTS)
               for label in group.split(",")}
    selectors = re.sub(r"\bby\s*\([^)]*\)", "", SCENARIO_FAULTS)
    metrics = {name for name in re.findall(r"\b([a-zA-Z_:][\w:]*)\b(?!\s*\()", selectors)
               if name not in _PROMQL_WORDS}
    assert metrics == {"distlab_scenario_fault_active"}
    assert metrics <= exported.keys()
    assert grouped == {"fault", "kind", "machines"}
    assert grouped <= exported["distlab_scenario_fault_active"]
    for dashboard in load_dashboards(DASHBOARDS):
        for annotation in _scenario_fault_annotations(json.loads(dashboard.path.read_text())):
            templates = annotation["titleFormat"] + annotation.get("textFormat", "")
            assert set(re.findall(r"{{\s*(\w+)\s*}}", templates)) <= grouped, dashboard.path
            tags = {t.strip() for t in annotation.get("tagKeys", "").split(",") if t.strip()}
            assert tags <= grouped, dashboard.path


@pytest.mark.skipif(promtool_argv() is None, reason=UNAVAILABLE)
def test_repo_dashboard_annotations_parse_as_promql() -> None:
    exprs = sorted({a["expr"] for d in load_dashboards(DASHBOARDS)
                    for a in json.loads(d.path.read_text())["annotations"]["list"]
                    if "expr" in a})
    assert SCENARIO_FAULTS in exprs
    rules = [{"record": f"dashboard:annotation_{i}", "expr": render_expr(e)}
             for i, e in enumerate(exprs)]
    rule_file = REPO / ".distlab" / "dashboard-annotations.yml"
    rule_file.parent.mkdir(exist_ok=True)
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "annotations", "rules": rules}]}))
    done = run_promtool("check", "rules", str(rule_file))
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- bad dashboards


def _dashboard(uid: str = "d1", panels: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if panels is None:
        panels = [_panel("p", [_target("A", "up")])]
    return {"uid": uid, "title": uid, "panels": panels}


def _panel(title: str, targets: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"type": "timeseries", "title": title, "datasource": DS, "targets": targets, **extra}


def _target(ref_id: str, expr: str | None, **extra: Any) -> dict[str, Any]:
    target: dict[str, Any] = {"refId": ref_id, "datasource": DS, **extra}
    if expr is not None:
        target["expr"] = expr
    return target


def _write(directory: Path, name: str, content: Any) -> Path:
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_nested_rows_and_text_panels(tmp_path: Path) -> None:
    dashboard = _dashboard(
        panels=[
            {"type": "text", "title": "about", "options": {"content": "hi"}},
            _panel("top", [_target("A", "up"), _target("B", "sum(up)")]),
            {
                "type": "row",
                "title": "collapsed",
                "collapsed": True,
                "panels": [_panel("inner", [_target("A", "rate(x[$__rate_interval])")])],
            },
        ]
    )
    _write(tmp_path, "a.json", dashboard)
    (loaded,) = load_dashboards(tmp_path)
    assert loaded.uid == "d1"
    assert loaded.panels == [
        PanelQuery("d1", "top", "A", "up"),
        PanelQuery("d1", "top", "B", "sum(up)"),
        PanelQuery("d1", "inner", "A", "rate(x[$__rate_interval])"),
    ]


def test_legacy_rows_layout(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "old.json",
        {"uid": "old", "rows": [{"panels": [_panel("p", [_target("A", "up")])]}]},
    )
    (loaded,) = load_dashboards(tmp_path)
    assert [q.expr for q in loaded.panels] == ["up"]


def test_empty_directory_has_no_dashboards(tmp_path: Path) -> None:
    assert load_dashboards(tmp_path) == []


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DashboardError, match="not a directory"):
        load_dashboards(tmp_path / "nope")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"uid": "x", "panels": [', "invalid JSON"),
        ("[]", "not a JSON object"),
        ({"title": "no uid", "panels": []}, "missing dashboard uid"),
        (_dashboard(panels=[_panel("empty", [])]), "'empty'.*no targets"),
        (_dashboard(panels=[{"type": "stat", "title": "bare", "datasource": DS}]), "no targets"),
        (_dashboard(panels=[_panel("p", [_target("A", None)])]), "target A has no expr"),
        (_dashboard(panels=[_panel("p", [_target("A", "  ")])]), "target A has no expr"),
        (
            _dashboard(panels=[_panel("p", [_target("A", "up")], datasource={"uid": "loki"})]),
            "datasource 'loki'",
        ),
        (
            _dashboard(panels=[_panel("p", [_target("A", "up", datasource={"uid": "other"})])]),
            "target A uses datasource 'other'",
        ),
        (
            _dashboard(panels=[{"type": "stat", "title": "p", "targets": [_target("A", "up")]}]),
            "no datasource",
        ),
        (
            {
                **_dashboard(),
                "templating": {"list": [{"name": "r", "type": "query", "datasource": "graphite"}]},
            },
            "variable 'r' uses datasource 'graphite'",
        ),
        (
            _dashboard(
                panels=[
                    {
                        "type": "row",
                        "title": "r",
                        "panels": [_panel("deep", [_target("Z", "up", datasource={"uid": "x"})])],
                    }
                ]
            ),
            "'deep' target Z uses datasource 'x'",
        ),
    ],
)
def test_bad_dashboard_names_the_file(tmp_path: Path, content: Any, reason: str) -> None:
    _write(tmp_path, "a-good.json", _dashboard(uid="good"))
    bad = _write(tmp_path, "b-bad.json", content)
    with pytest.raises(DashboardError, match=reason) as caught:
        load_dashboards(tmp_path)
    assert caught.value.path == bad
    assert str(bad) in str(caught.value)


def test_duplicate_uids_across_files(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.json", _dashboard(uid="same"))
    second = _write(tmp_path, "b.json", _dashboard(uid="same"))
    with pytest.raises(DashboardError, match="duplicate dashboard uid 'same'") as caught:
        load_dashboards(tmp_path)
    assert caught.value.path == second
    assert str(first) in str(caught.value)


def test_grafana_builtin_annotation_is_allowed(tmp_path: Path) -> None:
    builtin = {
        "name": "Annotations & Alerts",
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    }
    _write(tmp_path, "a.json", {**_dashboard(), "annotations": {"list": [builtin]}})
    assert len(load_dashboards(tmp_path)) == 1


# --------------------------------------------------------------------------- render_expr


@pytest.mark.parametrize(
    ("expr", "rendered"),
    [
        ('up{role=~"$role"}', 'up{role=~".*"}'),
        ('up{role=~"${role}"}', 'up{role=~".*"}'),
        ('up{role=~"${role:regex}"}', 'up{role=~".*"}'),
        ('up{role=~"[[role]]"}', 'up{role=~".*"}'),
        ("rate(x[$__rate_interval])", "rate(x[30s])"),
        ("rate(x[$__interval])", "rate(x[5s])"),
        ("increase(x[$__range])", "increase(x[15m])"),
        ("rate(x[${__rate_interval}]) + rate(y[$__interval])", "rate(x[30s]) + rate(y[5s])"),
        (
            'label_replace(up, "m", "$1", "instance", "(.*):.*")',
            'label_replace(up, "m", "$1", "instance", "(.*):.*")',
        ),
        ('up{x="$unknown"}', 'up{x="$unknown"}'),
        ("up", "up"),
    ],
)
def test_render_expr(expr: str, rendered: str) -> None:
    assert render_expr(expr) == rendered


def test_render_expr_overrides() -> None:
    assert render_expr('up{role=~"$role"}', {"role": "kv"}) == 'up{role=~"kv"}'


# --------------------------------------------------------------------------- check_queries

# query -> (HTTP status, JSON body or raw text)
_VECTOR = {
    "status": "success",
    "data": {"resultType": "vector", "result": [{"metric": {"role": "kv"}, "value": [1, "3"]}]},
}
_RESPONSES: dict[str, tuple[int, Any]] = {
    'sum by (role) (up{role=~".*"})': (200, _VECTOR),
    "absent_metric": (200, {"status": "success", "data": {"resultType": "vector", "result": []}}),
    "scalar(1)": (200, {"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}}),
    "sum(": (
        400,
        {
            "status": "error",
            "errorType": "bad_data",
            "error": 'invalid parameter "query": 1:5: parse error: unexpected end of input',
        },
    ),
    "teapot": (500, "<html>internal error</html>"),
}


class _FakePrometheus(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # http.server's method naming
        url = urlparse(self.path)
        if url.path != "/api/v1/query":
            self._reply(404, {"status": "error", "errorType": "not_found", "error": url.path})
            return
        query = parse_qs(url.query).get("query", [""])[0]
        type(self).seen.append(query)
        status, body = _RESPONSES.get(
            query, (422, {"status": "error", "errorType": "execution", "error": "unknown"})
        )
        self._reply(status, body)

    def _reply(self, status: int, body: Any) -> None:
        payload = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def fake_prometheus() -> Iterator[str]:
    _FakePrometheus.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _q(ref_id: str, expr: str) -> PanelQuery:
    return PanelQuery("d1", f"panel {ref_id}", ref_id, expr)


def test_check_queries_all_good(fake_prometheus: str) -> None:
    queries = [_q("A", 'sum by (role) (up{role=~"$role"})'), _q("B", "scalar(1)")]
    assert check_queries(fake_prometheus + "/", queries) == []
    assert _FakePrometheus.seen == ['sum by (role) (up{role=~".*"})', "scalar(1)"]


def test_check_queries_reports_every_problem(fake_prometheus: str) -> None:
    queries = [
        _q("A", "absent_metric"),
        _q("B", 'sum by (role) (up{role=~"${role}"})'),
        _q("C", "sum("),
        _q("D", "teapot"),
    ]
    with requests.Session() as session:
        problems = check_queries(fake_prometheus, queries, session=session, timeout=2.0)
    assert [p.query.ref_id for p in problems] == ["A", "C", "D"]
    by_ref = {p.query.ref_id: p for p in problems}
    assert "no series" in by_ref["A"].reason
    assert "bad_data" in by_ref["C"].reason
    assert "parse error: unexpected end of input" in by_ref["C"].reason
    assert "HTTP 500" in by_ref["D"].reason
    assert all(isinstance(p, QueryProblem) for p in problems)
    assert "panel A" in str(by_ref["A"]) and "absent_metric" in str(by_ref["A"])


def test_check_queries_unreachable_prometheus() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queries = [_q("A", "up"), _q("B", "sum(up)")]
    problems = check_queries(f"http://127.0.0.1:{port}", queries, timeout=2.0)
    assert [p.query.ref_id for p in problems] == ["A", "B"]
    assert all("HTTP request" in p.reason and "failed" in p.reason for p in problems)


# --------------------------------------------------------------------------- helpers


def _all_panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels", []):
        yield panel
        yield from _all_panels(panel)


def _recording_rule_names(expr: str) -> list[str]:
    """Metric names of the form level:metric:operations used in an expression."""
    return re.findall(r"\b[a-z_]+:[a-z_0-9]+:[a-z_0-9]+\b", expr)
