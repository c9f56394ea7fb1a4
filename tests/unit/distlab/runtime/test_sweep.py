"""distlab/runtime/sweep.py on a fake engine (fake_api_client.py beside this file): the sweep
removes everything labelled, kills before it removes, finishes when the engine times out,
refuses or stalls, and says what it left and why."""

from __future__ import annotations

import pytest

from distlab.runtime.sweep import Sweep
from tests.unit.distlab.runtime.fake_api_client import (
    LABEL,
    FakeEngine,
    api_error,
    connection_error,
    read_timeout,
)


def chord_lab(peers: int = 8) -> FakeEngine:
    """`distlab up chord` as the engine holds it: peers, Prometheus, the lab network, a
    named volume, and each node's anonymous /data volume; plus one stranger's container."""
    engine = FakeEngine()
    engine.add_network()
    for index in range(1, peers + 1):
        engine.add_container(f"distlab-chord-{index}")
    engine.add_volume("distlab_prometheus-data", lab="common")
    engine.add_container("distlab-prometheus-1", lab="common", anonymous_volume=False,
                         volumes=("distlab_prometheus-data",))
    engine.add_container("someone-elses", labelled=False, network=None,
                         anonymous_volume=False)
    return engine


def sweep(engine: FakeEngine, **options) -> Sweep:
    def sleep(seconds: float) -> None:  # a backoff moves the fake clock, not the test
        engine.clock.now += seconds

    return Sweep(engine, LABEL, clock=engine.clock, sleep=sleep, **options)


def test_everything_labelled_goes_and_nothing_else():
    engine = chord_lab()
    report = sweep(engine).run(volumes=True)
    assert report.complete and report.leftovers == []
    assert (report.containers, report.networks, report.volumes) == (9, 1, 1)
    assert engine.names() == {"someone-elses"}
    assert engine.networks_ == {}
    # The anonymous /data volumes went with their containers, although none has a label.
    assert list(engine.volumes_) == []


def test_every_running_container_is_killed_before_any_is_removed():
    engine = chord_lab(4)
    engine.add_container("distlab-chord-9", state="exited")
    engine.add_container("distlab-chord-10", state="paused")
    sweep(engine).run(volumes=True)
    methods = [method for method, _ in engine.calls if method in ("kill", "remove_container")]
    kills = methods.count("kill")
    assert kills == 5  # four peers and Prometheus; not the exited nor the paused one
    assert methods == ["kill"] * kills + ["remove_container"] * 7


def test_a_container_that_stopped_since_the_listing_is_removed_without_a_note():
    engine = chord_lab(3)
    # A peer that exits on its own between the listing and the kill (a drowning ring of 128
    # does this by the dozen): the engine answers the kill 409 "is not running".
    engine.fail("kill", "distlab-chord-2",
                error=api_error(409, "Container distlab-chord-2 is not running"))
    engine.fail("kill", "distlab-chord-3", error=api_error(403, "permission denied"))
    report = sweep(engine).run(volumes=True)
    assert report.complete and report.containers == 4
    assert [note.split(":")[0] for note in report.notes] == ["kill distlab-chord-3"]


def test_down_keeps_named_volumes_but_not_the_anonymous_ones():
    engine = chord_lab(2)
    report = sweep(engine).run(volumes=False)
    assert report.complete and report.volumes == 0
    assert list(engine.volumes_) == ["distlab_prometheus-data"]


def test_calls_that_time_out_the_first_time_are_tried_again():
    engine = chord_lab()
    for method in ("containers", "kill", "remove_container", "networks", "volumes",
                   "remove_volume"):
        engine.fail(method, error=read_timeout())
    engine.fail("remove_container", "distlab-chord-3", error=connection_error())
    report = sweep(engine).run(volumes=True)
    assert report.complete, report.leftovers
    assert engine.names() == {"someone-elses"}
    assert engine.calls_of("containers") == ["", ""]


def test_a_listing_that_always_times_out_is_reported_and_the_rest_still_runs():
    engine = chord_lab(3)
    engine.fail("containers", error=read_timeout(), times=None)
    report = sweep(engine).run(volumes=True)
    assert [str(item) for item in report.leftovers[:1]] == [
        "container (every labelled one): could not list them: the engine did not answer "
        "within 60 s (3 tries)"]
    assert engine.calls_of("containers") == ["", "", ""]
    # The network still has the peers on it, so the engine refuses it, with its reason.
    assert any("network distlab_lab: the engine refused (403)" in str(item) and
               "active endpoints" in str(item) for item in report.leftovers)
    assert not report.complete


def test_containers_that_refuse_to_die_are_left_with_the_reason():
    engine = chord_lab(6)
    for method in ("kill", "remove_container"):
        engine.fail(method, "distlab-chord-2", times=None,
                    error=api_error(500, "cannot kill container: permission denied"))
    report = sweep(engine).run(volumes=True)
    assert engine.names() == {"distlab-chord-2", "someone-elses"}
    leftovers = [str(item) for item in report.leftovers]
    assert leftovers[0] == ("container distlab-chord-2: the engine refused (500): cannot "
                            "kill container: permission denied (3 tries)")
    assert leftovers[1].startswith("network distlab_lab: ")
    assert report.containers == 6  # the other five peers and Prometheus


def test_a_definite_refusal_is_not_tried_again():
    engine = chord_lab(1)
    engine.fail("remove_volume", "distlab_prometheus-data", times=None,
                error=api_error(403, "operation not permitted"))
    report = sweep(engine).run(volumes=True)
    assert engine.calls_of("remove_volume").count("distlab_prometheus-data") == 1
    assert [str(item) for item in report.leftovers] == [
        "volume distlab_prometheus-data: the engine refused (403): operation not permitted"]


def test_what_someone_else_removed_first_counts_as_removed():
    engine = chord_lab(2)
    first = next(iter(engine.containers_))
    # Another `distlab clean` (or compose down) is removing distlab-chord-1 too.
    engine.fail("remove_container", "distlab-chord-1", then=lambda: engine.containers_.pop(first),
                error=api_error(409, "removal of container distlab-chord-1 is already in "
                                     "progress"))
    report = sweep(engine).run(volumes=True)
    assert report.complete and report.containers == 3
    assert len(engine.calls_of("remove_container")) == 4  # one container asked twice


def test_the_budget_ends_the_sweep_and_says_what_it_did_not_reach():
    engine = chord_lab(4)
    # Every kill stalls for 100 s of the engine's time; the budget is 150 s.
    engine.fail("kill", error=read_timeout(), times=None, seconds=100.0)
    report = sweep(engine, budget=150.0, workers=1).run(volumes=True)
    assert not report.complete
    assert all("budget ran out" in item.reason for item in report.leftovers), report.leftovers
    assert {item.kind for item in report.leftovers} == {"container", "network", "volume"}
    # Nothing was started after the budget ran out: two tries of one kill, nothing else.
    assert engine.calls_of("kill") == ["distlab-chord-1", "distlab-chord-1"]
    assert [method for method, _ in engine.calls] == ["containers", "kill", "kill"]


@pytest.mark.parametrize("error", [read_timeout(), connection_error(),
                                   api_error(500, "Internal Server Error"),
                                   RuntimeError("something docker-py did not wrap")])
def test_no_error_of_the_client_escapes_as_an_exception(error):
    engine = chord_lab(2)
    for method in ("containers", "networks", "volumes"):
        engine.fail(method, error=error, times=None)
    report = sweep(engine).run(volumes=True)
    assert [item.kind for item in report.leftovers] == ["container", "network", "volume"]
