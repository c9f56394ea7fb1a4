"""Test doubles for the host side: `FakeRuntime`, a Runtime that keeps its machines in memory.

It is a real implementation of the `Runtime` interface, not a Mock: signals, stop, start,
pause and unpause change each machine's state the way the Docker engine would, `exec`
records every (container, argv) and answers 0 unless a test scripts a failure, and `clean`
empties everything. No Docker engine is involved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pytest

from distlab.commands import Result
from distlab.errors import CommandFailed, UnknownMachine
from distlab.machine import Machine
from distlab.runtime.base import CleanReport, MachineInfo, Runtime
from nodes.common.auth import Credential


def machine_info(name: str, *, lab: str = "kv", role: str | None = None, state: str = "running",
                 address: str | None = None, grpc_endpoint: str | None = None) -> MachineInfo:
    """A MachineInfo named like Compose names it: machine kv-2 is container distlab-kv-2."""
    service, _, index = name.rpartition("-")
    return MachineInfo(
        name=name, container=f"distlab-{name}", lab=lab, role=role or service,
        service=service, state=state, health="healthy" if state == "running" else "-",
        addresses=(address or f"172.20.0.{10 + int(index)}",), grpc_endpoint=grpc_endpoint)


@dataclass
class ScriptedFailure:
    text: str  # fail any argv with an element containing this text
    container: str | None  # only in this container (None: anywhere)
    returncode: int
    output: str


class FakeRuntime(Runtime):
    def __init__(self, infos: Sequence[MachineInfo] = ()) -> None:
        self.infos: dict[str, MachineInfo] = {i.container: i for i in infos}
        self.execs: list[tuple[str, tuple[str, ...]]] = []  # every (container, argv) run
        self.failed: set[int] = set()  # indexes in `execs` of those that exited non-zero
        self.files: dict[tuple[str, str], bytes] = {}
        self.ups: list[tuple[tuple[str, ...], dict[str, int]]] = []
        self.environments: list[dict[str, str]] = []  # each up's `environment`
        self.signals: list[tuple[str, str]] = []
        self.volumes = 0
        self.networks = 0
        self._failures: list[ScriptedFailure] = []

    # -- scripting -------------------------------------------------------------------------

    def fail(self, text: str, *, container: str | None = None, returncode: int = 1,
             output: str = "iptables: failed") -> None:
        """Make every exec whose argv mentions `text` exit `returncode` with `output`."""
        self._failures.append(ScriptedFailure(text, container, returncode, output))

    def state(self, container: str) -> str:
        return self._get(container).state

    def execs_in(self, container: str, *, succeeded: bool = False) -> list[tuple[str, ...]]:
        """The argvs run in `container`, in order; with succeeded=True only those that exited 0."""
        return [argv for index, (where, argv) in enumerate(self.execs)
                if where == container and not (succeeded and index in self.failed)]

    # -- the Runtime interface -------------------------------------------------------------

    def up(self, profiles, scale, *, on_line: Callable[[str], None] | None = None,
           environment=None) -> None:
        self.ups.append((tuple(profiles), dict(scale)))
        self.environments.append(dict(environment or {}))

    def down(self) -> CleanReport:
        report = CleanReport(len(self.infos), self.networks, 0)
        self.infos.clear()
        self.networks = 0
        return report

    def machines(self) -> list[MachineInfo]:
        return list(self.infos.values())

    def signal(self, container: str, signal: str) -> None:
        self.signals.append((container, signal))
        if signal in ("SIGKILL", "KILL", "9"):
            self._set(container, "exited")

    def stop(self, container: str, timeout: float) -> None:
        self._set(container, "exited")

    def start(self, container: str) -> None:
        self._set(container, "running")

    def restart(self, container: str, timeout: float) -> None:
        self._set(container, "running")

    def remove(self, container: str) -> None:
        self._get(container)
        del self.infos[container]

    def pause(self, container: str) -> None:
        self._set(container, "paused")

    def unpause(self, container: str) -> None:
        self._set(container, "running")

    def exec(self, container: str, argv: Sequence[str], *, user: str = "root",
             timeout: float = 30.0, check: bool = True) -> Result:
        self._get(container)
        key = tuple(argv)
        self.execs.append((container, key))
        for failure in self._failures:
            if failure.container in (None, container) and \
                    any(failure.text in part for part in key):
                self.failed.add(len(self.execs) - 1)
                if check:
                    raise CommandFailed(list(key), failure.returncode, failure.output,
                                        where=container)
                return Result(key, failure.returncode, failure.output)
        return Result(key, 0, "")

    def logs(self, container: str, tail: int) -> str:
        self._get(container)
        return ""

    def put_file(self, container: str, path: str, content: bytes) -> None:
        self._get(container)
        self.files[(container, path)] = content

    def clean(self) -> CleanReport:
        report = CleanReport(len(self.infos), self.networks, self.volumes)
        self.infos.clear()
        self.files.clear()
        self.networks = self.volumes = 0
        return report

    # -- state -----------------------------------------------------------------------------

    def _get(self, container: str) -> MachineInfo:
        try:
            return self.infos[container]
        except KeyError:
            raise UnknownMachine(f"no container {container!r}") from None

    def _set(self, container: str, state: str) -> None:
        info = self._get(container)
        self.infos[container] = replace(info, state=state,
                                        health="healthy" if state == "running" else "-")


@pytest.fixture
def kv_lab() -> FakeRuntime:
    """The default lab as `distlab up` leaves it: kv-1..kv-3 running, plus prometheus."""
    return FakeRuntime([machine_info("kv-1"), machine_info("kv-2"), machine_info("kv-3"),
                        machine_info("prometheus-1", lab="common", role="prometheus",
                                     address="172.20.0.2")])


@pytest.fixture
def make_info() -> Callable[..., MachineInfo]:
    return machine_info


@pytest.fixture
def make_runtime() -> Callable[..., FakeRuntime]:
    return FakeRuntime


@pytest.fixture
def machines_of() -> Callable[[Runtime], Callable[[], list[Machine]]]:
    """What the Testbed gives the nemesis: a function listing the runtime's machines now."""
    def of(runtime: Runtime, credential: Credential | None = None
           ) -> Callable[[], list[Machine]]:
        return lambda: [Machine(runtime, info, credential=credential)
                        for info in runtime.machines()]
    return of
