"""The switch role: finds, checks and re-points its backends around the forwarder.

`SwitchNode` is what `python -m nodes.switch` builds (see __main__.py). It
registers the `Forwarder` (the per-request path, forwarder.py) and, once the
server answers, runs two background threads around the sans-I/O BackendPool:

- discovery: resolves SWITCH_BACKENDS every SWITCH_DISCOVERY_INTERVAL_SECONDS
  with nodes.common.peers.discover (a Compose service name gives every
  replica, named like "app-2"), so `--scale app=5` just works. A backend that
  leaves is drained: its channel closes once its calls in flight are done.
- health: a grpc.health.v1 Check to every backend each
  SWITCH_HEALTH_INTERVAL_SECONDS through the node's Channels (so checks show
  in the client metrics and obey outbound fault rules), and ejected backends
  whose time is up come back. It logs when panic routing (fewer than
  SWITCH_PANIC_THRESHOLD_PERCENT of the backends look healthy, so all take
  calls; nodes/switch/backends.py) starts and stops.

Control.Reconfigure({"backends": "...", "policy": "..."}) re-points the switch
at run time (migration uses it); Control.Status shows every backend's state
and whether the switch is in panic.

What it forwards is configuration (SWITCH_SERVICES, the bank and KV services
by default), checked at start against the descriptors compiled into the
image, rather than read from a backend's reflection, because:
- it holds from the first call, before any backend answers, and does not
  change while backends come and go or disagree during a rolling change;
- a backend cannot widen it: a machine running code its operator did not
  write (a function, a job, a real client) could list any service, its
  Control included, through reflection;
- a typo is a bad setting at start (exit 2), not a silent hole later.
The switch answers reflection itself, for those services plus its own
Control, health and reflection, so `grpcurl list` and `describe` work
through it without reaching a backend.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nodes.common.config import ConfigError
from nodes.common.logs import EventLog
from nodes.common.peers import discover, machine_name_of, own_targets
from nodes.common.role import NodeContext, RoleError, RoleNode
from nodes.switch.backends import HEALTHY, UNKNOWN, Backend, BackendPool
from nodes.switch.config import BACKEND_PORT, CONTROL_SERVICE, forwarded_methods, parse_backends
from nodes.switch.forwarder import BackendLink, Forwarder, ForwardingRules
from nodes.switch.hold import Hold
from nodes.switch.metrics import SwitchMetrics
from nodes.switch.policies import POLICIES, make_policy
from nodes.switch.retry_budget import RetryBudget

RECONFIGURABLE = ("backends", "policy", "hold")
_HEALTH_REQUEST = health_pb2.HealthCheckRequest()
_SERVING = health_pb2.HealthCheckResponse.SERVING


class _Every:
    """A daemon thread that runs `action` every `interval` seconds until stopped."""

    def __init__(self, name: str, interval: float, action: Callable[[], None], log: EventLog,
                 *, run_at_start: bool) -> None:
        self._name = name
        self._interval = interval
        self._action = action
        self._log = log
        self._run_at_start = run_at_start
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval + 5)

    def _run(self) -> None:
        if not self._run_at_start and self._stopped.wait(self._interval):
            return
        while True:
            try:
                self._action()
            except Exception as exc:  # noqa: BLE001 - one bad round must not end the loop
                self._log.error("switch_background_error", task=self._name, error=repr(exc))
            if self._stopped.wait(self._interval):
                return


class SwitchNode(RoleNode):
    #: The switch registers reflection itself, listing the services it forwards.
    serves_own_reflection = False

    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        self._ctx = ctx
        self._services: tuple[str, ...] = config["SWITCH_SERVICES"]
        self._methods = forwarded_methods(self._services)
        not_forwarded = sorted(set(config["SWITCH_IDEMPOTENT_METHODS"]) - set(self._methods))
        if not_forwarded:
            raise ConfigError(f"SWITCH_IDEMPOTENT_METHODS: {', '.join(not_forwarded)} is not a "
                              f"method of SWITCH_SERVICES ({', '.join(self._services)})")
        self._entries: tuple[str, ...] = config["SWITCH_BACKENDS"]
        self._built_from: tuple[str, ...] = ()
        self._rng = random.Random()
        self._pool = BackendPool(
            rise=config["SWITCH_HEALTH_RISE"], fall=config["SWITCH_HEALTH_FALL"],
            eject_after=config["SWITCH_EJECT_CONSECUTIVE_FAILURES"],
            eject_seconds=config["SWITCH_EJECT_SECONDS"],
            max_ejected_percent=config["SWITCH_MAX_EJECTED_PERCENT"],
            panic_threshold_percent=config["SWITCH_PANIC_THRESHOLD_PERCENT"])
        self._metrics = SwitchMetrics(ctx.registry)
        self._metrics.panic.set_function(lambda: 1 if self._pool.panic else 0)
        self._hold = Hold(max_calls=config["SWITCH_HOLD_MAX_CALLS"],
                          max_seconds=config["SWITCH_HOLD_SECONDS"])
        self._metrics.held.set_function(lambda: self._hold.waiting)
        self._was_panicking = False
        self._forwarder = Forwarder(
            node=ctx.name, pool=self._pool,
            policy=make_policy(config["SWITCH_POLICY"], rng=self._rng),
            budget=RetryBudget(percent=config["SWITCH_RETRY_BUDGET_PERCENT"],
                               min_per_second=config["SWITCH_RETRY_BUDGET_MIN_PER_SECOND"]),
            rules=ForwardingRules(
                services=config["SWITCH_SERVICES"], methods=self._methods,
                idempotent_methods=frozenset(config["SWITCH_IDEMPOTENT_METHODS"]),
                affinity_key=config["SWITCH_AFFINITY_KEY"],
                max_attempts=config["SWITCH_MAX_ATTEMPTS"],
                per_try_timeout=config["SWITCH_PER_TRY_TIMEOUT_SECONDS"],
                stream_timeout=config["SWITCH_STREAM_TIMEOUT_SECONDS"]),
            metrics=self._metrics, node_metrics=ctx.metrics, faults=ctx.rules, log=ctx.log,
            hold=self._hold)
        # A call still in flight on a departed backend may run this long before its channel closes.
        self._drain_limit = max(config["SWITCH_PER_TRY_TIMEOUT_SECONDS"],
                                config["SWITCH_STREAM_TIMEOUT_SECONDS"])
        self._draining: list[tuple[Backend, float]] = []
        self._names: dict[str, str] = {}
        self._own_targets: set[str] = set()
        self._set_lock = threading.Lock()  # one change of the backend set or policy at a time
        self._discovery = _Every("switch-discovery", config["SWITCH_DISCOVERY_INTERVAL_SECONDS"],
                                 self._discover, ctx.log, run_at_start=False)
        self._health = _Every("switch-health", config["SWITCH_HEALTH_INTERVAL_SECONDS"],
                              self._check_health, ctx.log, run_at_start=True)

    def register(self, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers((self._forwarder,))
        reflection.enable_server_reflection(
            (*self._services, CONTROL_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server)

    def serving(self, grpc_port: int) -> None:
        self._own_targets = own_targets(grpc_port)
        self._discover()  # before the node reports started, so the first call finds backends
        self._discovery.start()
        self._health.start()

    # -- discovery ------------------------------------------------------------------------------

    def _discover(self) -> None:
        with self._set_lock:
            entries = self._entries
            found = discover(entries, default_port=BACKEND_PORT, own_targets=self._own_targets,
                             name_of=self._name_of)
            if not found and len(self._pool) and entries == self._built_from:
                # A resolver hiccup must not empty a working set; a dead backend fails its
                # health checks instead.
                self._close_drained()
                return
            self._built_from = entries
            change = self._pool.diff(found)
            if change:
                self._apply(change.added, change.removed)
            self._close_drained()

    def _name_of(self, address: str) -> str | None:
        """The machine name of `address`, remembered so a failed reverse lookup renames nothing."""
        name = machine_name_of(address)
        if name is None:
            return self._names.get(address)
        self._names[address] = name
        return name

    def _apply(self, added_targets: dict[str, str], removed: tuple[Backend, ...]) -> None:
        added = []
        for name, target in sorted(added_targets.items()):
            backend = self._pool.new_backend(name, target)
            backend.link = BackendLink(name, target,
                                       max_message_bytes=self._ctx.config["MAX_MESSAGE_BYTES"],
                                       metrics=self._metrics)
            added.append(backend)
        members = {backend.name for backend in self._pool.backends() if backend not in removed}
        # The ring learns the new set first, so no key is ever hashed onto a stale one.
        self._forwarder.policy.members_changed(members | set(added_targets))
        for backend in removed:
            self._metrics.forget(backend)
        self._pool.apply(added, removed)
        for backend in added:
            self._metrics.watch(backend)
            self._ctx.log.info("backend_added", backend=backend.name, address=backend.target)
        now = time.monotonic()
        for backend in removed:
            self._draining.append((backend, now))
            self._ctx.log.info("backend_removed", backend=backend.name, address=backend.target,
                               in_flight=backend.outstanding)
        self._hold.repointed()  # held calls go to the new set

    def _close_drained(self) -> None:
        now = time.monotonic()
        still = []
        for backend, since in self._draining:
            if backend.outstanding and now - since < self._drain_limit:
                still.append((backend, since))
                continue
            backend.link.close()
            self._ctx.channels.forget(backend.target, backend.name)
        self._draining = still

    # -- health ---------------------------------------------------------------------------------

    def _check_health(self) -> None:
        timeout = self._ctx.config["SWITCH_HEALTH_TIMEOUT_SECONDS"]
        pending = []
        for backend in self._pool.backends():
            stub = health_pb2_grpc.HealthStub(self._ctx.channels.get(backend.target, backend.name))
            pending.append((backend, stub.Check.future(_HEALTH_REQUEST, timeout=timeout)))
        results = []
        for backend, future in pending:
            try:
                ok = future.result().status == _SERVING
            except grpc.RpcError:
                ok = False
            results.append((backend, ok))
        for backend in self._pool.observe_checks(results):
            self._ctx.log.info("backend_health", backend=backend.name, health=backend.health)
        for backend in self._pool.expire():
            self._ctx.log.info("backend_returned", backend=backend.name,
                               ejections=backend.ejections)
        self._log_panic_change()

    def _log_panic_change(self) -> None:
        """One log line when panic routing starts or stops (an ejection between two rounds
        shows at the next round)."""
        panic = self._pool.panic
        if panic == self._was_panicking:
            return
        self._was_panicking = panic
        backends = self._pool.backends()
        self._ctx.log.warning("switch_panic" if panic else "switch_panic_over",
                              looking_healthy=self._looking_healthy(backends),
                              backends=len(backends),
                              threshold_percent=self._ctx.config["SWITCH_PANIC_THRESHOLD_PERCENT"])

    @staticmethod
    def _looking_healthy(backends: list[Backend]) -> int:
        return sum(1 for backend in backends if backend.state in (HEALTHY, UNKNOWN))

    # -- Control --------------------------------------------------------------------------------

    def status(self) -> dict[str, str]:
        backends = self._pool.backends()
        healthy = sum(1 for backend in backends if backend.state == HEALTHY)
        state = {"policy": self._forwarder.policy.name, "entries": ",".join(self._entries),
                 "backends": f"{healthy}/{len(backends)}",
                 "panic": self._panic_status(backends),
                 "in_flight": str(sum(backend.outstanding for backend in backends)),
                 "holding": "yes" if self._hold.holding else "no",
                 "held": str(self._hold.waiting)}
        for backend in backends:
            state[f"backend.{backend.name}"] = backend.state
        return state

    def _panic_status(self, backends: list[Backend]) -> str:
        if not self._pool.panic:
            return "no"
        return (f"yes: {self._looking_healthy(backends)}/{len(backends)} look healthy, under "
                f"{self._ctx.config['SWITCH_PANIC_THRESHOLD_PERCENT']}%; every backend "
                f"takes calls")

    def reconfigure(self, settings: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(settings) - set(RECONFIGURABLE))
        if unknown:
            raise RoleError(f"unknown setting {', '.join(map(repr, unknown))}: the switch takes "
                            f"{' and '.join(RECONFIGURABLE)}")
        entries = self._entries
        if "backends" in settings:
            try:
                entries = parse_backends(settings["backends"])
            except ValueError as exc:
                raise RoleError(f"backends {settings['backends']!r}: {exc}") from None
        policy_name = settings.get("policy", self._forwarder.policy.name)
        if policy_name not in POLICIES:
            raise RoleError(f"policy {policy_name!r} is not one of {', '.join(POLICIES)}")
        hold = None
        if "hold" in settings:
            try:
                hold = float(settings["hold"])
            except ValueError:
                hold = -1.0
            if not 0 <= hold < float("inf"):
                raise RoleError(f"hold {settings['hold']!r}: seconds to hold new calls "
                                f"(at most {self._hold.max_seconds}), or 0 to release them")
        with self._set_lock:
            if policy_name != self._forwarder.policy.name:
                policy = make_policy(policy_name, rng=self._rng)
                policy.members_changed(backend.name for backend in self._pool.backends())
                self._forwarder.policy = policy
            moved = entries != self._entries
            self._entries = entries
        if hold is not None and not moved:
            hold = self._hold.start(hold)
            self._ctx.log.info("switch_hold" if hold else "switch_hold_released", seconds=hold,
                               held=self._hold.waiting)
        if moved:
            self._discover()  # re-pointed before Reconfigure answers; held calls go there
            self._hold.repointed()  # even when the new entries resolve to the same set
        self._ctx.log.info("switch_reconfigured", backends=",".join(entries), policy=policy_name)
        return {"backends": ",".join(entries), "policy": policy_name,
                "hold": f"{self._hold.remaining:.3f}"}

    def close(self) -> None:
        self._discovery.stop()
        self._health.stop()
        with self._set_lock:
            for backend in self._pool.backends():
                backend.link.close()
            for backend, _ in self._draining:
                backend.link.close()
            self._draining = []
