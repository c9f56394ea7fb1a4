"""nodes/switch/backends.py: set diffing, health rise/fall, tiers, ejection and its cap."""

import grpc
import pytest

from nodes.switch.backends import (
    EJECTED,
    HEALTHY,
    MAX_EJECTION_SECONDS,
    UNHEALTHY,
    UNKNOWN,
    BackendPool,
)

Code = grpc.StatusCode


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def make_pool(clock=None, *, count: int = 0, **overrides) -> BackendPool:
    settings = dict(rise=2, fall=3, eject_after=3, eject_seconds=5.0, max_ejected_percent=50,
                    panic_threshold_percent=0)
    settings.update(overrides)
    pool = BackendPool(clock=clock or Clock(), **settings)
    found = {f"app-{n}": f"10.0.0.{n}:50051" for n in range(1, count + 1)}
    sync(pool, found)
    return pool


def sync(pool: BackendPool, found: dict[str, str]):
    change = pool.diff(found)
    pool.apply([pool.new_backend(name, target) for name, target in change.added.items()],
               change.removed)
    return change


def by_name(pool: BackendPool) -> dict:
    return {backend.name: backend for backend in pool.backends()}


def names(backends) -> list[str]:
    return [backend.name for backend in backends]


def check(pool: BackendPool, results: str, *which: str) -> list[str]:
    """One health round per character ("+" pass, "-" fail) for the named backends."""
    changed = []
    for char in results:
        backends = [b for b in pool.backends() if not which or b.name in which]
        changed += names(pool.observe_checks([(b, char == "+") for b in backends]))
    return changed


def fail(pool: BackendPool, name: str, times: int, code=Code.UNAVAILABLE) -> list[bool]:
    backend = by_name(pool)[name]
    outcomes = []
    for _ in range(times):
        pool.begin(backend)
        outcomes.append(pool.finish(backend, code))
    return outcomes


# -- the set -------------------------------------------------------------------------------------

def test_diff_adds_new_names_removes_gone_ones_and_replaces_moved_ones():
    pool = make_pool(count=3)
    old = by_name(pool)
    change = sync(pool, {"app-1": "10.0.0.1:50051", "app-3": "10.0.0.33:50051",
                         "app-4": "10.0.0.4:50051"})
    assert change.added == {"app-3": "10.0.0.33:50051", "app-4": "10.0.0.4:50051"}
    assert names(change.removed) == ["app-2", "app-3"]
    now = by_name(pool)
    assert list(now) == ["app-1", "app-3", "app-4"]
    assert now["app-1"] is old["app-1"]  # untouched: keeps its health and counters
    assert now["app-3"] is not old["app-3"] and now["app-3"].target == "10.0.0.33:50051"
    assert not pool.diff({"app-1": "10.0.0.1:50051", "app-3": "10.0.0.33:50051",
                          "app-4": "10.0.0.4:50051"})


# -- health and tiers ----------------------------------------------------------------------------

def test_new_backends_are_unknown_and_take_calls_while_none_is_healthy():
    pool = make_pool(count=3)
    assert {b.state for b in pool.backends()} == {UNKNOWN}
    assert names(pool.candidates()) == ["app-1", "app-2", "app-3"]


def test_once_any_backend_is_healthy_unknown_ones_wait_for_their_checks():
    pool = make_pool(count=2)
    assert check(pool, "++") == ["app-1", "app-2"]
    sync(pool, {"app-1": "10.0.0.1:50051", "app-2": "10.0.0.2:50051", "app-3": "10.0.0.3:50051"})
    assert names(pool.candidates()) == ["app-1", "app-2"]
    check(pool, "+", "app-3")
    assert names(pool.candidates()) == ["app-1", "app-2"]  # rise is 2
    assert check(pool, "+", "app-3") == ["app-3"]
    assert names(pool.candidates()) == ["app-1", "app-2", "app-3"]


