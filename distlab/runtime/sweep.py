"""The sweep: remove everything labelled `distlab.lab` from a Docker engine, even a drowning one.

`ComposeRuntime.clean` sweeps containers, networks and volumes; `ComposeRuntime.down`
sweeps containers and networks after `docker compose down` (named volumes keep the
labs' data). It talks to the engine only through the low-level docker-py calls listed
in `EngineAPI` (tests give it tests/unit/distlab/runtime/fake_api_client.py), and it
touches nothing that does not carry the label.

What a loaded engine taught us (issue 15: 64 peers, load average 95): a full container
listing inspects every container and timed out after 60 s; `docker kill` of one peer
took a minute; a clean that died on the first timeout left 51 peers running. So: sparse
listings filtered by the label (one request), every running container killed first (in
parallel, so the engine stops drowning before it is asked to remove anything), then
removed with force and its anonymous volumes (`VOLUME /data` in the node image) with
it, every call retried with a per-call timeout, and the whole sweep inside one budget.
Nothing raises: what could not be removed comes back in the report, with the reason.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import docker.errors
import requests.exceptions

# A loaded engine answered single calls in about a minute (issue 15): one call may take
# that long before it counts as failed, and three tries cover a transient stall.
CALL_TIMEOUT_SECONDS = 60.0
ATTEMPTS = 3
# How long `distlab clean` may take in all. Past it nothing new is started; calls in
# flight end within their own timeout, so the command ends within budget + one call.
BUDGET_SECONDS = 300.0
# Parallel calls: enough that 64 peers need four rounds, few enough that the engine's
# own API server (and the client's connection pool, sized to match) is not swamped.
WORKERS = 16
BACKOFF_SECONDS = (1.0, 3.0)  # before the 2nd and 3rd try: give a stalled engine air

_LIVE_STATES = ("running", "restarting")  # a paused container is removed with force as is


class EngineAPI(Protocol):
    """The docker-py `APIClient` calls the sweep makes (and the fake implements)."""

    def containers(self, all: bool = ..., filters: dict | None = ...) -> list[dict]: ...
    def kill(self, container: str, signal: str | None = ...) -> None: ...
    def remove_container(self, container: str, v: bool = ..., link: bool = ...,
                         force: bool = ...) -> None: ...
    def networks(self, names=..., ids=..., filters: dict | None = ...) -> list[dict]: ...
    def remove_network(self, net_id: str) -> None: ...
    def volumes(self, filters: dict | None = ...) -> dict: ...
    def remove_volume(self, name: str, force: bool = ...) -> None: ...


@dataclass(frozen=True)
class Leftover:
    """Something labelled that is still there, and why."""

    kind: str  # container, network, volume
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.reason}"


@dataclass
class SweepReport:
    containers: int = 0  # removed (or already gone when we got to them)
    networks: int = 0
    volumes: int = 0
    leftovers: list[Leftover] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what went wrong but was recovered from

    @property
    def complete(self) -> bool:
        return not self.leftovers


class _Failed(Exception):
    """One engine call failed for good (after its retries); `reason` is for people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(exc: BaseException, call_timeout: float = CALL_TIMEOUT_SECONDS) -> str:
    """One line for a person, from any error docker-py or requests raises."""
    if isinstance(exc, requests.exceptions.Timeout):
        return f"the engine did not answer within {call_timeout:.0f} s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "the engine could not be reached (is dockerd running?)"
    if isinstance(exc, docker.errors.APIError):
        text = exc.explanation or str(exc)
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        return f"the engine refused ({exc.status_code}): {str(text).strip()}"
    return f"{type(exc).__name__}: {exc}"


def _retriable(exc: BaseException) -> bool:
    # A timeout or a lost connection may clear on a less busy engine; so may the engine's
    # own 5xx ("did not receive an exit event") and a removal another client had started
    # (409 "removal ... is already in progress": the next try finds it gone).
    if isinstance(exc, (requests.exceptions.Timeout, requests.exceptions.ConnectionError)):
        return True
    if isinstance(exc, docker.errors.APIError):
        code = exc.status_code
        return code is None or code >= 500 or (code == 409 and "in progress" in describe(exc))
    return False


