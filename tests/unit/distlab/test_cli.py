"""Tests of the `distlab` command as a user runs it: exit codes, and the error + hint lines.

Each test runs the installed entry point in a subprocess with DOCKER_HOST pointing at a socket
that does not exist, so no Docker engine is ever reached, and DISTLAB_HOME at a copy of
compose.yaml, so no journal of a lab running on this machine is read or written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DISTLAB = Path(sys.executable).with_name("distlab")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


@pytest.fixture
def distlab(tmp_path):
    home = tmp_path / "distlab"
    home.mkdir()
    shutil.copy(ROOT / "compose.yaml", home / "compose.yaml")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("DOCKER_") and key not in ("COLUMNS", "LINES")}
    env.update(DISTLAB_HOME=str(home), DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")

    def run(*args: str) -> Run:
        done = subprocess.run([str(DISTLAB), *args], env=env, capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL, check=False)
        return Run(done.returncode, done.stdout, done.stderr)

    if not DISTLAB.exists():
        pytest.skip(f"no distlab entry point at {DISTLAB}")
    return run


def assert_one_error_and_hint(run: Run, code: int) -> tuple[str, str]:
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.error_lines) == 2, run.stderr
    error, hint = run.error_lines
    assert error.startswith("distlab: error: ")
    assert hint.startswith("hint: ")
    return error, hint


def test_help_lists_the_commands(distlab):
    run = distlab("--help")
    assert run.returncode == 0
    for command in ("up", "down", "status", "chaos", "heal", "clean", "doctor"):
        assert f"  {command} " in run.stdout, command


@pytest.mark.parametrize("args, says, hint", [
    (["nosuch"], "No such command 'nosuch'", "distlab --help"),
    (["up", "--bogus"], "No such option '--bogus'", "distlab up --help"),
    (["up", "nosuchlab"], "unknown lab 'nosuchlab'", "labs: "),
    (["up", "--scale", "app=abc"], "--scale 'app=abc' is not SERVICE=N", "--scale switch=2"),
    (["up", "--scale", "nosuch=2"], "has no service 'nosuch'", "its services: switch, app"),
    (["chaos", "partition", "nosuchshape"], "'nosuchshape' is not one of",
     "distlab chaos partition --help"),
    (["chaos", "rpc", "kv-1", "explode"], "'explode' is not one of", "distlab chaos rpc --help"),
    (["chaos", "loss", "kv-1", "often"], "'often' is not a valid float",
     "distlab chaos loss --help"),
])
def test_a_bad_command_line_is_one_error_line_one_hint_and_exit_2(distlab, args, says, hint):
    error, hint_line = assert_one_error_and_hint(distlab(*args), 2)
    assert says in error
    assert hint in hint_line


def test_without_an_engine_status_says_so_and_points_at_doctor(distlab):
    error, hint = assert_one_error_and_hint(distlab("status"), 1)
    assert "Docker engine" in error
    assert "distlab doctor" in hint and "setup-host" in hint


def test_up_checks_the_lab_before_looking_for_an_engine(distlab):
    run = distlab("up", "nosuchlab")
    assert "unknown lab" in run.stderr
    assert "Docker" not in run.stderr


def test_labs_lists_the_default_lab_without_an_engine(distlab):
    run = distlab("labs")
    assert run.returncode == 0, run.stderr
    assert "tiers (default)" in run.stdout
    assert "services: switch, app, data, data-spare, data-master" in run.stdout
    assert "services: kv" in run.stdout


# -- distlab run: exit 2 whenever there is no verdict to give -------------------------------

def test_run_of_a_missing_file_is_exit_2_and_says_where_scenarios_are(distlab, tmp_path):
    result = distlab("run", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "no scenario file" in result.stdout


def test_run_of_a_wrong_scenario_lists_every_problem_with_its_line(distlab, tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("lab: tiers\nduration: 10s\nworkloads:\n  - type: bank\n    procesess: 2\n"
                     "faults:\n  - at: 2s\n    kind: kill\n    target: app-9\n")
    result = distlab("run", str(wrong))
    assert result.returncode == 2
    assert f"{wrong}:5" in result.stdout and "did you mean 'processes'" in result.stdout
    assert f"{wrong}:9" in result.stdout and "app-9" in result.stdout


def test_a_python_scenario_without_run_is_refused(distlab, tmp_path):
    script = tmp_path / "half.py"
    script.write_text("SCENARIO = 'lab: tiers'\n")
    result = distlab("run", str(script))
    assert result.returncode == 2
    assert "run(ctx)" in result.stdout


def test_a_run_that_cannot_start_is_exit_2_with_an_error_report(distlab, tmp_path):
    reports = tmp_path / "reports"
    result = distlab("run", str(ROOT / "scenarios" / "tiers-kill-app.yaml"), "--short",
                     "--reports", str(reports))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the run failed" in result.stdout
    (report,) = reports.iterdir()
    assert '"verdict": "error"' in (report / "result.json").read_text()
    assert "<error" in (report / "junit.xml").read_text()
