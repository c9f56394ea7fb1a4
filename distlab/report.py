"""The report of one scenario run: a directory a person opens and a CI system reads.

The scenario runner calls `report_dir` to pick a fresh directory and `write_report` once the
run is over (or has failed). It writes only inside that directory: `result.json` (the
machine-readable summary), `junit.xml` (one test case per checker), `history.jsonl`, three
PNG plots and `report.html`, which ties them together. Plots use matplotlib's `Figure`
directly, never pyplot, so reports can be written from any thread and without a display.
"""

from __future__ import annotations

import html
import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from distlab.checkers import Verdict
from distlab.history import FAIL, INFO, OK, History, Op

__all__ = ["FaultWindow", "RunSummary", "report_dir", "write_report"]

RESULT, JUNIT, HISTORY = "result.json", "junit.xml", "history.jsonl"
LATENCY, THROUGHPUT, RPC_COUNTS, HTML = "latency.png", "throughput.png", "rpc-counts.png", \
    "report.html"

TYPE_COLOURS = {OK: "tab:green", FAIL: "tab:red", INFO: "tab:orange"}
FAULT_COLOURS = ("tab:purple", "tab:blue", "tab:brown", "tab:gray", "tab:olive", "tab:cyan")
VERDICT_COLOURS = {"valid": "#1a7f37", "invalid": "#cf222e", "unknown": "#bf8700",
                   "error": "#6e7781"}
FIGSIZE, DPI = (8.0, 3.6), 100
LOG_SCALE_SPREAD = 100  # latencies spanning more than this factor get a log axis
MESSAGE_LIMIT = 1000    # characters of a junit message attribute; the full text is in the body


@dataclass(frozen=True)
class FaultWindow:
    """When a fault was in force, in history seconds; `end` None: still active at the end."""

    id: str
    kind: str
    machines: tuple[str, ...]
    start: float
    end: float | None

    def __post_init__(self) -> None:
        # A list is the natural thing to pass from a journal record; keep the window hashable.
        object.__setattr__(self, "machines", tuple(self.machines))
        if self.end is not None and self.end < self.start:
            raise ValueError(f"fault {self.id!r} ends at {self.end} before it starts at "
                             f"{self.start}")

    @property
    def label(self) -> str:
        """What a plot writes on the window: "kill app-2", "partition kv-1,kv-2"."""
        return f"{self.kind} {','.join(self.machines)}".strip()


@dataclass
class RunSummary:
    """Everything about a run except its history: what ran, what was checked, what was done."""

    scenario: str
    description: str
    lab: str
    seed: int
    duration: float
    started_wall: float         # unix time
    finished_wall: float
    verdicts: list[Verdict]
    faults: list[FaultWindow]
    rpc_counts: dict[str, dict[str, float]]  # machine -> {method: calls}
    versions: dict[str, str]
    error: str = ""             # set when the run itself failed
    command: str = ""           # how to reproduce the run, e.g. `distlab run x.yaml --seed 7`
    # What each migration action recorded: label, start, end, error, figures (downtime_ms ...)
    migrations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """valid | invalid | unknown | error: the run as one word."""
        if self.error:
            return "error"
        if any(v.valid is False for v in self.verdicts):
            return "invalid"
        if self.verdicts and all(v.valid is True for v in self.verdicts):
            return "valid"
        return "unknown"

    @property
    def exit_code(self) -> int:
        """0 all valid, 1 something invalid, 2 could not tell (unknown, no checks, or error)."""
        return {"valid": 0, "invalid": 1}.get(self.verdict, 2)

    @property
    def reproduce(self) -> str:
        return self.command or f"distlab run {self.scenario} --seed {self.seed}"


def report_dir(root: Path, scenario: str, started_wall: float) -> Path:
    """Create and return root/"<YYYYmmdd-HHMMSS>-<scenario>" (UTC), never one that exists:
    a second run in the same second gets "-2", then "-3". Creating it here (not just naming
    it) is what makes it unique when two runs start at once."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", scenario).strip("._")
    if not name:
        raise ValueError(f"scenario name {scenario!r} has nothing usable in a directory name")
    stamp = datetime.fromtimestamp(started_wall, tz=UTC).strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        candidate = root / (f"{stamp}-{name}" if attempt == 1 else f"{stamp}-{name}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            attempt += 1
            continue
        return candidate


def write_report(directory: Path, summary: RunSummary, history: History) -> dict[str, Path]:
    """Write every report file into `directory` and return {file name: path}.

    The small, essential files come first so that if a plot fails the verdict is on disk."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name
             for name in (RESULT, JUNIT, HISTORY, LATENCY, THROUGHPUT, RPC_COUNTS, HTML)}
    paths[RESULT].write_text(json.dumps(result(summary, history), indent=2) + "\n")
    paths[JUNIT].write_bytes(junit_xml(summary))
    history.write(paths[HISTORY])
    ops = sorted(history, key=lambda op: op.invoke)
    end = _time_end(summary, ops)
    _save(latency_figure(ops, summary.faults, end), paths[LATENCY])
    _save(throughput_figure(ops, summary.faults, end), paths[THROUGHPUT])
    _save(rpc_counts_figure(summary.rpc_counts), paths[RPC_COUNTS])
    paths[HTML].write_text(report_html(summary, history))
    return paths


