"""Cluster tests: test hosts (containers with sshd and a Docker engine) made once per
module, reached over real SSH by `distlab cluster`, removed afterwards even on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distlab.cluster import testhosts
from distlab.cluster.hosts import parse_host
from distlab.cluster.ssh import Shell
from tests.e2e.conftest import _engine_answers

DISTLAB = str(Path(sys.executable).parent / "distlab")


def distlab(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`distlab ARGS` run from `project` (where .distlab/ and the cluster state live)."""
    return subprocess.run([DISTLAB, *args], cwd=project, capture_output=True, text=True,
                          timeout=timeout)


def show(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


class HostsUnderTest:
    def __init__(self, project: Path, specs: list[str]) -> None:
        self.project = project
        self.specs = specs
        self.key = testhosts.key_path(project)

    def shell(self, spec: str) -> Shell:
        shell = Shell(parse_host(spec), identity=self.key)
        shell.connect()
        shell.check_root()
        return shell

    def run(self, spec: str, command: str, **options) -> str:
        shell = self.shell(spec)
        try:
            return shell.run(command, **options).output
        finally:
            shell.close()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if not _engine_answers():
        pytest.fail("no Docker engine answers: run scripts/setup-host.sh")
    project = tmp_path_factory.mktemp("cluster")
    testhosts.remove(project)
    made = HostsUnderTest(project, testhosts.make(project, 4))
    try:
        yield made
    finally:
        if (project / ".distlab" / "cluster.json").exists():
            distlab(project, "cluster", "destroy")
        testhosts.remove(project)
