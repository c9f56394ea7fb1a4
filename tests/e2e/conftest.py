"""e2e fixtures: one real lab per session, cleaned by label before and after, even on failure."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from distlab.testbed import Testbed


def _engine_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def testbed():
    if not _engine_answers():
        pytest.fail("no Docker engine answers: run scripts/setup-host.sh (e2e tests need one)")
    bed = Testbed()
    bed.clean()  # whatever a crashed earlier run left behind
    try:
        bed.up(timeout=240)
        yield bed
    finally:
        bed.clean()


@pytest.fixture
def healed(testbed):
    """Each test starts and ends with no fault active and every machine healthy."""
    testbed.nemesis.heal()
    testbed.wait_healthy(testbed.catalogue.lab(None), timeout=120)
    yield testbed
    problems = testbed.nemesis.heal()
    testbed.wait_healthy(testbed.catalogue.lab(None), timeout=120)
    assert not problems, problems
