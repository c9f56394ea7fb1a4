"""Grafana dashboards as data: load them, list their PromQL, and run it against Prometheus.

Grafana itself is not available everywhere distlab runs, so the dashboards in
`grafana/dashboards/*.json` are verified another way: every panel query is
extracted, its Grafana variables are replaced by fixed values (`render_expr`),
and the result is run as an instant query against a live Prometheus
(`check_queries`). A query that fails to parse, errors, or returns no series at
all is a problem worth reporting: that panel would be broken or empty.

Who calls it: the unit tests (on the repo's dashboards, and against a fake
Prometheus) and, later, `distlab doctor` and the e2e tests against a running lab.

What it touches: `load_dashboards` only reads the JSON files of one directory;
`render_expr` is pure; `check_queries` only sends instant queries through
`distlab.observe.Prometheus`. Nothing is written anywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from distlab.observe import Prometheus, PrometheusError

#: The only datasource uid dashboards may use (see grafana/provisioning/datasources).
DATASOURCE_UID = "prometheus"

#: Panel types that carry no queries.
QUERYLESS_PANEL_TYPES = frozenset({"row", "text"})

#: Grafana's own annotation datasource (the built-in "Annotations & Alerts").
_GRAFANA_BUILTIN_UIDS = frozenset({"-- Grafana --", "grafana"})

#: Values the checker substitutes for Grafana variables: every role, and the
#: windows Grafana would pick for a 15-minute range scraped every 5s.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "role": ".*",
    "host": ".*",
    "__rate_interval": "30s",
    "__interval": "5s",
    "__interval_ms": "5000",
    "__range": "15m",
    "__range_s": "900",
    "__range_ms": "900000",
}

# $name, ${name}, ${name:format}, [[name]], [[name:format]]
_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\[\[(?P<bracketed>\w+)(?::[^\]]*)?\]\]|\$(?P<plain>\w+)"
)


class DashboardError(ValueError):
    """A dashboard file is invalid; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class PanelQuery:
    """One PromQL query of one panel, as written in the dashboard (variables unexpanded)."""

    dashboard_uid: str
    panel_title: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard_uid} / {self.panel_title!r} / {self.ref_id}"


@dataclass(frozen=True)
class Dashboard:
    path: Path
    uid: str
    title: str
    panels: list[PanelQuery] = field(default_factory=list)  # every query of every panel


@dataclass(frozen=True)
class QueryProblem:
    """A panel query that would show an error or an empty panel."""

    query: PanelQuery
    rendered: str  # the expression actually sent to Prometheus
    reason: str

    def __str__(self) -> str:
        return f"{self.query}: {self.reason} (query: {self.rendered})"


# --------------------------------------------------------------------------- loading


COMMON_DASHBOARD = "overview"


