"""e2e fixtures: real labs, one per test module, cleaned by label before and after, even on failure.

A module says which lab it needs with `testbed = lab_fixture("tiers")`; the
session cleans whatever a crashed earlier run left behind, each module brings
its lab up from clean, and the session cleans everything at the end.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from distlab.testbed import Testbed


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