# -- result.json ---------------------------------------------------------------------------


def result(summary: RunSummary, history: History) -> dict[str, Any]:
    """The content of result.json: plain JSON types only."""
    return _jsonable({
        "scenario": summary.scenario,
        "description": summary.description,
        "lab": summary.lab,
        "seed": summary.seed,
        "duration": summary.duration,
        "started": _iso(summary.started_wall),
        "finished": _iso(summary.finished_wall),
        "verdict": summary.verdict,
        "exit_code": summary.exit_code,
        "error": summary.error,
        "command": summary.reproduce,
        "checks": [{"name": v.name, "outcome": v.outcome, "problems": list(v.problems),
                    "figures": v.figures} for v in summary.verdicts],
        "faults": [{"id": f.id, "kind": f.kind, "machines": list(f.machines),
                    "start": f.start, "end": f.end} for f in summary.faults],
        "migrations": summary.migrations,
        "operations": history.counts(),
        "rpc_counts": summary.rpc_counts,
        "versions": summary.versions,
    })


def _jsonable(value: Any) -> Any:
    """Checker figures hold whatever was handy (sets, tuples, Counters with tuple keys, NaN):
    make them strict JSON rather than fail the report or write `NaN`."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="seconds")


# -- junit.xml -----------------------------------------------------------------------------


def junit_xml(summary: RunSummary) -> bytes:
    """JUnit XML as pytest writes it: <testsuites> around one <testsuite>, one <testcase>
    per checker (invalid: <failure>, unknown: <skipped>) and, if the run failed, an <error>
    case named "run"."""
    suite_name = f"distlab.{summary.scenario}"
    failures = sum(v.valid is False for v in summary.verdicts)
    skipped = sum(v.valid is None for v in summary.verdicts)
    errors = 1 if summary.error else 0
    counts = {"tests": str(len(summary.verdicts) + errors), "failures": str(failures),
              "errors": str(errors), "skipped": str(skipped),
              "time": f"{summary.duration:.3f}"}
    root = ET.Element("testsuites", {"name": "distlab", **counts})
    suite = ET.SubElement(root, "testsuite", {
        "name": _xml_text(suite_name), **counts, "timestamp": _iso(summary.started_wall),
        "hostname": "distlab"})
    properties = ET.SubElement(suite, "properties")
    for name, value in (("seed", summary.seed), ("lab", summary.lab),
                        ("command", summary.reproduce)):
        ET.SubElement(properties, "property", {"name": name, "value": _xml_text(str(value))})
    for verdict in summary.verdicts:
        case = ET.SubElement(suite, "testcase", {
            "classname": _xml_text(suite_name), "name": _xml_text(verdict.name),
            "time": "0.000"})
        details = _details(verdict)
        if verdict.valid is False:
            first = verdict.problems[0] if verdict.problems else "invalid (no problem given)"
            failure = ET.SubElement(case, "failure", {
                "message": _xml_text(_shorten(first)), "type": "invalid"})
            failure.text = _xml_text(details)
        elif verdict.valid is None:
            why = verdict.problems[0] if verdict.problems else "the checker could not decide"
            ET.SubElement(case, "skipped", {"message": _xml_text(_shorten(f"unknown: {why}"))})
            ET.SubElement(case, "system-out").text = _xml_text(details)
        elif verdict.figures:
            ET.SubElement(case, "system-out").text = _xml_text(details)
    if summary.error:
        case = ET.SubElement(suite, "testcase", {
            "classname": _xml_text(suite_name), "name": "run",
            "time": f"{summary.duration:.3f}"})
        first_line = summary.error.strip().splitlines()[0] if summary.error.strip() else "error"
        error = ET.SubElement(case, "error", {"message": _xml_text(_shorten(first_line)),
                                              "type": "RunError"})
        error.text = _xml_text(summary.error)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _details(verdict: Verdict) -> str:
    parts = list(verdict.problems)
    if verdict.figures:
        parts.append("figures: " + json.dumps(_jsonable(verdict.figures), indent=2,
                                               sort_keys=True))
    return "\n".join(parts)


# XML 1.0 cannot hold these characters even escaped; ElementTree would write them as they
# are and produce a file no parser accepts (ANSI colour codes in a problem text would do it).
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _XML_ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _shorten(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT - 1] + "…"


# -- plots -----------------------------------------------------------------------------------


def _time_end(summary: RunSummary, ops: list[Op]) -> float:
    """Where the time axis ends: the run's end, or later if an op or a fault says so."""
    candidates = [summary.duration, *(op.complete for op in ops),
                  *(f.end if f.end is not None else f.start for f in summary.faults)]
    return max([c for c in candidates if math.isfinite(c)] + [1.0])


