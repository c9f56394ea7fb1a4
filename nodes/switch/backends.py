"""The switch's backends and everything it decides about them. Sans-I/O.

`BackendPool` holds the set discovery found (`diff` against a new answer,
`apply` the change), each backend's active-health state (a `FailureDetector`
per backend, fed by `observe_checks`), passive outlier ejection (`finish`
counts consecutive gateway failures) and the calls each one has in flight.
Per request it answers one question, `candidates()`: who may take a call now.
Time comes from an injected clock; nodes/switch/node.py and forwarder.py do
every socket and thread around it.

Who takes traffic, best tier first:
1. healthy backends (passed `rise` checks in a row) that are not ejected;
2. when there is none: backends whose health is still unknown (just
   discovered, no verdict yet) — so a lab that has just come up serves at
   once, while a backend added to a working set (a scale-up, a restart) waits
   for its checks before it gets traffic;
3. when those are all ejected too: the ejected ones, because ejection only
   moves load away from a backend, it never makes the switch refuse a call.
An unknown backend that fails `fall` checks in a row becomes unhealthy.

Panic (Envoy's panic threshold): when fewer than `panic_threshold_percent` %
of the set look healthy (healthy or still unknown, and not ejected), the
tiers are ignored and every backend takes calls, unhealthy and ejected ones
included. Checks that fail everywhere at once say more often that the
backends are busy, or the checks' own path is broken, than that every one
of them is down; refusing every call then turns a partial outage into a full
one. 0 turns panic off.

Ejection (like Envoy's outlier detection): after `eject_after` consecutive
gateway failures (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL; an application
error such as NOT_FOUND resets the count; a status that is the caller's
fault, such as INVALID_ARGUMENT, or says the caller gave up, leaves it
as it was) a backend is ejected for
`eject_seconds` x the number of its recent ejections (capped at
MAX_EJECTION_SECONDS; each `eject_seconds` spent back without an ejection
forgets one). At most `max_ejected_percent` % of the set, rounded down, is
ejected at once, so a lone backend is never ejected. An ejected backend comes
back at the first `expire()` after its time is up (the health thread calls it
every round), keeping the per-request path free of clock reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from nodes.common.peers import FailureDetector

UNKNOWN, HEALTHY, UNHEALTHY, EJECTED = "unknown", "healthy", "unhealthy", "ejected"
GATEWAY_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.INTERNAL})
# The caller gave up, or sent what no backend could serve: says nothing about the backend
# either way, so a client sending garbage can neither eject a backend nor hide a failing one.
NEUTRAL_CODES = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.INVALID_ARGUMENT,
                           grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAUTHENTICATED,
                           grpc.StatusCode.PERMISSION_DENIED})
MAX_EJECTION_SECONDS = 300.0


@dataclass(eq=False)  # compared by identity: a restarted backend is a new object
class Backend:
    name: str
    target: str
    detector: FailureDetector
    link: Any = None  # the adapter's connection to it, set before it joins the pool
    health: str = UNKNOWN
    outstanding: int = 0
    consecutive_failures: int = 0
    ejected_until: float | None = None
    ejections: int = 0
    returned_at: float = 0.0
    failed_checks_while_unknown: int = 0

    @property
    def state(self) -> str:
        return EJECTED if self.ejected_until is not None else self.health


@dataclass(frozen=True)
class SetChange:
    added: dict[str, str] = field(default_factory=dict)  # name -> target, to be created
    removed: tuple[Backend, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class BackendPool:
    def __init__(self, *, rise: int, fall: int, eject_after: int, eject_seconds: float,
                 max_ejected_percent: int, panic_threshold_percent: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if (eject_after < 1 or eject_seconds <= 0 or not 0 <= max_ejected_percent <= 100
                or not 0 <= panic_threshold_percent <= 100):
            raise ValueError("eject_after >= 1, eject_seconds > 0, max_ejected_percent and "
                             "panic_threshold_percent in 0-100")
        self._rise = rise
        self._fall = fall
        self._eject_after = eject_after
        self._eject_seconds = eject_seconds
        self._max_ejected_percent = max_ejected_percent
        self._panic_threshold_percent = panic_threshold_percent
        self._clock = clock
        self._backends: dict[str, Backend] = {}
        self._tiers: tuple[tuple[Backend, ...], ...] = ((), (), ())
        self._routable: tuple[Backend, ...] = ()
        #: True while too few backends look healthy and every one takes calls.
        self.panic = False
        self._lock = threading.Lock()

    # -- the set -----------------------------------------------------------------------------

    def new_backend(self, name: str, target: str) -> Backend:
        return Backend(name, target, FailureDetector(rise=self._rise, fall=self._fall))

    def diff(self, found: Mapping[str, str]) -> SetChange:
        """What discovery's answer `found` (name -> target) changes; a moved name is both."""
        with self._lock:
            current = dict(self._backends)
        added = {name: target for name, target in found.items()
                 if name not in current or current[name].target != target}
        removed = tuple(backend for name, backend in sorted(current.items())
                        if found.get(name) != backend.target)
        return SetChange(added, removed)

    def apply(self, added: Iterable[Backend], removed: Iterable[Backend]) -> None:
        with self._lock:
            for backend in removed:
                if self._backends.get(backend.name) is backend:
                    del self._backends[backend.name]
            for backend in added:
                self._backends[backend.name] = backend
            self._retier()

    def backends(self) -> list[Backend]:
        with self._lock:
            return sorted(self._backends.values(), key=lambda backend: backend.name)

    def __len__(self) -> int:
        return len(self._backends)

    # -- per request ---------------------------------------------------------------------------

    def candidates(self, exclude: Collection[Backend] = ()) -> tuple[Backend, ...]:
        """The backends that may take a call now (best tier first), leaving out `exclude`."""
        if not exclude:
            return self._routable
        for tier in self._tiers:
            remaining = tuple(backend for backend in tier if backend not in exclude)
            if remaining:
                return remaining
        return ()

    def begin(self, backend: Backend) -> None:
        with self._lock:
            backend.outstanding += 1

    def finish(self, backend: Backend, code: grpc.StatusCode) -> bool:
        """Record how one call to `backend` ended; True when this failure ejected it."""
        with self._lock:
            backend.outstanding -= 1
            if code in NEUTRAL_CODES:
                return False
            if code not in GATEWAY_FAILURES:
                backend.consecutive_failures = 0
                return False
            backend.consecutive_failures += 1
            if (backend.consecutive_failures < self._eject_after
                    or backend.ejected_until is not None
                    or self._backends.get(backend.name) is not backend
                    or not self._may_eject_one_more()):
                return False
            now = self._clock()
            if backend.ejections:
                forgotten = int((now - backend.returned_at) // self._eject_seconds)
                backend.ejections = max(0, backend.ejections - forgotten)
            backend.ejections += 1
            backend.ejected_until = now + min(self._eject_seconds * backend.ejections,
                                              MAX_EJECTION_SECONDS)
            self._retier()
            return True

    def _may_eject_one_more(self) -> bool:
        ejected = sum(1 for backend in self._backends.values()
                      if backend.ejected_until is not None)
        return ejected + 1 <= len(self._backends) * self._max_ejected_percent // 100

    # -- periodic ------------------------------------------------------------------------------

    def expire(self) -> list[Backend]:
        """Bring back every backend whose ejection is over; return them."""
        with self._lock:
            now = self._clock()
            back = [backend for backend in self._backends.values()
                    if backend.ejected_until is not None and backend.ejected_until <= now]
            for backend in back:
                backend.ejected_until = None
                backend.consecutive_failures = 0
                backend.returned_at = now
            if back:
                self._retier()
            return back

    def observe_checks(self, results: Iterable[tuple[Backend, bool]]) -> list[Backend]:
        """Feed one round of health checks; return the backends whose health changed.

        A whole round is applied at once, so backends that pass their checks
        together start taking traffic together.
        """
        changed = []
        with self._lock:
            for backend, ok in results:
                if self._backends.get(backend.name) is not backend:
                    continue  # left the set while its check was in flight
                health = self._observe(backend, ok)
                if health != backend.health:
                    backend.health = health
                    changed.append(backend)
            if changed:
                self._retier()
        return changed

    def _observe(self, backend: Backend, ok: bool) -> str:
        backend.detector.observe(backend.name, ok)
        if backend.detector.is_up(backend.name):
            return HEALTHY
        if backend.health != UNKNOWN:
            return UNHEALTHY
        # The detector starts every peer down, so it cannot tell "not proven yet"
        # from "failing": count an unknown backend's failures here.
        backend.failed_checks_while_unknown = 0 if ok else backend.failed_checks_while_unknown + 1
        return UNHEALTHY if backend.failed_checks_while_unknown >= self._fall else UNKNOWN

    # -- derived state -------------------------------------------------------------------------

    def _retier(self) -> None:
        ordered = sorted(self._backends.values(), key=lambda backend: backend.name)
        in_service = [backend for backend in ordered if backend.ejected_until is None]
        looking_healthy = sum(1 for backend in in_service if backend.health != UNHEALTHY)
        self.panic = looking_healthy * 100 < len(ordered) * self._panic_threshold_percent
        if self.panic:
            self._tiers = (tuple(ordered),)
            self._routable = self._tiers[0]
            return
        self._tiers = (
            tuple(backend for backend in in_service if backend.health == HEALTHY),
            tuple(backend for backend in in_service if backend.health == UNKNOWN),
            tuple(backend for backend in ordered
                  if backend.ejected_until is not None and backend.health != UNHEALTHY),
        )
        self._routable = next((tier for tier in self._tiers if tier), ())
