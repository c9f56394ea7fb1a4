"""The serverless platform's decisions, sans-I/O: which instance runs an invocation, when
instances are started, paused, resumed and removed, and when a request waits or is refused.

The runner (the `runner` role) feeds a `Controller` what happens — an invocation arrives,
an instance is ready, a request is done, an instance died — and carries out the actions it
returns on the Docker engine. Nothing here does I/O: the clock is injected, so unit tests
drive it with a fake one.

Every instance runs one request at a time. An invocation is served by the cheapest path
to a free instance of its function, in this order (the runner counts cold starts by path):

- `warm`: an idle instance, running: dispatched at once;
- `paused`: an idle instance frozen by the cgroup freezer (as faasd does): resumed, then
  dispatched;
- `prewarm`: a generic container waiting to be specialized (OpenWhisk's stem cells,
  Fission's pool): the function's code is loaded into it; the pool is refilled;
- `cold`: no container: one is created and started, then the code is loaded.

With none free, the request waits in its function's queue, and an instance is started
for each waiting request not already covered by one starting (a concurrency target of
one request per instance, as Knative's containerConcurrency 1), up to `max_instances`.
With every instance busy and `max_instances` reached, up to `queue_limit` more requests
wait (besides those an instance on its way will take); past that, an invocation is refused
("too many requests").

Idle instances are paused after `pause_after` seconds and removed `keep_alive` seconds
after their last request; `min_instances` are kept whatever their age, so a function
with `min_instances = 0` scales to zero. An instance that dies or overruns its timeout is
removed, and the request it held is handed back to the caller (`failed`), who decides
whether to retry it (asynchronous invocations) or report the error.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

WARM, PAUSED, PREWARM, COLD = "warm", "paused", "prewarm", "cold"
PATHS = (WARM, PAUSED, PREWARM, COLD)


class ControllerError(ValueError):
    """A request the controller cannot take: unknown function or instance, bad config."""


@dataclass(frozen=True)
class FunctionConfig:
    name: str
    max_instances: int = 10
    min_instances: int = 0
    keep_alive: float = 60.0  # removed this long after its last request (paused before)
    pause_after: float = 5.0  # an idle instance is frozen after this long
    queue_limit: int = 100  # requests waiting with no instance on its way for them, at most

    def __post_init__(self) -> None:
        if not self.name:
            raise ControllerError("a function needs a name")
        if self.max_instances < 1:
            raise ControllerError(f"max_instances is {self.max_instances}; at least 1")
        if not 0 <= self.min_instances <= self.max_instances:
            raise ControllerError(f"min_instances {self.min_instances} must be 0.."
                                  f"{self.max_instances} (max_instances)")
        if self.keep_alive < 0 or self.pause_after < 0:
            raise ControllerError("keep_alive and pause_after are never negative")
        if self.queue_limit < 0:
            raise ControllerError(f"queue_limit is {self.queue_limit}; never negative")


class State(Enum):
    STARTING = "starting"  # created, being specialized or resumed: not yet able to run
    IDLE = "idle"
    BUSY = "busy"
    PAUSED = "paused"


# -- actions the runner carries out -----------------------------------------------------------

@dataclass(frozen=True)
class Create:
    """Create and start a container for `function` (a cold start), or, with no function, a
    generic one for the prewarm pool."""

    instance: str
    function: str | None


@dataclass(frozen=True)
class Specialize:
    """Load `function` into the prewarmed container `instance`."""

    instance: str
    function: str


@dataclass(frozen=True)
class Resume:
    instance: str


@dataclass(frozen=True)
class Pause:
    instance: str


@dataclass(frozen=True)
class Remove:
    instance: str


@dataclass(frozen=True)
class Dispatch:
    """Run `request` on `instance`; `path` is how the instance came to be free for it and
    `waited` the seconds the request queued."""

    request: str
    instance: str
    path: str
    waited: float


@dataclass(frozen=True)
class Refuse:
    request: str
    reason: str


Action = Create | Specialize | Resume | Pause | Remove | Dispatch | Refuse


@dataclass
class Instance:
    id: str
    function: str | None  # None: a prewarmed container not yet specialized
    state: State
    since: float  # when it entered `state`
    last_used: float
    path: str  # how it is coming up (for the request that waits on it)
    request: str | None = None


@dataclass
class _Function:
    config: FunctionConfig
    queue: deque  # of (request id, arrived at)


class Controller:
    def __init__(self, *, clock: Callable[[], float], prewarm: int = 0,
                 id_prefix: str = "fn") -> None:
        if prewarm < 0:
            raise ControllerError(f"prewarm is {prewarm}; never negative")
        self.clock = clock
        self.prewarm = prewarm
        self.instances: dict[str, Instance] = {}
        self._functions: dict[str, _Function] = {}
        self._ids = (f"{id_prefix}-{n}" for n in itertools.count(1))

    # -- functions ----------------------------------------------------------------------------

    def deploy(self, config: FunctionConfig) -> list[Action]:
        """Add or replace a function; its running instances keep serving until removed."""
        known = self._functions.get(config.name)
        self._functions[config.name] = _Function(config, known.queue if known else deque())
        return self.tick()

    def undeploy(self, name: str) -> list[Action]:
        """Remove a function and its instances; its waiting requests are refused (the
        requests its busy instances were running are the caller's to report)."""
        function = self._function(name)
        del self._functions[name]
        actions: list[Action] = [Refuse(request, f"function {name} was removed")
                                 for request, _ in function.queue]
        for instance in [i for i in self.instances.values() if i.function == name]:
            actions.append(self._remove(instance))
        return actions

    # -- events -------------------------------------------------------------------------------

    def invoke(self, request: str, name: str) -> list[Action]:
        """An invocation of `name` arrives."""
        function = self._function(name)
        config = function.config
        backlog = self.backlog(name)
        if backlog >= config.queue_limit and not self._free(name) \
                and len(self._of(name)) >= config.max_instances:
            return [Refuse(request, f"too many requests: {backlog} already wait for {name}, "
                                    f"whose {config.max_instances} instance(s) are all busy "
                                    f"(queue_limit {config.queue_limit})")]
        function.queue.append((request, self.clock()))
        return self._serve(name)

    def ready(self, instance_id: str) -> list[Action]:
        """A created, specialized or resumed instance can run requests now."""
        instance = self._instance(instance_id)
        if instance.state is not State.STARTING:
            raise ControllerError(f"instance {instance_id} is {instance.state.value}, "
                                  f"not starting")
        instance.state, instance.since = State.IDLE, self.clock()
        if instance.function is None:
            return []  # a prewarmed container, waiting in the pool
        return self._serve(instance.function)

    def done(self, instance_id: str) -> list[Action]:
        """`instance_id` finished its request; it serves the next one waiting, if any."""
        instance = self._instance(instance_id)
        if instance.state is not State.BUSY:
            raise ControllerError(f"instance {instance_id} is {instance.state.value}, not busy")
        now = self.clock()
        instance.state, instance.since, instance.last_used = State.IDLE, now, now
        instance.request, instance.path = None, WARM
        assert instance.function is not None
        return self._serve(instance.function)

    def failed(self, instance_id: str) -> tuple[str | None, list[Action]]:
        """`instance_id` died, overran its timeout or its memory: it is removed. Returns the
        request it was running (the caller retries or reports it) and what to do next."""
        instance = self._instance(instance_id)
        request = instance.request
        actions: list[Action] = [self._remove(instance)]
        if instance.function in self._functions:
            actions += self._serve(instance.function)
        return request, actions + self._refill_pool()

    def drain(self, name: str, reason: str) -> list[Action]:
        """Refuse every request waiting for `name`: its instances cannot start (its code does
        not load, the engine refuses), and starting more would only fail again."""
        function = self._function(name)
        refusals: list[Action] = [Refuse(request, reason) for request, _ in function.queue]
        function.queue.clear()
        return refusals

    def tick(self) -> list[Action]:
        """Pause the idle, remove the expired, keep `min_instances` and the prewarm pool;
        call every second or so."""
        now = self.clock()
        actions: list[Action] = []
        for name, function in self._functions.items():
            config = function.config
            mine = self._of(name)
            removable = len(mine) - config.min_instances
            for instance in sorted(mine, key=lambda i: i.last_used):
                idle_for = now - instance.last_used
                if instance.state in (State.IDLE, State.PAUSED) and removable > 0 \
                        and idle_for >= config.keep_alive:
                    actions.append(self._remove(instance))
                    removable -= 1
                elif instance.state is State.IDLE and now - instance.since >= config.pause_after:
                    instance.state, instance.since = State.PAUSED, now
                    actions.append(Pause(instance.id))
            for _ in range(config.min_instances - len(self._of(name))):
                actions.append(self._start(name, now))
            actions += self._serve(name)
        return actions + self._refill_pool()

    # -- what the runner and metrics read -----------------------------------------------------

    def waiting(self, name: str) -> int:
        return len(self._function(name).queue)

    def backlog(self, name: str) -> int:
        """Requests waiting beyond those the instances starting now will take."""
        starting = sum(1 for i in self._of(name) if i.state is State.STARTING)
        return max(len(self._functions[name].queue) - starting, 0)

    # -- inside -------------------------------------------------------------------------------

    def _function(self, name: str) -> _Function:
        try:
            return self._functions[name]
        except KeyError:
            known = ", ".join(sorted(self._functions)) or "none deployed"
            raise ControllerError(f"no function {name!r} ({known})") from None

    def _instance(self, instance_id: str) -> Instance:
        try:
            return self.instances[instance_id]
        except KeyError:
            raise ControllerError(f"no instance {instance_id!r}") from None

    def _of(self, name: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.function == name]

    def _free(self, name: str) -> bool:
        return any(i.state in (State.IDLE, State.PAUSED) for i in self._of(name))

    def _serve(self, name: str) -> list[Action]:
        """Give waiting requests of `name` the free instances, cheapest first, and start
        instances for the ones left over, up to max_instances."""
        function = self._functions[name]
        now = self.clock()
        actions: list[Action] = []
        while function.queue:
            idle = [i for i in self._of(name) if i.state is State.IDLE]
            if not idle:
                break
            instance = max(idle, key=lambda i: i.last_used)  # the warmest
            request, arrived = function.queue.popleft()
            instance.state, instance.since, instance.request = State.BUSY, now, request
            actions.append(Dispatch(request, instance.id, instance.path, now - arrived))
        starting = sum(1 for i in self._of(name) if i.state is State.STARTING)
        uncovered = len(function.queue) - starting
        for instance in sorted((i for i in self._of(name) if i.state is State.PAUSED),
                               key=lambda i: i.last_used, reverse=True)[:max(uncovered, 0)]:
            instance.state, instance.since, instance.path = State.STARTING, now, PAUSED
            actions.append(Resume(instance.id))
            uncovered -= 1
        room = function.config.max_instances - len(self._of(name))
        for _ in range(max(min(uncovered, room), 0)):
            actions.append(self._start(name, now))
        return actions + self._refill_pool()

    def _start(self, name: str, now: float) -> Action:
        """A new instance of `name`: from the prewarm pool when it has one ready."""
        stem = next((i for i in self.instances.values()
                     if i.function is None and i.state is State.IDLE), None)
        if stem is not None:
            stem.function, stem.state, stem.since, stem.path = name, State.STARTING, now, PREWARM
            stem.last_used = now
            return Specialize(stem.id, name)
        instance = Instance(next(self._ids), name, State.STARTING, now, now, COLD)
        self.instances[instance.id] = instance
        return Create(instance.id, name)

    def _refill_pool(self) -> list[Action]:
        pool = sum(1 for i in self.instances.values() if i.function is None)
        now = self.clock()
        actions: list[Action] = []
        for _ in range(self.prewarm - pool):
            instance = Instance(next(self._ids), None, State.STARTING, now, now, PREWARM)
            self.instances[instance.id] = instance
            actions.append(Create(instance.id, None))
        return actions

    def _remove(self, instance: Instance) -> Remove:
        del self.instances[instance.id]
        return Remove(instance.id)