def _new_figure(left: float = 0.08) -> Figure:
    # Fixed margins rather than a layout engine: constrained layout doubles the drawing time,
    # and these figures have a known shape.
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    figure.subplots_adjust(left=left, right=0.98, bottom=0.14, top=0.9)
    return figure


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, format="png", dpi=DPI)


def _shade_faults(ax: Any, faults: list[FaultWindow], end: float) -> None:
    """Shade each fault window and write its label at the top, staggered on three rows so
    that neighbouring labels do not print over each other."""
    top = blended_transform_factory(ax.transData, ax.transAxes)
    colours: dict[str, str] = {}
    for index, fault in enumerate(sorted(faults, key=lambda f: f.start)):
        colour = colours.setdefault(fault.kind, FAULT_COLOURS[len(colours) % len(FAULT_COLOURS)])
        stop = end if fault.end is None else fault.end
        ax.axvspan(fault.start, stop, color=colour, alpha=0.15, linewidth=0)
        label = fault.label + (" (active at end)" if fault.end is None else "")
        ax.text(fault.start, 0.98 - 0.07 * (index % 3), label, transform=top, fontsize=7,
                va="top", ha="left", color=colour, clip_on=True)


def _legend_above(ax: Any) -> None:
    """The legend on the title row, so it never covers points or fault labels."""
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, fontsize=8, frameon=False,
              borderaxespad=0.2)


def _no_operations(ax: Any) -> None:
    ax.text(0.5, 0.5, "no operations", transform=ax.transAxes, ha="center", va="center",
            fontsize=12, color="gray")


def _timeline(title: str, xlabel: str, ylabel: str, end: float) -> tuple[Figure, Any]:
    """A figure over the run's time axis, 0 to `end` seconds."""
    figure = _new_figure()
    ax = figure.add_subplot()
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, end)
    return figure, ax


def _finish_timeline(ax: Any, ops: list[Op], faults: list[FaultWindow], end: float) -> None:
    """The legend (or "no operations") and the fault windows, shaded and labelled."""
    if ops:
        _legend_above(ax)
    else:
        _no_operations(ax)
    _shade_faults(ax, faults, end)


def latency_figure(ops: list[Op], faults: list[FaultWindow], end: float) -> Figure:
    """Each op a point at (invoke time, latency), coloured by ok / fail / info."""
    figure, ax = _timeline("latency per operation", "invoke time (s)", "latency (ms)", end)
    if ops:
        for kind in (OK, FAIL, INFO):
            chosen = [op for op in ops if op.type == kind]
            if chosen:
                ax.scatter([op.invoke for op in chosen],
                           [max(op.latency, 0.0) * 1000 for op in chosen],
                           s=6, color=TYPE_COLOURS[kind], label=f"{kind} ({len(chosen)})")
        positive = [op.latency * 1000 for op in ops if op.latency > 0]
        if positive and max(positive) / min(positive) > LOG_SCALE_SPREAD:
            # Zero latencies have no place on a log axis; matplotlib masks them.
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
    _finish_timeline(ax, ops, faults, end)
    return figure


def throughput_figure(ops: list[Op], faults: list[FaultWindow], end: float) -> Figure:
    """Ops per second by completion time, 1 s bins, one line per type."""
    figure, ax = _timeline("throughput", "completion time (s)", "operations / s", end)
    if ops:
        bins = max(1, math.ceil(end))
        for kind in (OK, FAIL, INFO):
            per_second = [0] * bins
            for op in ops:
                if op.type == kind:
                    per_second[min(max(int(op.complete), 0), bins - 1)] += 1
            ax.plot([second + 0.5 for second in range(bins)], per_second,
                    color=TYPE_COLOURS[kind], linewidth=1.2,
                    label=f"{kind} ({sum(per_second)})")
        ax.set_ylim(bottom=0)
    _finish_timeline(ax, ops, faults, end)
    return figure


