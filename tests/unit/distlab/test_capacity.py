"""distlab/capacity.py: the estimate `distlab up` makes before starting, and `up` acting on
it (a warning with the figures, a refusal with the --force hint) on a FakeRuntime."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from distlab import capacity, cli, testbed
from distlab.capacity import GIB, Engine, Resources, Verdict, estimate, load_resources
from distlab.labs import counts_at, load_catalogue
from distlab.registry import load_registry
from tests.unit.distlab.conftest import FakeRuntime, machine_info

ROOT = Path(__file__).resolve().parents[3]
LAPTOP = Engine(cpus=2, memory=24 * GIB)  # this project's CI machines (DESIGN.md)


def chord_at(peers: int, engine: Engine = LAPTOP) -> capacity.Estimate:
    catalogue = load_catalogue(ROOT / "compose.yaml")
    lab = catalogue.lab("chord")
    counts = {**counts_at(lab, {"chord": peers}), "prometheus": 1}
    return estimate(counts, lab.roles, load_resources(ROOT / "compose.yaml"), engine)


def test_compose_limits_and_peer_watching_are_read_from_compose_yaml():
    chord = load_resources(ROOT / "compose.yaml")["chord"]
    assert (chord.cpu_limit, chord.memory_limit) == (0.25, 128 << 20)
    assert chord.watches_itself and chord.peer_interval == 5.0
    assert not load_resources(ROOT / "compose.yaml")["prometheus"].watches_itself


@pytest.mark.parametrize("text, size", [("128M", 128 << 20), ("1.5g", 3 << 29),
                                        ("512mb", 512 << 20), (1024, 1024), ("64k", 64 << 10)])
def test_compose_sizes_parse(text, size):
    assert capacity.parse_bytes(text) == size


def test_sixteen_peers_fit_a_two_core_laptop():
    result = chord_at(16)
    assert result.verdict is Verdict.OK and result.reasons == []
    assert result.machines == 17


def test_forty_eight_peers_are_a_warning_with_the_figures():
    # Issue 15: 48 came up in 95 s with one peer unhealthy; 32 were slow to form a ring.
    assert chord_at(32).verdict is Verdict.WARN
    result = chord_at(48)
    assert result.verdict is Verdict.WARN
    assert "of the CPUs busy" in result.reasons[0]
    assert result.summary().startswith("49 machines need ~")
    assert "of 2 CPUs" in result.summary() and "of 24.0 GiB memory" in result.summary()


def test_sixty_four_peers_on_two_cores_are_refused():
    # Issue 15: 60 of 64 peers still unhealthy after 180 s, and the engine went down.
    result = chord_at(64)
    assert result.verdict is Verdict.REFUSE
    assert "health checks would time out" in result.reasons[0]
    assert chord_at(64, Engine(cpus=8, memory=24 * GIB)).verdict is Verdict.OK


def test_memory_is_weighed_too():
    assert chord_at(8, Engine(cpus=16, memory=int(0.9 * GIB))).verdict is Verdict.REFUSE
    tight = chord_at(8, Engine(cpus=16, memory=int(1.6 * GIB)))
    assert tight.verdict is Verdict.WARN
    assert any("of the engine's memory" in reason for reason in tight.reasons)


def test_reservations_are_a_floor_and_unknown_roles_cost_a_default_machine():
    big = Resources(cpu_reservation=1.0, memory_reservation=2 * GIB)
    result = estimate({"solver": 2}, {}, {"solver": big}, Engine(cpus=8, memory=32 * GIB))
    assert (result.cpu, result.memory) == (2.0, 4 * GIB)
    plain = estimate({"solver": 2}, {}, {}, Engine(cpus=8, memory=32 * GIB))
    assert plain.cpu == 2 * capacity.DEFAULT_IDLE.cpu


class EngineOf(FakeRuntime):
    """A FakeRuntime on an engine of a given size, whose `up` starts healthy machines."""

    def __init__(self, cpus: int, memory: int) -> None:
        super().__init__()
        self.size = (cpus, memory)

    def resources(self) -> tuple[int, int]:
        return self.size

    def up(self, profiles, scale, *, on_line=None) -> None:
        super().up(profiles, scale, on_line=on_line)
        for service, count in scale.items():
            for index in range(1, count + 1):
                info = machine_info(f"{service}-{index}", lab=profiles[0])
                self.infos[info.container] = info
        prometheus = machine_info("prometheus-1", lab="common", role="prometheus")
        self.infos[prometheus.container] = prometheus


def distlab_up(tmp_path: Path, runtime: EngineOf, *args: str):
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    main = cli.build_cli(load_registry())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "Testbed", lambda: testbed.Testbed(runtime, root=tmp_path))
        return CliRunner().invoke(main, ["up", *args])


def test_up_refuses_a_lab_that_would_not_come_up_and_names_force(tmp_path):
    runtime = EngineOf(2, 24 * GIB)
    result = distlab_up(tmp_path, runtime, "chord", "--scale", "chord=64")
    assert result.exit_code == 1
    error, hint = result.stderr.splitlines()
    assert error.startswith("distlab: error: lab chord at this scale would not come up on "
                            "this engine: their idle work alone needs ")
    assert "65 machines need ~" in error
    assert hint == "hint: ask for a smaller --scale, or add --force to start it anyway"
    assert runtime.ups == []  # nothing was started


def test_up_warns_with_the_figures_and_starts(tmp_path):
    runtime = EngineOf(2, 24 * GIB)
    result = distlab_up(tmp_path, runtime, "chord", "--scale", "chord=48", "--timeout", "5")
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert warnings[0].startswith("warning: idle, they keep ")
    assert warnings[1].startswith("warning: 49 machines need ~")
    assert runtime.ups == [(("chord",), {"chord": 48})]


def test_up_with_force_starts_what_it_would_refuse(tmp_path):
    runtime = EngineOf(2, 24 * GIB)
    result = distlab_up(tmp_path, runtime, "chord", "--scale", "chord=64", "--force",
                        "--timeout", "5")
    assert result.exit_code == 0, result.output
    assert "health checks would time out" in result.stderr
    assert runtime.ups == [(("chord",), {"chord": 64})]
