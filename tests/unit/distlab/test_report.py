"""The report directory of a run: every file written, readable by the tools that read it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from distlab.checkers import Verdict
from distlab.history import FAIL, INFO, OK, History, Op
from distlab.report import FaultWindow, RunSummary, report_dir, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FILES = ("result.json", "junit.xml", "history.jsonl", "latency.png", "throughput.png",
         "rpc-counts.png", "report.html")
STARTED = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def bank_history() -> History:
    ops = []
    for i in range(40):
        invoke = i * 0.1
        kind = OK if i % 10 else (FAIL if i % 20 else INFO)
        ops.append(Op(process=i % 3, op="transfer" if i % 2 else "read",
                      args={"from": 1, "to": 2, "amount": 5}, invoke=invoke,
                      complete=invoke + (0.002 if kind == OK else 0.5), type=kind,
                      error="" if kind == OK else "DEADLINE_EXCEEDED"))
    return History.of_ops(ops)


def summary(verdicts: list[Verdict], *, error: str = "", faults=None,
            rpc_counts=None) -> RunSummary:
    return RunSummary(
        scenario="bank-partition", description="transfers while a node is cut off",
        lab="bank", seed=42, duration=4.5, started_wall=STARTED, finished_wall=STARTED + 5,
        verdicts=verdicts,
        faults=faults if faults is not None else [
            FaultWindow("f1", "kill", ("app-2",), 1.0, 2.0),
            FaultWindow("f2", "partition", ("app-1", "app-3"), 3.0, None)],
        rpc_counts=rpc_counts if rpc_counts is not None else {
            "app-1": {"Transfer": 30, "Read": 12}, "app-2": {"Transfer": 4}},
        versions={"distlab": "0.1.0", "grpcio": "1.85.1"}, error=error,
        command="distlab run scenarios/bank-partition.yaml --seed 42")


def three_verdicts() -> list[Verdict]:
    return [
        Verdict("total-conserved", True, figures={"reads": 20}),
        Verdict("no-negative-balance", False,
                problems=["account 3 at -5 after op 17", "<script>alert(1)</script>"],
                figures={"accounts": {1, 2}, ("a", 1): float("nan")}),
        Verdict("linearizable", None, problems=["search space exhausted after 10 s"]),
    ]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], RunSummary]:
    """One report shared by the tests that only read it: drawing three plots is the slow part."""
    run = summary(three_verdicts())
    return write_report(tmp_path_factory.mktemp("report"), run, bank_history()), run


def test_every_file_is_written_and_the_plots_are_png(written) -> None:
    paths, _ = written
    assert set(paths) == set(FILES)
    for name, path in paths.items():
        assert path.name == name and path.stat().st_size > 0, name
    for name in ("latency.png", "throughput.png", "rpc-counts.png"):
        assert paths[name].read_bytes()[:8] == PNG_MAGIC, name


def test_history_jsonl_reads_back(written) -> None:
    paths, _ = written
    assert History.read(paths["history.jsonl"]).counts() == bank_history().counts()


def test_junit_parses_with_counts_and_failure_message(written) -> None:
    paths, _ = written
    root = ET.parse(paths["junit.xml"]).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "distlab.bank-partition"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"),
            suite.get("skipped")) == ("3", "1", "0", "1")
    assert suite.get("time") == "4.500"
    assert suite.get("timestamp", "").startswith("2023-11-14T22:13:20")
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["seed"] == "42" and properties["lab"] == "bank"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"total-conserved", "no-negative-balance", "linearizable"}
    assert all(c.get("classname") == "distlab.bank-partition" for c in cases.values())
    assert cases["total-conserved"].find("failure") is None
    failure = cases["no-negative-balance"].find("failure")
    assert failure is not None and failure.get("message") == "account 3 at -5 after op 17"
    assert "<script>alert(1)</script>" in (failure.text or "")
    assert "accounts" in (failure.text or "")  # figures travel with the failure
    skipped = cases["linearizable"].find("skipped")
    assert skipped is not None and "search space exhausted" in skipped.get("message", "")


def test_junit_run_error_is_an_error_case_and_survives_control_characters(tmp_path) -> None:
    run = summary([Verdict("total-conserved", True)],
                  error="engine vanished \x1b[31mred\x1b[0m\nTraceback ...")
    paths = write_report(tmp_path, run, History())
    suite = ET.parse(paths["junit.xml"]).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("2", "1", "0")
    error = next(c for c in suite.iter("testcase") if c.get("name") == "run").find("error")
    assert error is not None and error.get("message", "").startswith("engine vanished")
    assert "Traceback" in (error.text or "")


def test_result_json_round_trips(written) -> None:
    paths, run = written
    data = json.loads(paths["result.json"].read_text())
    assert data["verdict"] == "invalid" and data["exit_code"] == 1 == run.exit_code
    assert data["started"] == "2023-11-14T22:13:20+00:00"
    assert [c["outcome"] for c in data["checks"]] == ["valid", "invalid", "unknown"]
    assert data["checks"][1]["figures"]["accounts"] == [1, 2]
    assert data["checks"][1]["figures"]["('a', 1)"] == "nan"
    assert data["faults"][1] == {"id": "f2", "kind": "partition",
                                 "machines": ["app-1", "app-3"], "start": 3.0, "end": None}
    assert data["operations"] == bank_history().counts()
    assert data["rpc_counts"]["app-1"] == {"Transfer": 30, "Read": 12}
    assert data["seed"] == 42 and data["lab"] == "bank"


def test_html_names_checks_and_escapes_problem_text(written) -> None:
    paths, _ = written
    page = paths["report.html"].read_text()
    for name in ("total-conserved", "no-negative-balance", "linearizable"):
        assert name in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "distlab run scenarios/bank-partition.yaml --seed 42" in page
    for image in ("latency.png", "throughput.png", "rpc-counts.png"):
        assert f'src="{image}"' in page
    assert "kill" in page and "active at end" in page


def test_empty_history_and_no_rpc_counts_still_write_plots(tmp_path) -> None:
    run = summary([], faults=[], rpc_counts={})
    paths = write_report(tmp_path, run, History())
    for name in ("latency.png", "throughput.png", "rpc-counts.png"):
        assert paths[name].read_bytes()[:8] == PNG_MAGIC
    data = json.loads(paths["result.json"].read_text())
    assert data["verdict"] == "unknown" and data["exit_code"] == 2
    assert "no operations" in paths["report.html"].read_text()


@pytest.mark.parametrize(("valids", "error", "code", "verdict"), [
    ([True, True], "", 0, "valid"),
    ([True, False], "", 1, "invalid"),
    ([False, None], "", 1, "invalid"),
    ([True, None], "", 2, "unknown"),
    ([], "", 2, "unknown"),
    ([True], "lab did not come up", 2, "error"),
    ([False], "lab did not come up", 2, "error"),
])
def test_exit_code(valids, error, code, verdict) -> None:
    run = summary([Verdict(f"c{i}", v) for i, v in enumerate(valids)], error=error)
    assert (run.exit_code, run.verdict) == (code, verdict)


def test_report_dir_is_unique(tmp_path) -> None:
    first = report_dir(tmp_path, "bank-partition", STARTED)
    second = report_dir(tmp_path, "bank-partition", STARTED)
    third = report_dir(tmp_path, "bank-partition", STARTED)
    assert first.name == "20231114-221320-bank-partition"
    assert second.name == first.name + "-2" and third.name == first.name + "-3"
    assert all(p.is_dir() and p.parent == tmp_path for p in (first, second, third))


def test_report_dir_keeps_a_path_like_scenario_inside_root(tmp_path) -> None:
    directory = report_dir(tmp_path, "../scenarios/bank.yaml", STARTED)
    assert directory.parent == tmp_path
    with pytest.raises(ValueError, match="scenario name"):
        report_dir(tmp_path, "/", STARTED)


def test_fault_window_label_and_validation() -> None:
    assert FaultWindow("f1", "kill", ("app-2",), 1.0, None).label == "kill app-2"
    window = FaultWindow("f2", "partition", ["kv-1", "kv-2"], 0.0, 1.0)  # type: ignore[arg-type]
    assert window.machines == ("kv-1", "kv-2") and window.label == "partition kv-1,kv-2"
    with pytest.raises(ValueError, match="before it starts"):
        FaultWindow("f3", "pause", ("kv-1",), 5.0, 4.0)
