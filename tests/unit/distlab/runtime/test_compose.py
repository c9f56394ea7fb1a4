"""distlab/runtime/compose.py without Docker: machines read from a sparse listing, and
`distlab clean` / `distlab down` as a user runs them against a fake engine
(fake_api_client.py) — what they print, their exit code, never a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from distlab import cli, testbed
from distlab.commands import Result, Runner
from distlab.errors import CommandTimeout
from distlab.registry import load_registry
from distlab.runtime.compose import ComposeRuntime, machine_info
from tests.unit.distlab.runtime.fake_api_client import FakeEngine, api_error, read_timeout

ROOT = Path(__file__).resolve().parents[4]


def summary(state: str = "running", status: str = "Up 2 minutes (healthy)", **extra) -> dict:
    """One entry of `GET /containers/json` as Docker 20.10 (API 1.41) answers it."""
    return {"Id": "ab" * 32, "Names": ["/distlab-chord-3"], "State": state, "Status": status,
            "Labels": {"distlab.lab": "chord", "distlab.role": "chord",
                       "com.docker.compose.service": "chord"},
            "Ports": [{"PrivatePort": 9100, "Type": "tcp"},
                      {"IP": "127.0.0.1", "PrivatePort": 50051, "PublicPort": 32771,
                       "Type": "tcp"}],
            "NetworkSettings": {"Networks": {"distlab_lab": {
                "IPAddress": "172.18.0.5", "Gateway": "172.18.0.1"}}}, **extra}


def test_a_machine_is_read_from_the_sparse_listing():
    info = machine_info(summary())
    assert (info.name, info.container, info.lab, info.role, info.service) == (
        "chord-3", "distlab-chord-3", "chord", "chord", "chord")
    assert (info.state, info.health) == ("running", "healthy")
    assert info.grpc_endpoint == "127.0.0.1:32771"
    assert (info.addresses, info.gateways) == (("172.18.0.5",), ("172.18.0.1",))


@pytest.mark.parametrize("state, status, health, endpoint", [
    ("running", "Up 4 seconds (health: starting)", "starting", True),
    ("running", "Up 3 minutes (unhealthy)", "unhealthy", True),
    ("running", "Up 3 minutes", "-", True),  # no health check (Prometheus)
    ("paused", "Up 3 minutes (Paused)", "-", False),
    ("exited", "Exited (137) 5 seconds ago", "-", False),
])
def test_state_and_health_come_from_the_listing(state, status, health, endpoint):
    info = machine_info(summary(state, status))
    assert (info.state, info.health) == (state, health)
    assert (info.grpc_endpoint is not None) == endpoint


def test_a_health_field_wins_over_the_status_text():
    # API 1.52 lists health itself.
    assert machine_info(summary(Health={"Status": "unhealthy"})).health == "unhealthy"


class ComposeDownHangs(Runner):
    """`docker compose down` on a drowning engine: it never returns in time."""

    def __init__(self) -> None:
        self.argvs: list[tuple[str, ...]] = []

    def run(self, argv, **options) -> Result:
        self.argvs.append(tuple(argv))
        raise CommandTimeout(f"`{' '.join(argv[:2])} ... down` did not finish within 120 s")


@pytest.fixture
def home(tmp_path) -> Path:
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    return tmp_path


@pytest.fixture
def engine() -> FakeEngine:
    engine = FakeEngine()
    engine.add_network()
    for index in range(1, 7):
        engine.add_container(f"distlab-chord-{index}")
    engine.add_volume("distlab_prometheus-data", lab="common")
    engine.add_container("distlab-prometheus-1", lab="common", anonymous_volume=False,
                         volumes=("distlab_prometheus-data",))
    return engine


def distlab(home: Path, engine: FakeEngine, *args: str):
    runtime = ComposeRuntime(home, runner=ComposeDownHangs(), engine_api=lambda: engine,
                             sweep_options={"sleep": lambda seconds: None})
    main = cli.build_cli(load_registry())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "Testbed", lambda: testbed.Testbed(runtime, root=home))
        return CliRunner().invoke(main, list(args))


def test_clean_removes_everything_and_says_so(home, engine):
    engine.fail("containers", error=read_timeout())  # the first listing times out
    result = distlab(home, engine, "clean")
    assert result.exit_code == 0, result.output
    assert "removed 7 containers, 1 networks, 1 volumes" in result.stdout
    assert engine.names() == set() and engine.volumes_ == {}


def test_clean_that_leaves_something_says_what_and_why_and_exits_1(home, engine):
    engine.fail("kill", "distlab-chord-2", times=None, error=read_timeout())
    engine.fail("remove_container", "distlab-chord-2", times=None,
                error=api_error(500, "cannot remove container: device or resource busy"))
    result = distlab(home, engine, "clean")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = result.stderr.splitlines()
    assert "not removed: container distlab-chord-2: the engine refused (500): cannot remove " \
           "container: device or resource busy (3 tries)" in errors
    assert any(line.startswith("not removed: network distlab_lab: ") for line in errors)
    assert errors[-2:] == [
        "distlab: error: 2 labelled thing(s) could not be removed",
        "hint: run `distlab clean` again once the engine is less busy; `docker ps -a --filter "
        "label=distlab.lab` lists what is left"]
    assert "removed 6 containers, 0 networks, 1 volumes" in result.stdout


def test_down_sweeps_what_compose_could_not_and_keeps_named_volumes(home, engine):
    result = distlab(home, engine, "down")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: docker compose down: ")
    assert "removing by label instead" in result.stderr
    assert "every lab is down" in result.stdout
    assert engine.names() == set()
    assert list(engine.volumes_) == ["distlab_prometheus-data"]


class Recording(Runner):
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], dict]] = []

    def run(self, argv, **options) -> Result:
        self.calls.append((tuple(argv), options))
        return Result(tuple(argv), 0, "")


def test_up_hands_compose_the_variables_on_top_of_the_host_s_environment(home, monkeypatch):
    monkeypatch.setenv("DISTLAB_SEEDER_UPLOAD_RATE", "1")
    runner = Recording()
    runtime = ComposeRuntime(home, runner=runner)
    runtime.up(["bittorrent"], {"leecher": 2}, environment={"DISTLAB_SEEDER_UPLOAD_RATE": "2"})
    runtime.up(["bittorrent"], {})
    (argv, options), (_, plain) = runner.calls
    assert argv[-2:] == ("--scale", "leecher=2")
    assert options["env"]["DISTLAB_SEEDER_UPLOAD_RATE"] == "2"
    assert options["env"]["PATH"] == os.environ["PATH"]
    assert plain["env"] is None  # compose inherits the host's environment as it is
