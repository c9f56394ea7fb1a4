"""The switch in front of app servers past their capacity, and callers that send garbage.

The issue's reproduction: 24 calls of Work(io=4 s) through the switch
against 2 threaded app servers of 4 workers each (MAX_CONCURRENT_RPCS 4).
Each app keeps one of its 4 places from any single method
(MAX_CONCURRENT_RPCS_RESERVED, an eighth of the limit and at least 1), so it
takes 3 Work calls, refuses the rest RESOURCE_EXHAUSTED at once, keeps
answering health checks (the switch never marks both down and keeps
routing) and still has room for a call of another method. Only Work and Echo
are called, so no data tier is needed.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from nodes.app.__main__ import SPEC as APP_SPEC
from nodes.rpc import bank_pb2, bank_pb2_grpc, control_pb2
from nodes.switch.__main__ import SPEC as SWITCH_SPEC

NOWHERE = "127.0.0.1:1"
WORK = "/distlab.bank.Bank/Work"


def start_apps(lab, count: int, **env):
    return [lab.start(f"app-{n}", spec=APP_SPEC, DATA_MASTER=NOWHERE, APP_WORKERS=4, **env)
            for n in range(1, count + 1)]


def start_switch(lab, *backends, **env):
    settings = {"SWITCH_BACKENDS": ",".join(lab.address(b) for b in backends),
                "SWITCH_HEALTH_INTERVAL_SECONDS": 0.2, "SWITCH_HEALTH_TIMEOUT_SECONDS": 0.5,
                "SWITCH_HEALTH_FALL": 3}
    settings.update(env)
    return lab.start("switch", spec=SWITCH_SPEC, **settings)


def switch_state(lab, switch) -> dict[str, str]:
    return dict(lab.control(switch).Status(control_pb2.StatusRequest(), timeout=5).state)


def outcome(future) -> str:
    try:
        future.result()
        return "OK"
    except grpc.RpcError as error:
        return error.code().name


def test_overload_is_refused_early_while_health_keeps_answering(lab):
    apps = start_apps(lab, 2)
    switch = start_switch(lab, *apps)
    lab.wait_until(lambda: switch_state(lab, switch)["backends"] == "2/2", what="both healthy")
    work = bank_pb2_grpc.BankStub(lab.channel(switch)).Work
    sent = time.monotonic()
    calls = [work.future(bank_pb2.WorkRequest(io_millis=4000), timeout=20) for _ in range(24)]

    # Once the refusals are back, the admitted Work holds its places for seconds yet: a call
    # of another method still gets in (it is answered by the app, which has no data tier
    # here, rather than refused for overload).
    lab.wait_until(lambda: sum(call.done() for call in calls) >= 18, what="the refusals")
    for app in apps:
        balance = bank_pb2_grpc.BankStub(lab.channel(app)).Balance
        try:
            balance(bank_pb2.BalanceRequest(account="a"), timeout=5)
            answered = "OK"
        except grpc.RpcError as error:
            answered = error.code().name
        assert answered != "RESOURCE_EXHAUSTED", app.name
        assert not all(call.done() for call in calls)  # it was during the overload

    # While the work runs, every app answers its health checks and the switch keeps both.
    seen_healthy, health_answered = set(), []
    while not all(call.done() for call in calls):
        seen_healthy.add(switch_state(lab, switch)["backends"])
        for app in apps:
            reply = lab.health(app).Check(health_pb2.HealthCheckRequest(), timeout=1)
            health_answered.append(reply.status == health_pb2.HealthCheckResponse.SERVING)
        time.sleep(0.1)
    outcomes = [outcome(call) for call in calls]
    assert sorted(set(outcomes)) == ["OK", "RESOURCE_EXHAUSTED"], outcomes
    assert outcomes.count("OK") == 6  # 2 apps x (4 places - 1 kept from one method)
    assert all(health_answered) and seen_healthy == {"2/2"}
    refused = next(call for call in calls if outcome(call) == "RESOURCE_EXHAUSTED")
    assert "MAX_CONCURRENT_RPCS" in refused.exception().details()
    print(f"\n24 x Work(io=4 s): {outcomes.count('OK')} OK, {outcomes.count('RESOURCE_EXHAUSTED')} "
          f"refused; took {time.monotonic() - sent:.1f} s; switch saw {sorted(seen_healthy)}")

    for app in apps:
        metrics = lab.scrape(app)
        assert metrics.get("distlab_rpc_server_handled_total", method=WORK,
                           code="RESOURCE_EXHAUSTED") >= 1
        assert metrics.get("distlab_rpc_server_overloaded_total", method=WORK) >= 1
        assert metrics.value("distlab_rpc_server_concurrency_limit") == 4


def test_a_cheap_call_is_served_once_the_overload_is_over(lab):
    apps = start_apps(lab, 2)
    switch = start_switch(lab, *apps)
    lab.wait_until(lambda: switch_state(lab, switch)["backends"] == "2/2", what="both healthy")
    work = bank_pb2_grpc.BankStub(lab.channel(switch)).Work
    calls = [work.future(bank_pb2.WorkRequest(io_millis=1500), timeout=20) for _ in range(24)]
    for call in calls:
        outcome(call)
    # Nothing was marked down, so the next call is served at once.
    assert work(bank_pb2.WorkRequest(), timeout=5).served_by in ("app-1", "app-2")


def test_garbage_bodies_are_the_callers_fault_and_eject_no_backend(lab):
    apps = start_apps(lab, 2)
    switch = start_switch(lab, *apps)
    lab.wait_until(lambda: switch_state(lab, switch)["backends"] == "2/2", what="both healthy")
    raw_work = lab.channel(switch).unary_unary(WORK)
    codes = []
    for _ in range(12):
        try:
            raw_work(b"\xff\xff\xff\xff garbage", timeout=5)
            codes.append("OK")
        except grpc.RpcError as error:
            codes.append(error.code().name)
            details = error.details()
    assert codes == ["INVALID_ARGUMENT"] * 12
    assert "distlab.bank.WorkRequest" in details and "Traceback" not in details
    state = switch_state(lab, switch)
    assert [state[f"backend.{lab.address(app)}"] for app in apps] == ["healthy", "healthy"]
    assert lab.scrape(switch).get("distlab_switch_ejections_total",
                                  backend=lab.address(apps[0])) == 0


def test_a_refused_call_does_not_hold_a_slot(lab):
    (app,) = start_apps(lab, 1, MAX_CONCURRENT_RPCS=1)
    work = bank_pb2_grpc.BankStub(lab.channel(app)).Work
    running = work.future(bank_pb2.WorkRequest(io_millis=1000), timeout=10)
    lab.wait_until(lambda: lab.scrape(app).get("distlab_rpc_server_in_flight") == 1,
                   what="one Work in progress")
    refusals = []
    threads = [threading.Thread(target=lambda: refusals.append(outcome(
        work.future(bank_pb2.WorkRequest(), timeout=5)))) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refusals == ["RESOURCE_EXHAUSTED"] * 5
    assert running.result().served_by == "app-1"
    assert work(bank_pb2.WorkRequest(), timeout=5).served_by == "app-1"


def test_a_call_a_full_backend_refused_unstarted_is_sent_to_another(lab):
    """Work is not idempotent, yet a call refused by a full app's admission never ran: the
    switch sends it to the other app instead of handing the caller the refusal."""
    full, spare = start_apps(lab, 2)
    switch = start_switch(lab, full, spare, SWITCH_POLICY="round_robin")
    lab.wait_until(lambda: switch_state(lab, switch)["backends"] == "2/2", what="both healthy")
    direct = bank_pb2_grpc.BankStub(lab.channel(full)).Work
    # All one method may hold of the app's 4 places, for long enough that the six calls
    # below all meet it full even on a loaded machine.
    filling = [direct.future(bank_pb2.WorkRequest(io_millis=8000), timeout=30)
               for _ in range(3)]
    lab.wait_until(lambda: lab.scrape(full).get("distlab_rpc_server_in_flight") >= 3,
                   what="the full app working on 3 calls")
    work = bank_pb2_grpc.BankStub(lab.channel(switch)).Work
    served_by = [work(bank_pb2.WorkRequest(), timeout=5).served_by for _ in range(6)]
    assert served_by == ["app-2"] * 6
    assert lab.scrape(full).get("distlab_rpc_server_overloaded_total", method=WORK) >= 3
    assert all(call.result().served_by == "app-1" for call in filling)


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_both_server_kinds_mark_an_admission_refusal_as_never_started(lab, architecture):
    """What lets the switch send a refused call elsewhere: the x-distlab-refused trailer,
    from the thread-pool and the asyncio server alike."""
    (app,) = start_apps(lab, 1, APP_ARCHITECTURE=architecture, MAX_CONCURRENT_RPCS=2)
    work = bank_pb2_grpc.BankStub(lab.channel(app)).Work
    running = work.future(bank_pb2.WorkRequest(io_millis=6000), timeout=30)
    lab.wait_until(lambda: lab.scrape(app).get("distlab_rpc_server_in_flight") >= 1,
                   what="the first Work at the app")
    assert _refused(work)
    assert running.result().served_by == "app-1"


def _refused(work) -> bool:
    """Whether one more Work is refused for overload (2 places, 1 kept from one method),
    carrying the marker."""
    try:
        work(bank_pb2.WorkRequest(), timeout=5)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert ("x-distlab-refused", "overload") in [
            tuple(item) for item in error.trailing_metadata()]
        return True
    return False