class Sweep:
    def __init__(self, api: EngineAPI, label: str, *, workers: int = WORKERS,
                 attempts: int = ATTEMPTS, budget: float = BUDGET_SECONDS,
                 call_timeout: float = CALL_TIMEOUT_SECONDS,
                 backoff: Sequence[float] = BACKOFF_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api = api
        self.filters = {"label": label}
        self.workers = workers
        self.attempts = attempts
        self.call_timeout = call_timeout
        self.backoff = backoff
        self.clock = clock
        self.sleep = sleep
        self.deadline = clock() + budget
        self.budget = budget

    def run(self, *, volumes: bool) -> SweepReport:
        """Remove every labelled container and network, and labelled volumes if `volumes`."""
        report = SweepReport()
        self._containers(report)
        self._networks(report)
        if volumes:
            self._volumes(report)
        return report

    # -- the three kinds -------------------------------------------------------------------

    def _containers(self, report: SweepReport) -> None:
        listed = self._listed("container", report,
                              lambda: self.api.containers(all=True, filters=self.filters))
        if listed is None:
            return
        names = {c["Id"]: _container_name(c) for c in listed}
        live = [c["Id"] for c in listed if c.get("State") in _LIVE_STATES]
        for ident, failure in self._each(live, lambda i: self.api.kill(i, signal="KILL")):
            # remove(force=True) kills too: a failed kill is only worth a note, and one that
            # found the container stopped since the listing (409 "is not running") not even
            # that: 23 such warnings once buried a clean's one line of result.
            if failure and "is not running" not in failure:
                report.notes.append(f"kill {names[ident]}: {failure}")
        report.containers += self._remove(
            "container", names, lambda i: self.api.remove_container(i, v=True, force=True),
            report)

    def _networks(self, report: SweepReport) -> None:
        listed = self._listed("network", report,
                              lambda: self.api.networks(filters=self.filters))
        if listed is not None:
            names = {n["Id"]: n.get("Name") or n["Id"][:12] for n in listed}
            report.networks += self._remove("network", names, self.api.remove_network, report)

    def _volumes(self, report: SweepReport) -> None:
        listed = self._listed("volume", report, lambda: self.api.volumes(filters=self.filters))
        if listed is not None:
            names = {v["Name"]: v["Name"] for v in (listed or {}).get("Volumes") or ()}
            report.volumes += self._remove(
                "volume", names, lambda n: self.api.remove_volume(n, force=True), report)

    def _listed(self, kind: str, report: SweepReport, listing: Callable[[], object]):
        """What `listing` returns (empty when nothing is there), or None, noted in the
        report, when the engine would not list them."""
        try:
            return self._call(listing) or ()
        except _Failed as failed:
            report.leftovers.append(Leftover(kind, "(every labelled one)",
                                             f"could not list them: {failed.reason}"))
            return None

    def _remove(self, kind: str, names: dict[str, str], remove: Callable[[str], object],
                report: SweepReport) -> int:
        """Remove each of `names` ({id: name}); how many went. The rest are leftovers."""
        removed = 0
        for ident, failure in self._each(names, remove):
            if failure:
                report.leftovers.append(Leftover(kind, names[ident], failure))
            else:
                removed += 1
        return removed

    # -- calls -----------------------------------------------------------------------------

    def _left(self) -> float:
        return self.deadline - self.clock()

    def _call(self, action: Callable[[], object]) -> object:
        """`action()` with retries; NotFound counts as done (someone removed it first)."""
        reason = ""
        for attempt in range(self.attempts):
            if self._left() <= 0:
                ran_out = f"the {self.budget:.0f} s budget ran out"
                raise _Failed(f"{reason}; then {ran_out}" if reason else f"not tried: {ran_out}")
            try:
                return action()
            except docker.errors.NotFound:
                return None
            except (docker.errors.DockerException,
                    requests.exceptions.RequestException) as exc:
                reason = describe(exc, self.call_timeout)
                if not _retriable(exc):
                    raise _Failed(reason) from None
            except Exception as exc:  # noqa: BLE001 - whatever else the client raises is
                raise _Failed(describe(exc)) from None  # a reason to report, not a traceback
            if attempt + 1 < self.attempts:
                self.sleep(min(self.backoff[min(attempt, len(self.backoff) - 1)],
                               max(self._left(), 0)))
        raise _Failed(f"{reason} ({self.attempts} tries)")

    def _each(self, items: Iterable[str], act: Callable[[str], object]
              ) -> list[tuple[str, str | None]]:
        """Run `act(item)` for every item on a bounded pool; (item, why it failed or None).

        Items still waiting or running when the budget runs out are reported as such."""
        items = list(items)
        if not items:
            return []
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(self.workers, len(items)),
                                                     thread_name_prefix="sweep")
        futures = {pool.submit(self._call, lambda i=item: act(i)): item for item in items}
        done, _ = concurrent.futures.wait(futures, timeout=max(self._left(), 0) + 1)
        pool.shutdown(wait=False, cancel_futures=True)
        results = []
        for future, item in futures.items():
            if future not in done:
                results.append((item, f"no answer before the {self.budget:.0f} s budget ran "
                                      f"out"))
                continue
            try:
                future.result()
                results.append((item, None))
            except _Failed as failed:
                results.append((item, failed.reason))
        return results


def _container_name(summary: dict) -> str:
    names = summary.get("Names") or []
    return names[0].lstrip("/") if names else summary["Id"][:12]
