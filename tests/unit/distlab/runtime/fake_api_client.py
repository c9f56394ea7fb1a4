"""A fake Docker engine behind docker-py's low-level `APIClient` calls, for the sweep's tests.

Like docker-py's own tests/unit/fake_api_client.py, it answers the calls the code under
test makes, with the engine's semantics kept in memory: label filters, kill of a container
that is not running (409), removal of a running one without force (409), a network with
endpoints (403), a volume in use (409), anonymous volumes going with `v=True`, NotFound
for what is gone. Tests script trouble per call (`engine.fail(...)`): a timeout, a lost
connection, the engine's own 500, once or forever; and a clock every call advances, so
budgets are tested without waiting.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import docker.errors
import requests
import requests.exceptions

LABEL = "distlab.lab"


def api_error(status: int, message: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls(f"{status} Server Error", response=response, explanation=message)


def read_timeout() -> requests.exceptions.ReadTimeout:
    return requests.exceptions.ReadTimeout(
        "UnixHTTPConnectionPool(host='localhost', port=None): Read timed out. (read timeout=60)")


def connection_error() -> requests.exceptions.ConnectionError:
    return requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError(2))")


@dataclass
class Trouble:
    method: str
    target: str | None  # a container, network or volume name; None: every call of `method`
    error: Exception | None  # None: the call succeeds but takes `seconds`
    times: int | None  # None: forever
    seconds: float = 0.0  # how far the call moves the clock (a slow engine)
    then: Callable[[], None] | None = None  # what else happens first (someone else's call)


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeEngine:
    containers_: dict[str, dict] = field(default_factory=dict)  # id -> summary
    networks_: dict[str, dict] = field(default_factory=dict)  # id -> summary
    volumes_: dict[str, dict] = field(default_factory=dict)  # name -> summary
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, target), in order
    clock: FakeClock = field(default_factory=FakeClock)
    timeout: float = 60.0
    _troubles: list[Trouble] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- building a lab --------------------------------------------------------------------

    def add_container(self, name: str, *, lab: str = "chord", state: str = "running",
                      network: str | None = "distlab_lab", anonymous_volume: bool = True,
                      volumes: tuple[str, ...] = (), labelled: bool = True) -> str:
        ident = f"{next(self._ids):064x}"
        mounts = [*volumes]
        if anonymous_volume:  # the node image's `VOLUME /data`: no name, no label
            anonymous = f"{next(self._ids):064x}"
            self.volumes_[anonymous] = {"Name": anonymous, "Labels": None}
            mounts.append(anonymous)
        self.containers_[ident] = {
            "Id": ident, "Names": [f"/{name}"], "State": state, "Status": "Up 3 minutes",
            "Labels": {LABEL: lab} if labelled else {}, "volumes": mounts,
            "anonymous": mounts[-1:] if anonymous_volume else [], "network": network}
        return ident

    def add_network(self, name: str = "distlab_lab", *, labelled: bool = True) -> str:
        ident = f"{next(self._ids):064x}"
        self.networks_[ident] = {"Id": ident, "Name": name,
                                 "Labels": {LABEL: "common"} if labelled else {}}
        return ident

    def add_volume(self, name: str, *, lab: str = "kv") -> str:
        self.volumes_[name] = {"Name": name, "Labels": {LABEL: lab}}
        return name

    def fail(self, method: str, target: str | None = None, *,
             error: Exception | None = None, times: int | None = 1,
             seconds: float = 0.0, then: Callable[[], None] | None = None) -> None:
        """Make `method` (on `target`, else on anything) raise `error`, `times` times."""
        self._troubles.append(Trouble(method, target, error, times, seconds, then))

    def names(self) -> set[str]:
        return {c["Names"][0].lstrip("/") for c in self.containers_.values()}

    def calls_of(self, method: str) -> list[str]:
        return [target for name, target in self.calls if name == method]

    # -- the APIClient calls the sweep makes --------------------------------------------------

    def containers(self, all: bool = False, filters: dict | None = None) -> list[dict]:
        self._enter("containers", None)
        with self._lock:
            return [self._public(c) for c in self.containers_.values()
                    if _labelled(c, filters) and (all or c["State"] == "running")]

    def kill(self, container: str, signal: str | None = None) -> None:
        summary = self._container(container, "kill")
        with self._lock:
            if summary["State"] not in ("running", "restarting"):
                raise api_error(409, f"Container {container} is not running")
            summary["State"], summary["Status"] = "exited", "Exited (137) 1 second ago"

    def remove_container(self, container: str, v: bool = False, link: bool = False,
                         force: bool = False) -> None:
        summary = self._container(container, "remove_container")
        with self._lock:
            if summary["State"] != "exited" and not force:
                raise api_error(409, f"You cannot remove a {summary['State']} container")
            del self.containers_[summary["Id"]]
            if v:
                for name in summary["anonymous"]:
                    self.volumes_.pop(name, None)

    def networks(self, names=None, ids=None, filters: dict | None = None) -> list[dict]:
        self._enter("networks", None)
        with self._lock:
            return [dict(n) for n in self.networks_.values() if _labelled(n, filters)]

    def remove_network(self, net_id: str) -> None:
        network = self.networks_.get(net_id)
        self._enter("remove_network", network["Name"] if network else net_id)
        with self._lock:
            if net_id not in self.networks_:
                raise api_error(404, f"network {net_id} not found")
            if any(c["network"] == network["Name"] for c in self.containers_.values()):
                raise api_error(403, f"error while removing network: network "
                                     f"{network['Name']} id {net_id} has active endpoints")
            del self.networks_[net_id]

    def volumes(self, filters: dict | None = None) -> dict:
        self._enter("volumes", None)
        with self._lock:
            return {"Volumes": [dict(v) for v in self.volumes_.values()
                                if _labelled(v, filters)], "Warnings": None}

    def remove_volume(self, name: str, force: bool = False) -> None:
        self._enter("remove_volume", name)
        with self._lock:
            if name not in self.volumes_:
                raise api_error(404, f"get {name}: no such volume")
            if any(name in c["volumes"] for c in self.containers_.values()):
                raise api_error(409, f"remove {name}: volume is in use")
            del self.volumes_[name]

    # -- state -----------------------------------------------------------------------------

    def _container(self, ref: str, method: str) -> dict:
        with self._lock:
            summary = self.containers_.get(ref)
        self._enter(method, summary["Names"][0].lstrip("/") if summary else ref)
        with self._lock:
            if ref not in self.containers_:
                raise api_error(404, f"No such container: {ref}")
        return summary

    def _enter(self, method: str, target: str | None) -> None:
        """Record the call, move the clock, and raise the trouble scripted for it, if any."""
        with self._lock:
            self.calls.append((method, target or ""))
            for trouble in self._troubles:
                if trouble.method == method and trouble.target in (None, target) and \
                        trouble.times != 0:
                    if trouble.times is not None:
                        trouble.times -= 1
                    self.clock.now += trouble.seconds
                    if trouble.then is not None:
                        trouble.then()
                    if trouble.error is not None:
                        raise trouble.error
                    return

    @staticmethod
    def _public(summary: dict) -> dict:
        return {k: v for k, v in summary.items() if k not in ("volumes", "anonymous", "network")}


def _labelled(summary: dict, filters: dict | None) -> bool:
    wanted = (filters or {}).get("label")
    return wanted is None or wanted in (summary.get("Labels") or {})
