"""The serverless controller: each path to a free instance, scale-up under a queue, the
queue's bound, pausing and scale to zero, the prewarm pool, failures; and a Hypothesis
state machine checking, after any sequence of events, that no function has more than
max_instances, no instance runs two requests, no request runs twice, and no request
waits while an instance of its function is idle."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from nodes.serverless.controller import (
    COLD,
    PAUSED,
    PREWARM,
    WARM,
    Controller,
    ControllerError,
    Create,
    Dispatch,
    FunctionConfig,
    Pause,
    Refuse,
    Remove,
    Resume,
    Specialize,
    State,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def only(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


@pytest.fixture
def clock():
    return Clock()


def controller(clock, prewarm=0, **config):
    c = Controller(clock=clock, prewarm=prewarm)
    c.deploy(FunctionConfig("hello", **config))
    return c


def serve_one(c):
    """r1 runs on a new instance fn-1, which is then idle."""
    c.invoke("r1", "hello")
    c.ready("fn-1")
    c.done("fn-1")


def test_the_first_call_is_a_cold_start_and_the_next_runs_warm(clock):
    c = controller(clock)
    [create] = c.invoke("r1", "hello")
    assert create == Create("fn-1", "hello")
    clock.now = 0.4
    assert c.ready("fn-1") == [Dispatch("r1", "fn-1", COLD, 0.4)]
    assert c.done("fn-1") == []
    assert c.invoke("r2", "hello") == [Dispatch("r2", "fn-1", WARM, 0.0)]


def test_an_idle_instance_is_paused_then_resumed_for_the_next_call(clock):
    c = controller(clock, pause_after=5, keep_alive=60)
    serve_one(c)
    clock.now = 5
    assert c.tick() == [Pause("fn-1")]
    assert c.invoke("r2", "hello") == [Resume("fn-1")]
    clock.now = 5.01
    assert c.ready("fn-1") == [Dispatch("r2", "fn-1", PAUSED, pytest.approx(0.01))]


def test_a_function_with_no_min_instances_scales_to_zero_after_keep_alive(clock):
    c = controller(clock, pause_after=5, keep_alive=60)
    serve_one(c)
    clock.now = 59.9
    assert only(c.tick(), Remove) == []
    clock.now = 60
    assert c.tick() == [Remove("fn-1")]
    assert c.instances == {}


def test_min_instances_are_started_at_deploy_and_kept_past_keep_alive(clock):
    c = Controller(clock=clock)
    actions = c.deploy(FunctionConfig("hello", min_instances=2, keep_alive=1))
    assert [type(a) for a in actions] == [Create, Create]
    for instance in list(c.instances):
        c.ready(instance)
    clock.now = 100
    assert only(c.tick(), Remove) == []
    assert len(c.instances) == 2


def test_a_prewarmed_container_is_specialized_instead_of_a_cold_start(clock):
    c = Controller(clock=clock, prewarm=1)
    assert c.deploy(FunctionConfig("hello")) == [Create("fn-1", None)]
    c.ready("fn-1")
    actions = c.invoke("r1", "hello")
    assert actions == [Specialize("fn-1", "hello"), Create("fn-2", None)]  # pool refilled
    assert c.ready("fn-1") == [Dispatch("r1", "fn-1", PREWARM, 0.0)]


def test_a_burst_starts_one_instance_per_waiting_request_up_to_max(clock):
    c = controller(clock, max_instances=3)
    creates = [a for n in range(5) for a in c.invoke(f"r{n}", "hello")]
    assert len(only(creates, Create)) == 3
    assert c.waiting("hello") == 5
    dispatched = [a for i in ("fn-1", "fn-2", "fn-3") for a in c.ready(i)]
    assert [d.request for d in dispatched] == ["r0", "r1", "r2"]
    assert c.done("fn-2") == [Dispatch("r3", "fn-2", WARM, 0.0)]


def test_past_the_queue_limit_a_call_is_refused_with_a_reason(clock):
    c = controller(clock, max_instances=1, queue_limit=2)
    for request in ("r1", "r2", "r3"):  # r1 has the instance on its way; r2, r3 queue
        assert not only(c.invoke(request, "hello"), Refuse)
    [refused] = c.invoke("r4", "hello")
    assert refused == Refuse("r4", "too many requests: 2 already wait for hello, whose 1 "
                                   "instance(s) are all busy (queue_limit 2)")


def test_a_dead_instance_hands_its_request_back_and_a_replacement_serves_the_queue(clock):
    c = controller(clock, max_instances=1)
    c.invoke("r1", "hello")
    c.ready("fn-1")
    c.invoke("r2", "hello")  # waits: the only instance is busy
    request, actions = c.failed("fn-1")
    assert request == "r1"
    assert actions == [Remove("fn-1"), Create("fn-2", "hello")]


def test_undeploy_refuses_the_waiting_and_removes_the_instances(clock):
    c = controller(clock, max_instances=1)
    c.invoke("r1", "hello")
    c.invoke("r2", "hello")
    assert c.undeploy("hello") == [Refuse("r1", "function hello was removed"),
                                   Refuse("r2", "function hello was removed"),
                                   Remove("fn-1")]
    with pytest.raises(ControllerError, match="no function 'hello' \\(none deployed\\)"):
        c.invoke("r3", "hello")


@pytest.mark.parametrize("config, message", [
    (dict(name=""), "needs a name"),
    (dict(name="f", max_instances=0), "max_instances is 0"),
    (dict(name="f", min_instances=3, max_instances=2), "min_instances 3 must be 0..2"),
    (dict(name="f", keep_alive=-1), "never negative"),
    (dict(name="f", queue_limit=-1), "queue_limit is -1"),
])
def test_a_bad_config_is_refused_with_what_is_wrong(config, message):
    with pytest.raises(ControllerError, match=message):
        FunctionConfig(**config)


def test_events_about_unknown_or_wrong_state_instances_are_errors(clock):
    c = controller(clock)
    with pytest.raises(ControllerError, match="no instance 'fn-9'"):
        c.ready("fn-9")
    c.invoke("r1", "hello")
    with pytest.raises(ControllerError, match="fn-1 is starting, not busy"):
        c.done("fn-1")


class Platform(RuleBasedStateMachine):
    """Random invocations, readiness, completions, deaths and time passing."""

    @initialize(prewarm=st.integers(0, 2), max_instances=st.integers(1, 4),
                min_instances=st.integers(0, 1), queue_limit=st.integers(0, 6))
    def setup(self, prewarm, max_instances, min_instances, queue_limit):
        self.clock = Clock()
        self.c = Controller(clock=self.clock, prewarm=prewarm)
        self.configs = {name: FunctionConfig(name, max_instances=max_instances,
                                             min_instances=min(min_instances, max_instances),
                                             pause_after=2, keep_alive=10,
                                             queue_limit=queue_limit)
                        for name in ("f", "g")}
        self.requests = 0
        self.dispatched: set[str] = set()
        self.outcome: dict[str, str] = {}  # request -> dispatched | refused | lost
        for config in self.configs.values():
            self.apply(self.c.deploy(config))

    def apply(self, actions):
        for action in actions:
            if isinstance(action, Dispatch):
                assert action.request not in self.dispatched, f"{action.request} ran twice"
                self.dispatched.add(action.request)
                self.outcome[action.request] = "dispatched"
            elif isinstance(action, Refuse):
                assert action.request not in self.outcome
                self.outcome[action.request] = "refused"

    @rule(name=st.sampled_from(["f", "g"]))
    def invoke(self, name):
        self.requests += 1
        self.apply(self.c.invoke(f"r{self.requests}", name))

    @rule(data=st.data())
    def ready(self, data):
        starting = sorted(i.id for i in self.c.instances.values() if i.state is State.STARTING)
        if starting:
            self.apply(self.c.ready(data.draw(st.sampled_from(starting))))

    @rule(data=st.data())
    def done(self, data):
        busy = sorted(i.id for i in self.c.instances.values() if i.state is State.BUSY)
        if busy:
            self.apply(self.c.done(data.draw(st.sampled_from(busy))))

    @rule(data=st.data())
    def die(self, data):
        if self.c.instances:
            request, actions = self.c.failed(data.draw(st.sampled_from(sorted(self.c.instances))))
            if request is not None:
                self.outcome[request] = "lost"
            self.apply(actions)

    @rule(seconds=st.floats(0, 15))
    def time_passes(self, seconds):
        self.clock.now += seconds
        self.apply(self.c.tick())

    @invariant()
    def bounded_and_one_request_each(self):
        for name, config in self.configs.items():
            mine = [i for i in self.c.instances.values() if i.function == name]
            assert len(mine) <= config.max_instances
            assert self.c.backlog(name) <= config.queue_limit
        running = [i.request for i in self.c.instances.values() if i.state is State.BUSY]
        assert None not in running and len(running) == len(set(running))
        assert sum(1 for i in self.c.instances.values() if i.function is None) <= self.c.prewarm

    @invariant()
    def no_request_waits_beside_an_idle_instance(self):
        for name in self.configs:
            if self.c.waiting(name):
                assert not any(i.function == name and i.state is State.IDLE
                               for i in self.c.instances.values())

    @invariant()
    def every_request_is_accounted_for_once(self):
        waiting = sum(self.c.waiting(name) for name in self.configs)
        assert len(self.outcome) + waiting == self.requests


TestPlatform = Platform.TestCase
TestPlatform.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_drain_refuses_every_waiting_request_and_starts_nothing_more():
    clock = [0.0]
    c = Controller(clock=lambda: clock[0])
    c.deploy(FunctionConfig("f", max_instances=1))
    c.invoke("r1", "f")
    c.invoke("r2", "f")
    assert c.drain("f", "f could not start: no image") == [
        Refuse("r1", "f could not start: no image"), Refuse("r2", "f could not start: no image")]
    assert c.waiting("f") == 0