def load_dashboards(directory: Path, *, lab: str | None = None) -> list[Dashboard]:
    """Load and validate every `*.json` dashboard in `directory`, sorted by file name.

    With `lab`, only the dashboards that lab shows: `overview.json` (every lab)
    and the one named after it (`tiers.json` for lab tiers).

    Raises DashboardError (naming the file) on invalid JSON, a missing uid, a uid
    used by two files, a query panel without targets, a target without `expr`,
    or a datasource other than uid `prometheus`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DashboardError(directory, "not a directory")
    dashboards: list[Dashboard] = []
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.json")):
        if lab is not None and path.stem not in (COMMON_DASHBOARD, lab):
            continue
        dashboard = load_dashboard(path)
        if dashboard.uid in seen:
            raise DashboardError(
                path, f"duplicate dashboard uid {dashboard.uid!r} (also in {seen[dashboard.uid]})"
            )
        seen[dashboard.uid] = path
        dashboards.append(dashboard)
    return dashboards


def load_dashboard(path: Path) -> Dashboard:
    """Load and validate one dashboard file (see `load_dashboards`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DashboardError(path, f"cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DashboardError(path, f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DashboardError(path, "top level is not a JSON object")
    # An export wrapped for the HTTP API: {"dashboard": {...}, "overwrite": ...}
    if "dashboard" in data and isinstance(data["dashboard"], dict) and "panels" not in data:
        data = data["dashboard"]

    uid = data.get("uid")
    if not isinstance(uid, str) or not uid.strip():
        raise DashboardError(path, "missing dashboard uid")
    title = data.get("title")
    title = title if isinstance(title, str) else ""

    _check_datasources_outside_panels(path, data)
    queries: list[PanelQuery] = []
    for panel in _walk_panels(path, data):
        queries.extend(_panel_queries(path, uid, panel))
    return Dashboard(path=path, uid=uid, title=title, panels=queries)


def _walk_panels(path: Path, container: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, depth first: top-level `panels`, panels nested in (collapsed) rows,
    and the pre-Grafana-5 `rows[].panels` layout."""
    for key in ("panels", "rows"):
        items = container.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise DashboardError(path, f"{key!r} is not a list")
        for item in items:
            if not isinstance(item, dict):
                raise DashboardError(path, f"an entry of {key!r} is not a JSON object")
            if key == "panels":
                yield item
            yield from _walk_panels(path, item)


def _panel_name(panel: Mapping[str, Any]) -> str:
    title = panel.get("title")
    if isinstance(title, str) and title.strip():
        return title
    return f"panel id {panel.get('id', '?')}"


def _panel_queries(path: Path, uid: str, panel: Mapping[str, Any]) -> list[PanelQuery]:
    kind = panel.get("type")
    name = _panel_name(panel)
    if kind in QUERYLESS_PANEL_TYPES or ("type" not in panel and "panels" in panel):
        return []
    _check_datasource(path, panel.get("datasource"), f"panel {name!r}", required=True)
    targets = panel.get("targets")
    if not isinstance(targets, list) or not targets:
        raise DashboardError(path, f"panel {name!r} ({kind}) has no targets")
    queries = []
    for index, target in enumerate(targets):
        if not isinstance(target, dict):
            raise DashboardError(path, f"panel {name!r}: target {index} is not a JSON object")
        ref_id = target.get("refId") or f"#{index}"
        _check_datasource(
            path, target.get("datasource"), f"panel {name!r} target {ref_id}", required=False
        )
        expr = target.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            raise DashboardError(path, f"panel {name!r} target {ref_id} has no expr")
        queries.append(PanelQuery(dashboard_uid=uid, panel_title=name, ref_id=ref_id, expr=expr))
    return queries


def _check_datasources_outside_panels(path: Path, data: Mapping[str, Any]) -> None:
    """Template variables and annotations must use the same datasource as panels
    (annotations may also use Grafana's built-in one)."""
    templating = data.get("templating", {})
    variables = templating.get("list", []) if isinstance(templating, dict) else []
    for variable in variables:
        if isinstance(variable, dict) and variable.get("type") == "query":
            name = variable.get("name", "?")
            _check_datasource(path, variable.get("datasource"), f"variable {name!r}", False)
    annotations = data.get("annotations", {})
    entries = annotations.get("list", []) if isinstance(annotations, dict) else []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        source = entry.get("datasource")
        uid = source.get("uid") if isinstance(source, dict) else source
        if isinstance(uid, str) and uid in _GRAFANA_BUILTIN_UIDS:
            continue
        _check_datasource(path, source, f"annotation {entry.get('name', '?')!r}", False)


def _check_datasource(path: Path, source: Any, where: str, required: bool) -> None:
    if source is None:
        if required:
            raise DashboardError(path, f"{where} has no datasource (want uid {DATASOURCE_UID!r})")
        return
    uid = source.get("uid") if isinstance(source, dict) else source
    if uid != DATASOURCE_UID:
        raise DashboardError(path, f"{where} uses datasource {uid!r}, want uid {DATASOURCE_UID!r}")


# --------------------------------------------------------------------------- rendering


def render_expr(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """Replace Grafana variables ($role, ${role}, [[role]], $__rate_interval, $__interval,
    $__range ...) by fixed values so the query runs standalone. Unknown variables are left
    as they are (so Prometheus reports them), as are `$1`-style label_replace references."""
    values = DEFAULT_VARIABLES if variables is None else {**DEFAULT_VARIABLES, **variables}

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bracketed") or match.group("plain")
        return values.get(name, match.group(0))

    return _VARIABLE.sub(substitute, expr)


# --------------------------------------------------------------------------- checking


def check_queries(
    prometheus_url: str,
    queries: Iterable[PanelQuery],
    *,
    session: requests.Session | None = None,
    timeout: float = 5.0,
) -> list[QueryProblem]:
    """Run every query (rendered) as an instant query; return every problem found.

    A problem is: the HTTP request failing, a response that is not Prometheus API
    JSON, status other than "success" (with Prometheus' error text), or a result
    with no series at all.
    """
    prometheus = Prometheus(prometheus_url, timeout=timeout, session=session)
    problems: list[QueryProblem] = []
    for query in queries:
        rendered = render_expr(query.expr)
        reason = _check_one(prometheus, rendered)
        if reason is not None:
            problems.append(QueryProblem(query=query, rendered=rendered, reason=reason))
    return problems


def _check_one(prometheus: Prometheus, expr: str) -> str | None:
    try:
        data = prometheus.data(expr)
    except PrometheusError as exc:
        return str(exc)
    result_type = data.get("resultType")
    result = data.get("result")
    if result_type in ("vector", "matrix"):
        if not result:
            return f"no series (empty {result_type})"
        return None
    if result_type in ("scalar", "string"):
        return None
    return f"unexpected resultType {result_type!r}"
