"""e2e fixtures: real labs, one per test module, cleaned by label before and after, even on failure.

A module says which lab it needs with `testbed = lab_fixture("tiers")`; the
session cleans whatever a crashed earlier run left behind, each module brings
its lab up from clean, and the session cleans everything at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distlab.dashboards import check_queries, load_dashboards
from distlab.testbed import PROMETHEUS_URL, Testbed

REPO = Path(__file__).resolve().parents[2]
DISTLAB = str(Path(sys.executable).parent / "distlab")


def _engine_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def engine():
    if not _engine_answers():
        pytest.fail("no Docker engine answers: run scripts/setup-host.sh (e2e tests need one)")
    bed = Testbed()
    bed.clean()
    try:
        yield bed
    finally:
        bed.clean()


def lab_fixture(name: str, *, scale: list[str] | None = None, timeout: float = 240):
    """A module-scoped `testbed` fixture with lab `name` up (and the previous lab gone)."""

    @pytest.fixture(scope="module")
    def testbed(engine):
        engine.clean()
        engine.lab = engine.up(name, scale, timeout=timeout)
        yield engine

    return testbed


@pytest.fixture
def healed(testbed):
    """Each test starts and ends with no fault active and every machine healthy."""
    testbed.nemesis.heal()
    testbed.wait_healthy(testbed.lab, timeout=120)
    yield testbed
    problems = testbed.nemesis.heal()
    testbed.wait_healthy(testbed.lab, timeout=120)
    assert not problems, problems


def eventually(check, *, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll `check` until it returns something truthy (returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} did not hold within {timeout:.0f} s (last: {last!r})")


def assert_dashboards_answer(lab: str, *, timeout: float = 90,
                             prometheus: str = PROMETHEUS_URL) -> None:
    """Every panel query of `lab`'s dashboards (and the overview) returns series.

    Rates need a couple of scrapes over their window before they have data: poll."""
    queries = [q for d in load_dashboards(REPO / "grafana" / "dashboards", lab=lab)
               for q in d.panels]
    assert queries
    deadline = time.monotonic() + timeout
    while True:
        problems = check_queries(prometheus, queries)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not problems, "\n".join(map(str, problems))


def distlab_run(scenario: str, reports: Path, *extra: str,
                timeout: float = 400) -> subprocess.CompletedProcess:
    """`distlab run scenarios/SCENARIO --short`, its report under `reports`."""
    return subprocess.run([DISTLAB, "run", str(REPO / "scenarios" / scenario), "--short",
                           "--reports", str(reports), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def the_report(reports: Path) -> Path:
    (directory,) = [d for d in reports.iterdir() if d.is_dir()]
    return directory


def show(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def run_valid(scenario: str, reports: Path) -> dict:
    """Run `scenario`; it must exit 0 with the verdict valid. Its result.json."""
    result = distlab_run(scenario, reports)
    print(result.stdout)
    assert result.returncode == 0, show(result)
    outcome = json.loads((the_report(reports) / "result.json").read_text())
    assert outcome["verdict"] == "valid"
    return outcome
