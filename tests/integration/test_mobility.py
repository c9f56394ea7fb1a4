"""Code mobility between three in-process hosts on loopback, with the lab credential: a
program shipped to a host runs there (weak mobility); a running task moved strong
host-1 -> host-2 -> host-3 mid-run ends with the result of a run never moved and without
redoing its steps; a weak move starts it over and gives the same result; bad requests are
refused with what was wrong; a destination that dies leaves the task running where it was."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from nodes.host.__main__ import SPEC as HOST_SPEC
from nodes.rpc import mobility_pb2, mobility_pb2_grpc
from tests.integration.vm_support import free_port_range

PROGRAMS = Path(__file__).resolve().parents[2] / "nodes" / "mobility" / "programs"
PRIMES = (PROGRAMS / "primes.asm").read_text()
N = {"n": "1500"}  # 239 primes, about 150 000 steps: 6 s at 25 000 steps a second
UNMOVED_OUTPUT = ["239"]


def start_host(lab, name: str, **settings):
    return lab.start(name, spec=HOST_SPEC, HOST_ADVERTISE="127.0.0.1",
                     HOST_VM_PORTS=free_port_range(), MOBILITY_STEPS_PER_SECOND=25_000,
                     **settings)


@pytest.fixture
def hosts(lab):
    return tuple(start_host(lab, f"host-{i}") for i in (1, 2, 3))


def mobility(lab, host) -> mobility_pb2_grpc.MobilityStub:
    return mobility_pb2_grpc.MobilityStub(lab.channel(host))


def task(lab, host, task_id: str) -> mobility_pb2.TaskInfo:
    return mobility(lab, host).Task(mobility_pb2.TaskRequest(id=task_id), timeout=10)


def ship(lab, host, program: str = PRIMES, args=None, name: str = "primes"):
    return mobility(lab, host).Ship(mobility_pb2.ShipRequest(
        program=program, args=N if args is None else args, name=name), timeout=10)


def move(lab, host, task_id: str, to, mode: str = "strong") -> mobility_pb2.TaskInfo:
    return mobility(lab, host).Move(mobility_pb2.MoveRequest(
        id=task_id, to=lab.address(to), mode=mode), timeout=30)


def finished(lab, host, task_id: str, timeout: float = 30) -> mobility_pb2.TaskInfo:
    return lab.wait_until(lambda: (lambda info: info if info.state in ("done", "failed")
                                   else None)(task(lab, host, task_id)),
                          timeout=timeout, what=f"task {task_id} finished on {host}")


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def test_a_shipped_program_runs_on_its_host_and_a_finished_one_cannot_move(lab, hosts):
    one, two, _ = hosts
    shipped = ship(lab, one, args={"n": "100"}, name="small")
    assert (shipped.host, shipped.state, shipped.mode) == ("host-1", "running", "shipped")
    done = finished(lab, one, shipped.id)
    assert (done.state, list(done.output), done.error) == ("done", ["25"], "")
    listed = mobility(lab, one).Tasks(mobility_pb2.TasksRequest(), timeout=10)
    assert [(t.id, t.name, t.state, t.output_length) for t in listed.tasks] == [
        (shipped.id, "small", "done", 1)]
    error = refused(lambda: move(lab, one, shipped.id, two))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is done" in error.details()


def test_a_task_moved_strong_twice_mid_run_ends_as_a_run_never_moved(lab, hosts):
    one, two, three = hosts
    unmoved = ship(lab, three, name="unmoved")
    moving = ship(lab, one)
    lab.wait_until(lambda: task(lab, one, moving.id).steps > 20_000, what="steps on host-1")
    at_two = move(lab, one, moving.id, two)
    assert (at_two.host, at_two.state, at_two.mode, at_two.arrived_from) == (
        "host-2", "running", "strong", "host-1")
    forwarding = task(lab, one, moving.id)
    assert (forwarding.state, forwarding.moved_to) == ("moved", "host-2")
    # The destination goes on from the steps done at the source, not from 0.
    assert at_two.steps == forwarding.steps > 20_000
    lab.wait_until(lambda: task(lab, two, moving.id).steps > at_two.steps + 20_000,
                   what="steps on host-2")
    at_three = move(lab, two, moving.id, three)
    assert at_three.steps == task(lab, two, moving.id).steps > at_two.steps
    assert task(lab, one, moving.id).steps == forwarding.steps  # host-1 never ran it again

    moved, reference = finished(lab, three, moving.id), finished(lab, three, unmoved.id)
    assert (moved.state, list(moved.output)) == ("done", UNMOVED_OUTPUT)
    assert (moved.output, moved.steps) == (reference.output, reference.steps)
    scrape = lab.scrape(one)
    assert scrape.get("distlab_mobility_moves_total", mode="strong", outcome="done") == 1
    assert scrape.get("distlab_mobility_tasks", state="moved") == 1
    # Every step was run once, somewhere: the three hosts' counts add up to the task's.
    ran = sum(lab.scrape(host).get("distlab_mobility_steps_total") for host in hosts)
    assert ran == moved.steps + reference.steps


def test_a_weak_move_starts_the_task_over_and_gives_the_same_result(lab, hosts):
    one, two, _ = hosts
    moving = ship(lab, one)
    lab.wait_until(lambda: task(lab, one, moving.id).steps > 10_000, what="steps on host-1")
    arrived = move(lab, one, moving.id, two, mode="weak")
    assert arrived.mode == "weak" and arrived.steps < 10_000  # from step 0 again
    assert task(lab, one, moving.id).state == "moved"
    reference = ship(lab, two, name="unmoved")
    done, unmoved = finished(lab, two, moving.id), finished(lab, two, reference.id)
    assert (done.state, list(done.output)) == ("done", UNMOVED_OUTPUT)
    assert done.steps == unmoved.steps


def test_bad_requests_are_refused_with_what_was_wrong(lab, hosts):
    one, two, _ = hosts
    running = ship(lab, one)
    cases = [
        (lambda: ship(lab, one, program="push 1\npsh 2\n"), grpc.StatusCode.INVALID_ARGUMENT,
         "line 2: unknown instruction 'psh'"),
        (lambda: ship(lab, one, args={"n": "many"}), grpc.StatusCode.INVALID_ARGUMENT,
         "argument n takes an integer"),
        (lambda: task(lab, one, "nosuch"), grpc.StatusCode.NOT_FOUND, "no task 'nosuch'"),
        (lambda: move(lab, one, "nosuch", two), grpc.StatusCode.NOT_FOUND, "no task"),
        (lambda: move(lab, one, running.id, one), grpc.StatusCode.INVALID_ARGUMENT,
         "a move goes to another host"),
        (lambda: mobility(lab, one).Move(mobility_pb2.MoveRequest(
            id=running.id, to="host-404.invalid:50051"), timeout=30),
         grpc.StatusCode.UNAVAILABLE, "it runs on here"),
        (lambda: move(lab, one, running.id, two, mode="teleport"),
         grpc.StatusCode.INVALID_ARGUMENT, "'teleport' is not one of strong, weak"),
        (lambda: mobility_pb2_grpc.MobilityStub(lab.bare_channel(one)).Ship(
            mobility_pb2.ShipRequest(program=PRIMES), timeout=10),
         grpc.StatusCode.UNAUTHENTICATED, ""),
        (lambda: mobility_pb2_grpc.MobilityStub(lab.bare_channel(one)).Tasks(
            mobility_pb2.TasksRequest(), timeout=10), grpc.StatusCode.UNAUTHENTICATED, ""),
    ]
    for call, code, words in cases:
        error = refused(call)
        assert error.code() == code and words in error.details(), (code, error.details())
    info = task(lab, one, running.id)
    assert info.state == "running"
    lab.wait_until(lambda: task(lab, one, running.id).steps > info.steps,
                   what="the refused task still running")
    listed = mobility(lab, two).Tasks(mobility_pb2.TasksRequest(), timeout=10)
    assert list(listed.tasks) == []


def test_too_many_tasks_are_refused(lab):
    host = start_host(lab, "host-1", MOBILITY_MAX_TASKS=2)
    ship(lab, host), ship(lab, host)
    error = refused(lambda: ship(lab, host))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "MOBILITY_MAX_TASKS=2" in error.details()


def test_a_destination_dead_mid_move_leaves_the_task_running_at_its_source(lab, hosts):
    one, two, _ = hosts
    moving = ship(lab, one)
    lab.wait_until(lambda: task(lab, one, moving.id).steps > 5_000, what="steps on host-1")
    lab.stop(two)
    error = refused(lambda: move(lab, one, moving.id, two))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "it runs on here, on host-1" in error.details()
    assert lab.scrape(one).get("distlab_mobility_moves_total", mode="strong",
                               outcome="failed") == 1
    done = finished(lab, one, moving.id)
    assert (done.state, list(done.output)) == ("done", UNMOVED_OUTPUT)