def rpc_counts_figure(rpc_counts: dict[str, dict[str, float]]) -> Figure:
    """Total RPC calls each machine served, largest at the top."""
    totals = sorted(((sum(methods.values()), machine) for machine, methods in rpc_counts.items()),
                    key=lambda pair: (-pair[0], pair[1]))
    # Room on the left for the longest machine name (about 7 px a character at 10 pt).
    longest = max((len(machine) for _, machine in totals), default=0)
    figure = _new_figure(left=min(0.5, 0.03 + longest * 7 / (FIGSIZE[0] * DPI)))
    ax = figure.add_subplot()
    ax.set_title("RPC calls per machine")
    if not totals:
        ax.text(0.5, 0.5, "no RPC counts collected", transform=ax.transAxes, ha="center",
                va="center", fontsize=12, color="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        return figure
    totals.reverse()  # barh draws the first bar at the bottom
    bars = ax.barh([machine for _, machine in totals], [total for total, _ in totals],
                   color="tab:blue")
    ax.bar_label(bars, labels=[f"{total:g}" for total, _ in totals], fontsize=8, padding=2)
    ax.set_xlabel("calls")
    ax.margins(x=0.1)
    return figure


# -- report.html -----------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #1f2328; }
h1 { margin-bottom: 0.2em; }
.banner { color: white; padding: 0.8em 1em; border-radius: 6px; font-size: 1.3em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
pre { margin: 0; white-space: pre-wrap; font-size: 0.85em; }
code { background: #f6f8fa; padding: 0.2em 0.4em; border-radius: 4px; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.valid { color: #1a7f37; } .invalid { color: #cf222e; } .unknown { color: #bf8700; }
.error { color: #6e7781; }
"""


def report_html(summary: RunSummary, history: History) -> str:
    """One self-contained page; the images are the PNGs beside it."""
    e = html.escape
    verdict = summary.verdict
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>distlab: {e(summary.scenario)} ({verdict})</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>distlab: {e(summary.scenario)}</h1>",
        f"<p>{e(summary.description)}</p>" if summary.description else "",
        f'<div class="banner" style="background: {VERDICT_COLOURS[verdict]}">'
        f"{e(verdict.upper())} &mdash; exit code {summary.exit_code}</div>",
    ]
    if summary.error:
        parts += ["<h2>Run error</h2>", f"<pre>{e(summary.error)}</pre>"]
    parts += [
        "<h2>Run</h2>",
        _table(["", ""], [
            ["lab", e(summary.lab)], ["seed", e(str(summary.seed))],
            ["duration", f"{summary.duration:.1f} s"],
            ["started", e(_iso(summary.started_wall))],
            ["finished", e(_iso(summary.finished_wall))],
            ["reproduce", f"<code>{e(summary.reproduce)}</code>"]], header=False),
        "<h2>Checks</h2>",
        _table(["check", "outcome", "problems", "figures"], [
            [e(v.name), f'<span class="{v.outcome}">{e(v.outcome)}</span>',
             f"<pre>{e(chr(10).join(v.problems))}</pre>" if v.problems else "",
             f"<pre>{e(json.dumps(_jsonable(v.figures), indent=1, sort_keys=True))}</pre>"
             if v.figures else ""]
            for v in summary.verdicts]) if summary.verdicts else "<p>no checks ran</p>",
        "<h2>Faults</h2>",
        _table(["id", "kind", "machines", "start (s)", "end (s)"], [
            [e(f.id), e(f.kind), e(", ".join(f.machines)), f"{f.start:.2f}",
             "active at end" if f.end is None else f"{f.end:.2f}"]
            for f in sorted(summary.faults, key=lambda f: f.start)])
        if summary.faults else "<p>no faults injected</p>",
        "<h2>Operations</h2>",
        _operations_table(history),
        f'<img src="{LATENCY}" alt="latency per operation">',
        f'<img src="{THROUGHPUT}" alt="throughput">',
        "<h2>RPC calls</h2>",
        f'<img src="{RPC_COUNTS}" alt="RPC calls per machine">',
        "<h2>Versions</h2>",
        _table(["component", "version"],
               [[e(name), e(version)] for name, version in sorted(summary.versions.items())])
        if summary.versions else "<p>no versions recorded</p>",
        f'<p>Files: <a href="{RESULT}">{RESULT}</a>, <a href="{JUNIT}">{JUNIT}</a>, '
        f'<a href="{HISTORY}">{HISTORY}</a></p>',
        "</body>", "</html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _operations_table(history: History) -> str:
    counts = history.counts()
    if not counts:
        return "<p>no operations</p>"
    rows = [[html.escape(name), str(row[OK]), str(row[FAIL]), str(row[INFO]),
             str(sum(row.values()))] for name, row in sorted(counts.items())]
    return _table(["operation", OK, FAIL, INFO, "total"], rows)


def _table(headings: list[str], rows: list[list[str]], *, header: bool = True) -> str:
    """Rows are HTML already: every caller escapes its cells."""
    head = ("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headings) + "</tr>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table>{head}{body}</table>"

