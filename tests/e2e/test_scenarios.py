"""The scenario runner, for real: `distlab run` on the tiers lab, as a user or CI runs it.

Every scenario of the tiers library runs with `--short` and must come out
valid (exit 0) with a complete report; the deliberately broken one must come
out invalid (exit 1) with a small stale-read witness; a wrong file fails
before anything starts (exit 2, the line and the reason); Ctrl-C in the
middle of a partition heals it and cleans up (exit 2).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ElementTree

import pytest

from tests.e2e.conftest import DISTLAB, REPO, distlab_run, eventually, lab_fixture, show, the_report

pytestmark = pytest.mark.e2e
LIBRARY = ["tiers-kill-app.yaml", "tiers-pause-app.yaml", "tiers-partition-head.yaml",
           "tiers-kill-tail.yaml", "tiers-random-nemesis.yaml", "tiers-head-failover.py"]
REPORT_FILES = ("result.json", "junit.xml", "history.jsonl", "report.html", "latency.png",
                "throughput.png", "rpc-counts.png")

testbed = lab_fixture("tiers")


@pytest.mark.parametrize("scenario", LIBRARY)
def test_every_library_scenario_is_valid_with_a_full_report(testbed, tmp_path, scenario):
    result = distlab_run(scenario, tmp_path)
    print(result.stdout)
    assert result.returncode == 0, show(result)
    directory = the_report(tmp_path)
    for name in REPORT_FILES:
        assert (directory / name).stat().st_size > 0, name
    outcome = json.loads((directory / "result.json").read_text())
    assert outcome["verdict"] == "valid"
    assert outcome["faults"], "the scenario injected no fault"
    assert all(check["outcome"] == "valid" for check in outcome["checks"])
    assert outcome["rpc_counts"], "no per-machine RPC counts"
    suite = ElementTree.parse(directory / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == len(outcome["checks"])
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert testbed.nemesis.active() == [], "a fault outlived its scenario"
    assert_faults_reached_prometheus(testbed, outcome["scenario"],
                                     {fault["kind"] for fault in outcome["faults"]})


def assert_faults_reached_prometheus(testbed, scenario: str, kinds: set[str]) -> None:
    """The runner's fault gauge was scraped: Grafana can annotate these faults."""
    def seen():
        try:
            return testbed.prometheus.query(
                f'max_over_time(distlab_scenario_fault_active{{scenario="{scenario}"}}[1h])')
        except Exception:  # noqa: BLE001 - Prometheus busy: poll again
            return []
    found = eventually(seen, timeout=30, what=f"the fault gauge of {scenario} in Prometheus")
    assert {r["metric"]["kind"] for r in found if float(r["value"][1]) == 1} & kinds, found


def data_settings(testbed) -> dict[str, str]:
    states = {}
    for name in ("data-1", "data-2", "data-3"):
        with testbed.machine(name).refresh().control() as control:
            state = control.status().state
            states[name] = state.get("ack_at", "tail")  # shown only when not the default
    return states


def test_the_broken_mode_is_caught_with_a_small_stale_read(testbed, tmp_path):
    result = distlab_run("tiers-broken-ack-at-head.yaml", tmp_path)
    print(result.stdout)
    assert result.returncode == 1, show(result)
    assert "is not linearizable" in result.stdout
    outcome = json.loads((the_report(tmp_path) / "result.json").read_text())
    (check,) = outcome["checks"]
    assert check["outcome"] == "invalid"
    header, *rest = check["problems"]
    assert "smallest failing sub-history" in header
    witness = []  # the first key's ops: indented lines up to the next key's header
    for line in rest:
        if not line.startswith(" "):
            break
        witness.append(line)
    assert 2 <= len(witness) <= 6, check["problems"]
    assert any(" read " in line for line in witness), witness
    # The broken setting does not outlive the run.
    assert set(data_settings(testbed).values()) == {"tail"}


def test_a_wrong_file_fails_before_anything_starts_with_line_and_reason(testbed, tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("lab: tiers\nduration: 10s\nworkloads:\n  - type: bank\n"
                     "faults:\n  - at: 2s\n    kind: kill\n    target: app-9\n")
    before = len(testbed.nemesis.records())
    result = subprocess.run([DISTLAB, "run", str(wrong)], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 2, show(result)
    assert f"{wrong}:8" in result.stdout and "app-9" in result.stdout, result.stdout
    assert len(testbed.nemesis.records()) == before
    assert not (REPO / "reports").exists() or not any(
        "wrong" in d.name for d in (REPO / "reports").iterdir())


def test_ctrl_c_during_a_partition_heals_and_cleans_up(testbed, tmp_path):
    process = subprocess.Popen(
        [DISTLAB, "run", str(REPO / "scenarios" / "tiers-partition-head.yaml"),
         "--reports", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # As in a terminal's foreground: a test run started in the background (`make test
        # &` from a script) hands its children SIGINT ignored, and Python then keeps it so.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "-partition)" in line:  # "t=   5.0s  partition data-1 (f3-partition)"
                break
        time.sleep(1.0)
        assert testbed.nemesis.active(), "no partition to interrupt"
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(seen) + rest
    assert process.returncode == 2, output
    assert "interrupted" in output
    assert testbed.nemesis.active() == []
    outcome = json.loads((the_report(tmp_path) / "result.json").read_text())
    assert outcome["verdict"] == "error" and "interrupted" in outcome["error"]
    testbed.wait_healthy(testbed.lab, timeout=120)
    # Every machine reaches every other again: the head's iptables rules are gone.
    head_side = [m for m in testbed.machines() if m.info.role == "data"]
    for machine in head_side:
        rules = machine.exec(["iptables", "-S"]).output
        assert "DROP" not in rules, f"{machine.name} still drops: {rules}"
