"""ScenarioContext over a FakeRuntime: fault windows open and close with the faults themselves."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from distlab import testbed as labs  # not `Testbed`: pytest would try to collect it
from distlab.scenarios.context import ScenarioContext, ref_of
from distlab.scenarios.model import Fault, MachineRef

REPO = Path(__file__).resolve().parents[4]
TIERS = ["switch-1", "app-1", "app-2", "app-3", "data-1", "data-2", "data-3", "data-master-1"]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def fault_started(self, fault_id, kind, machines) -> None:
        self.events.append(("started", fault_id, kind, tuple(machines)))

    def fault_ended(self, fault_id) -> None:
        self.events.append(("ended", fault_id))


@pytest.fixture
def tiers(tmp_path, make_runtime, make_info):
    shutil.copy(REPO / "compose.yaml", tmp_path / "compose.yaml")
    runtime = make_runtime([make_info(name, lab="tiers",
                                      role=name.rsplit("-", 1)[0]) for name in TIERS])
    return labs.Testbed(runtime, root=tmp_path), runtime


def context(testbed, seed: int = 1) -> tuple[ScenarioContext, Recorder]:
    recorder = Recorder()
    return ScenarioContext(testbed, lab="tiers", seed=seed, observer=recorder), recorder


def test_a_fault_opens_a_window_and_healing_it_closes_window_and_fault(tiers):
    testbed, runtime = tiers
    ctx, recorder = context(testbed)
    window = ctx.fault("kill", "app-2")
    assert runtime.state("distlab-app-2") == "exited"
    assert (window.kind, window.machines, window.end) == ("kill", ("app-2",), None)
    assert ctx.active_windows() == [window]
    ctx.heal(window)
    assert runtime.state("distlab-app-2") == "running"
    (closed,) = ctx.windows
    assert closed.end is not None and closed.end >= closed.start
    assert ctx.active_windows() == []
    assert recorder.events == [("started", window.id, "kill", ("app-2",)),
                               ("ended", window.id)]


def test_heal_all_undoes_every_fault_and_closes_every_window(tiers):
    testbed, runtime = tiers
    ctx, _ = context(testbed)
    ctx.fault("pause", "app-1")
    ctx.fault("stop", "data-3")
    assert ctx.heal_all() == []
    assert runtime.state("distlab-app-1") == runtime.state("distlab-data-3") == "running"
    assert all(w.end is not None for w in ctx.windows)
    assert testbed.nemesis.active() == []


def test_a_restart_is_an_instant_window(tiers):
    testbed, _ = tiers
    ctx, recorder = context(testbed)
    window = ctx.fault("restart", "data-1")
    assert window.end == window.start
    assert recorder.events[-1] == ("ended", window.id)


def test_a_partition_window_names_the_machine_it_cuts_off(tiers):
    testbed, _ = tiers
    ctx, _ = context(testbed)
    window = ctx.fault("partition", "data-2", shape="isolate")
    assert window.machines == ("data-2",)
    assert testbed.nemesis.active()[0].kind == "partition"


def test_role_picks_are_the_same_for_the_same_seed_and_only_running_machines(tiers):
    testbed, runtime = tiers
    picks = [context(testbed, seed=4)[0].resolve(ref_of("role:app"))[0] for _ in range(3)]
    assert len(set(picks)) == 1
    runtime.signal("distlab-app-1", "SIGKILL")
    runtime.signal("distlab-app-2", "SIGKILL")
    assert context(testbed, seed=4)[0].resolve(ref_of("role:app")) == ["app-3"]


def test_all_names_every_machine_of_the_role(tiers):
    testbed, _ = tiers
    ctx, _ = context(testbed)
    assert ctx.resolve(ref_of("all:data")) == ["data-1", "data-2", "data-3"]


def test_a_fault_on_an_unknown_machine_is_refused_and_opens_no_window(tiers):
    testbed, _ = tiers
    ctx, recorder = context(testbed)
    with pytest.raises(Exception, match="unknown machine 'app-9'"):
        ctx.inject(Fault(at=0.0, for_=None, kind="kill", target=MachineRef("app-9", "name",
                                                                             "app-9")))
    assert ctx.windows == [] and recorder.events == []


def test_machine_references_parse_as_the_yaml_writes_them():
    assert ref_of("app-2") == MachineRef("app-2", "name", "app-2")
    assert ref_of("role:app") == MachineRef("role:app", "role", "app")
    assert ref_of("chain:head") == MachineRef("chain:head", "chain", "head")
    assert ref_of("all:data") == MachineRef("all:data", "all", "data")


def test_a_background_migration_runs_beside_the_timeline_and_is_waited_for(tiers):
    import threading

    from distlab.errors import DistlabError
    from distlab.registry import LabPlugin, MigrationKind, MigrationRun, Registry
    from distlab.scenarios.model import Migration

    testbed, _ = tiers
    release = threading.Event()

    def slow(ctx, migration):
        start = ctx.now()
        release.wait(10)
        ctx.record_migration(MigrationRun("slow", start, ctx.now()))
        return "slow done"

    def broken(ctx, migration):
        raise DistlabError("no such vm")

    testbed.registry = Registry.builtin().add(LabPlugin("toy", migrations=(
        MigrationKind("slow", (), None, slow, background=True),
        MigrationKind("broken", (), None, broken, background=True))))
    ctx, _ = context(testbed)
    ctx.migrate(Migration(0.0, "slow"))
    (window,) = ctx.windows
    assert window.kind == "migration" and window.end is None  # the timeline goes on
    release.set()
    ctx.wait_migrations(10)
    (window,) = ctx.windows
    assert window.end is not None and [run.label for run in ctx.migration_runs] == ["slow"]

    ctx.migrate(Migration(1.0, "broken"))
    with pytest.raises(DistlabError, match="broken at 1 s: no such vm"):
        ctx.wait_migrations(10)
