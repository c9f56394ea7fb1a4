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
# This project's CI machines (DESIGN.md), with the ARP table scripts/setup-host.sh gives.
LAPTOP = Engine(cpus=2, memory=24 * GIB, neighbours=32768)


def chord_at(peers: int, engine: Engine = LAPTOP) -> capacity.Estimate:
    catalogue = load_catalogue(ROOT / "compose.yaml")
    lab = catalogue.lab("chord")
    counts = {**counts_at(lab, {"chord": peers}), "prometheus": 1}
    return estimate(counts, lab.roles, load_resources(ROOT / "compose.yaml"), engine)


def test_compose_limits_and_peer_watching_are_read_from_compose_yaml():
    resources = load_resources(ROOT / "compose.yaml")
    chord = resources["chord"]
    assert (chord.cpu_limit, chord.memory_limit) == (0.25, 128 << 20)
    assert not chord.watches_itself  # chord peers learn liveness from their own calls
    assert resources["kv"].watches_itself and resources["kv"].peer_interval == 1.0
    assert not resources["prometheus"].watches_itself


def test_peers_that_watch_each_other_cost_more_the_more_there_are():
    watching = Resources(watches_itself=True, peer_interval=1.0)
    engine = Engine(cpus=64, memory=256 * GIB)
    few = estimate({"kv": 4}, {}, {"kv": watching}, engine)
    many = estimate({"kv": 40}, {}, {"kv": watching}, engine)
    assert many.cpu / 40 > 2 * few.cpu / 4


@pytest.mark.parametrize("text, size", [("128M", 128 << 20), ("1.5g", 3 << 29),
                                        ("512mb", 512 << 20), (1024, 1024), ("64k", 64 << 10)])
def test_compose_sizes_parse(text, size):
    assert capacity.parse_bytes(text) == size


def test_sixteen_peers_fit_a_two_core_laptop():
    result = chord_at(16)
    assert result.verdict is Verdict.OK and result.reasons == []
    assert result.machines == 17


def test_sixty_four_peers_are_a_warning_with_the_figures():
    # Measured: 64 peers keep ~1.15 of 2 cores busy and form one ring (docs/chord.md).
    assert chord_at(32).verdict is Verdict.OK
    result = chord_at(64)
    assert result.verdict is Verdict.WARN
    assert "of the CPUs busy" in result.reasons[0]
    assert result.summary().startswith("65 machines need ~")
    assert "of 2 CPUs" in result.summary() and "of 24.0 GiB memory" in result.summary()


def test_a_hundred_and_twenty_eight_peers_on_two_cores_are_refused():
    result = chord_at(128)
    assert result.verdict is Verdict.REFUSE
    assert "health checks would time out" in result.reasons[0]
    assert chord_at(128, Engine(cpus=8, memory=24 * GIB, neighbours=32768)).verdict \
        is Verdict.OK


def test_a_kernel_arp_table_too_small_for_the_lab_is_a_refusal_that_says_how_to_fix_it():
    # Issue 15: at 64 peers with Debian's default of 1024 entries the kernel logged
    # "neighbor table overflow" and no connection to or between the peers opened.
    default = Engine(cpus=2, memory=24 * GIB, neighbours=1024)
    assert chord_at(16, default).verdict is Verdict.OK
    result = chord_at(64, default)
    assert result.verdict is Verdict.REFUSE
    assert any("gc_thresh3" in reason and "setup-host.sh" in reason
               for reason in result.reasons)
    assert chord_at(64, Engine(cpus=2, memory=24 * GIB)).verdict is Verdict.WARN  # unknown


def test_memory_is_weighed_too():
    assert chord_at(8, Engine(cpus=16, memory=int(0.6 * GIB))).verdict is Verdict.REFUSE
    tight = chord_at(8, Engine(cpus=16, memory=int(1.2 * GIB)))
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
        self.size = (cpus, memory, 32768)

    def resources(self) -> tuple[int, int, int]:
        return self.size

    def up(self, profiles, scale, *, on_line=None, environment=None) -> None:
        super().up(profiles, scale, on_line=on_line, environment=environment)
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
    result = distlab_up(tmp_path, runtime, "chord", "--scale", "chord=128")
    assert result.exit_code == 1
    error, hint = result.stderr.splitlines()
    assert error.startswith("distlab: error: lab chord at this scale would not come up on "
                            "this engine: their idle work alone needs ")
    assert "129 machines need ~" in error
    assert hint == "hint: ask for a smaller --scale, or add --force to start it anyway"
    assert runtime.ups == []  # nothing was started


def test_up_warns_with_the_figures_and_starts(tmp_path):
    runtime = EngineOf(2, 24 * GIB)
    result = distlab_up(tmp_path, runtime, "chord", "--scale", "chord=64", "--timeout", "5")
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert warnings[0].startswith("warning: idle, they keep ")
    assert warnings[1].startswith("warning: 65 machines need ~")
    assert runtime.ups == [(("chord",), {"chord": 64})]


def test_up_with_force_starts_what_it_would_refuse(tmp_path):
    runtime = EngineOf(2, 24 * GIB)
    result = distlab_up(tmp_path, runtime, "chord", "--scale", "chord=128", "--force",
                        "--timeout", "5")
    assert result.exit_code == 0, result.output
    assert "health checks would time out" in result.stderr
    assert runtime.ups == [(("chord",), {"chord": 128})]