def test_rise_and_fall():
    pool = make_pool(count=1)
    app = by_name(pool)["app-1"]
    assert check(pool, "+") == [] and app.health == UNKNOWN
    assert check(pool, "+") == ["app-1"] and app.health == HEALTHY
    assert check(pool, "--") == [] and app.health == HEALTHY
    assert check(pool, "-") == ["app-1"] and app.health == UNHEALTHY
    assert pool.candidates() == ()
    assert check(pool, "+-+") == [] and app.health == UNHEALTHY  # flapping never rises
    assert check(pool, "++") == ["app-1"] and app.health == HEALTHY


def test_an_unknown_backend_that_fails_fall_checks_is_unhealthy():
    pool = make_pool(count=2)
    assert check(pool, "-+--", "app-2") == []
    assert check(pool, "-", "app-2") == ["app-2"]
    assert by_name(pool)["app-2"].health == UNHEALTHY
    assert names(pool.candidates()) == ["app-1"]


def test_checks_of_a_backend_that_left_meanwhile_are_ignored():
    pool = make_pool(count=2)
    gone = by_name(pool)["app-2"]
    sync(pool, {"app-1": "10.0.0.1:50051"})
    assert pool.observe_checks([(gone, True), (gone, True)]) == []


def test_candidates_leave_out_what_a_retry_already_tried():
    pool = make_pool(count=3)
    check(pool, "++", "app-1", "app-2")
    first = by_name(pool)["app-1"]
    assert names(pool.candidates(exclude=[first])) == ["app-2"]
    # the healthy ones all tried: fall back to the unknown one rather than fail the call
    assert names(pool.candidates(exclude=pool.candidates())) == ["app-3"]
    assert pool.candidates(exclude=pool.backends()) == ()


def test_outstanding_counts_calls_in_flight():
    pool = make_pool(count=1)
    app = pool.backends()[0]
    pool.begin(app)
    pool.begin(app)
    pool.finish(app, Code.OK)
    assert app.outstanding == 1


# -- ejection ------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.INTERNAL])
def test_consecutive_gateway_failures_eject_for_a_while(code):
    clock = Clock()
    pool = make_pool(clock, count=2)
    assert fail(pool, "app-1", 3, code) == [False, False, True]
    assert by_name(pool)["app-1"].state == EJECTED
    assert names(pool.candidates()) == ["app-2"]
    clock.now += 4.9
    assert pool.expire() == []
    clock.now += 0.1
    assert names(pool.expire()) == ["app-1"]
    assert names(pool.candidates()) == ["app-1", "app-2"]
    assert fail(pool, "app-1", 2) == [False, False]  # the count starts over once back


@pytest.mark.parametrize("code", [Code.OK, Code.NOT_FOUND, Code.FAILED_PRECONDITION,
                                  Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED])
def test_an_answer_that_is_not_a_gateway_failure_resets_the_count(code):
    pool = make_pool(count=2)
    fail(pool, "app-1", 2)
    fail(pool, "app-1", 1, code)
    assert fail(pool, "app-1", 2) == [False, False]
    assert by_name(pool)["app-1"].state != EJECTED


@pytest.mark.parametrize("code", [Code.CANCELLED, Code.INVALID_ARGUMENT, Code.OUT_OF_RANGE,
                                  Code.UNAUTHENTICATED, Code.PERMISSION_DENIED])
def test_a_cancelled_call_or_the_callers_fault_neither_counts_nor_resets(code):
    pool = make_pool(count=2)
    fail(pool, "app-1", 2)
    fail(pool, "app-1", 12, code)
    assert by_name(pool)["app-1"].state != EJECTED
    assert fail(pool, "app-1", 1) == [True]


# -- panic -----------------------------------------------------------------------------------------

def test_under_the_panic_threshold_every_backend_takes_calls():
    pool = make_pool(count=4, panic_threshold_percent=50)
    check(pool, "++")
    check(pool, "---", "app-1", "app-2")
    assert not pool.panic and names(pool.candidates()) == ["app-3", "app-4"]  # 50 %: not under
    check(pool, "---", "app-3")
    assert pool.panic
    assert names(pool.candidates()) == ["app-1", "app-2", "app-3", "app-4"]
    assert names(pool.candidates(exclude=[by_name(pool)["app-4"]])) == ["app-1", "app-2",
                                                                        "app-3"]
    check(pool, "++", "app-3")
    assert not pool.panic and names(pool.candidates()) == ["app-3", "app-4"]


def test_ejected_backends_count_as_unhealthy_for_panic():
    pool = make_pool(count=3, panic_threshold_percent=50, max_ejected_percent=100)
    check(pool, "++")
    fail(pool, "app-1", 3)
    assert not pool.panic
    fail(pool, "app-2", 3)
    assert pool.panic and names(pool.candidates()) == ["app-1", "app-2", "app-3"]


def test_backends_not_checked_yet_do_not_start_a_panic():
    pool = make_pool(count=3, panic_threshold_percent=100)
    assert not pool.panic and names(pool.candidates()) == ["app-1", "app-2", "app-3"]


def test_panic_off_keeps_refusing_unhealthy_backends():
    pool = make_pool(count=2, panic_threshold_percent=0)
    check(pool, "---")
    assert not pool.panic and pool.candidates() == ()


def test_never_more_than_the_capped_share_is_ejected():
    pool = make_pool(count=4)  # 50 % of 4: two at most
    assert fail(pool, "app-1", 3)[-1] and fail(pool, "app-2", 3)[-1]
    assert not any(fail(pool, "app-3", 10))
    assert sorted(b.name for b in pool.backends() if b.state == EJECTED) == ["app-1", "app-2"]
    assert names(pool.candidates()) == ["app-3", "app-4"]


def test_a_lone_backend_is_never_ejected():
    pool = make_pool(count=1)
    assert not any(fail(pool, "app-1", 10))
    assert names(pool.candidates()) == ["app-1"]


def test_when_every_backend_in_service_is_ejected_the_ejected_still_take_calls():
    pool = make_pool(count=2, max_ejected_percent=100)
    fail(pool, "app-1", 3)
    fail(pool, "app-2", 3)
    assert {b.state for b in pool.backends()} == {EJECTED}
    assert names(pool.candidates()) == ["app-1", "app-2"]


def test_an_unhealthy_backend_takes_no_call_even_in_a_pinch():
    pool = make_pool(count=2, max_ejected_percent=100)
    check(pool, "---", "app-2")
    fail(pool, "app-1", 3)
    assert names(pool.candidates()) == ["app-1"]  # ejected but not failing its checks


def test_repeated_ejections_last_longer_and_are_forgotten_with_time():
    clock = Clock()
    pool = make_pool(clock, count=2)
    app = by_name(pool)["app-1"]
    fail(pool, "app-1", 3)
    assert app.ejected_until == clock.now + 5
    clock.now += 5
    pool.expire()
    fail(pool, "app-1", 3)
    assert app.ejected_until == clock.now + 10  # second ejection in a row: twice as long
    clock.now += 10
    pool.expire()
    clock.now += 10  # two base periods back without trouble: both ejections forgotten
    fail(pool, "app-1", 3)
    assert app.ejected_until == clock.now + 5
    app.ejections = 10_000
    clock.now += 5
    pool.expire()
    fail(pool, "app-1", 3)
    assert app.ejected_until == clock.now + MAX_EJECTION_SECONDS


def test_a_backend_that_left_is_not_ejected_and_its_calls_still_finish():
    pool = make_pool(count=3)
    gone = by_name(pool)["app-3"]
    for _ in range(3):
        pool.begin(gone)
    sync(pool, {"app-1": "10.0.0.1:50051", "app-2": "10.0.0.2:50051"})
    assert [pool.finish(gone, Code.UNAVAILABLE) for _ in range(3)] == [False] * 3
    assert gone.outstanding == 0 and gone.state != EJECTED
