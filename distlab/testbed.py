"""Testbed: the one facade scenarios and the CLI use to run labs.

`up(lab, scale)`, `down()`, `machines()`, `machine(name)`, `client(role)`,
`nemesis`, `prometheus`, and the `registry` of what each lab plugs in. A
scenario never imports docker nor shells out: it asks the Testbed, which asks
its Runtime.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc

from distlab import capacity, credential
from distlab.errors import DistlabError, UnknownMachine, UsageError
from distlab.faults.nemesis import NO_LAB, Journal, Nemesis
from distlab.labs import Catalogue, Lab, counts_at, load_catalogue
from distlab.machine import Machine
from distlab.observe import TARGETS_PATH, Prometheus, targets_document
from distlab.registry import Registry, load_registry
from distlab.runtime.base import (
    PROMETHEUS_PORT,
    CleanReport,
    MachineInfo,
    Runtime,
)
from distlab.runtime.compose import ComposeRuntime, read_images_env

PROMETHEUS_URL = f"http://127.0.0.1:{PROMETHEUS_PORT}"  # on this machine's engine


def project_root() -> Path:
    """The checkout holding compose.yaml: $DISTLAB_HOME, else where this package lives."""
    explicit = os.environ.get("DISTLAB_HOME")
    root = Path(explicit) if explicit else Path(__file__).resolve().parents[1]
    if not (root / "compose.yaml").exists():
        raise DistlabError(f"no compose.yaml in {root}",
                           hint="set DISTLAB_HOME to your distlab checkout")
    return root


RUNTIME_CHOICE = Path(".distlab") / "runtime"  # "swarm" while a lab runs on the cluster
RUNTIMES = ("compose", "swarm")


def chosen_runtime(root: Path) -> str:
    """The runtime `distlab up --runtime` last chose for this checkout (compose if none)."""
    path = root / RUNTIME_CHOICE
    return path.read_text().strip() if path.exists() else "compose"


def choose_runtime(root: Path, name: str) -> None:
    if name not in RUNTIMES:
        raise UsageError(f"no runtime {name!r}", hint=f"runtimes: {', '.join(RUNTIMES)}")
    path = root / RUNTIME_CHOICE
    if name == "compose":
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name + "\n")


def make_runtime(root: Path, name: str | None = None) -> Runtime:
    if (name or chosen_runtime(root)) == "swarm":
        from distlab.runtime.swarm import SwarmRuntime  # Fabric, only when it is used

        return SwarmRuntime(root)
    return ComposeRuntime(root)


class Testbed:
    def __init__(self, runtime: Runtime | None = None, *, root: Path | None = None,
                 registry: Registry | None = None) -> None:
        self.root = root or project_root()
        self.runtime = runtime or make_runtime(self.root)
        self.catalogue: Catalogue = load_catalogue(self.root / "compose.yaml")
        self.registry = registry or load_registry()
        self.nemesis = Nemesis(self.machines, Journal(self.root / ".distlab" / "faults.json"),
                               runtime=self.runtime)

    @functools.cached_property
    def prometheus(self) -> Prometheus:
        """The lab's Prometheus, where the runtime runs it (asked once: on a swarm that
        means listing the hosts' machines)."""
        return Prometheus(self.runtime.web_url("prometheus", PROMETHEUS_PORT))

    # -- lifecycle ------------------------------------------------------------------------

    def grafana_image(self) -> str:
        return read_images_env(self.root).get("DISTLAB_GRAFANA_IMAGE", "")

    def up(self, lab: str | None = None, scale: list[str] | None = None, *,
           timeout: float = 180.0, on_line: Callable[[str], None] | None = None,
           on_wait: Callable[[list[MachineInfo]], None] | None = None,
           environment: Mapping[str, str] | None = None,
           placement: Mapping[str, str] | None = None) -> Lab:
        """Start `lab` (default lab if None) and wait until every machine is healthy;
        `environment` sets variables the lab's services read (`Lab.variables`)."""
        chosen = self.catalogue.lab(lab)
        counts = self.catalogue.parse_scale(chosen, scale or [])
        unknown = sorted(set(environment or {}) - set(chosen.variables))
        if unknown:
            raise UsageError(f"the {chosen.name} lab's services read no variable "
                             f"{', '.join(unknown)}",
                             hint=f"they read: {', '.join(chosen.variables) or 'none'}")
        profiles = [chosen.name] + (["grafana"] if self.grafana_image() else [])
        self._remove_above(chosen, counts)
        self.runtime.up(profiles, counts, on_line=on_line, environment=environment,
                        **({"placement": placement} if placement else {}))
        self.wait_healthy(chosen, timeout=timeout, on_wait=on_wait)
        self.sync_targets()
        return chosen

    def _remove_above(self, lab: Lab, counts: Mapping[str, int]) -> None:
        """Machines are `<service>-1..N`, but Compose, scaling a service down, removes
        whichever containers it likes (of leecher-1..8 scaled to 3 it kept leecher-3, -4
        and -6): the machines numbered above the new count go first, so it has none to
        choose from."""
        wanted = counts_at(lab, counts)
        for info in self.runtime.machines():
            number = info.name.rpartition("-")[2]
            if info.service in wanted and number.isdigit() and int(number) > wanted[info.service]:
                self.runtime.remove(info.container)

    def capacity(self, lab: str | None, scale: list[str] | None = None
                 ) -> capacity.Estimate | None:
        """What `lab` at `scale` needs against what the engine has (None: cannot tell)."""
        chosen = self.catalogue.lab(lab)
        counts = counts_at(chosen, self.catalogue.parse_scale(chosen, scale or []))
        counts.update({s: 1 for s in self.catalogue.common_services})
        if self.grafana_image():
            counts["grafana"] = 1
        have = self.runtime.resources()
        if not have or not all(have[:2]):
            return None
        return capacity.estimate(counts, chosen.roles,
                                 capacity.load_resources(self.root / "compose.yaml"),
                                 capacity.Engine(*have))

    def wait_healthy(self, lab: Lab, *, timeout: float,
                     on_wait: Callable[[list[MachineInfo]], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        wanted = set(lab.services) | set(self.catalogue.common_services)
        while True:
            infos = [m for m in self.runtime.machines() if m.service in wanted]
            if on_wait:
                on_wait(infos)
            if infos and all(_ready(m) for m in infos):
                return
            if time.monotonic() > deadline:
                late = [f"{m.name} ({m.state}/{m.health})" for m in infos if not _ready(m)]
                raise DistlabError(f"not healthy after {timeout:.0f} s: {', '.join(late)}",
                                   hint="see `distlab logs MACHINE`")
            time.sleep(0.5)

    def down(self) -> CleanReport:
        return self.runtime.down()

    def clean(self) -> CleanReport:
        """Remove everything labelled; the fault journal and the lab credential go too,
        unless machines are left (then `distlab heal` and the tools still work on them)."""
        report = self.runtime.clean()
        if report.complete:
            journal = self.nemesis.journal.path
            if journal.exists():
                journal.unlink()
            credential.remove(self.root)
        return report

    # -- machines -------------------------------------------------------------------------

    def machines(self) -> list[Machine]:
        token = credential.read(self.root)
        return [Machine(self.runtime, info, credential=token)
                for info in self.runtime.machines()]

    def machine(self, name: str) -> Machine:
        machines = self.machines()
        for machine in machines:
            if name in (machine.name, machine.container):
                return machine
        names = ", ".join(m.name for m in machines) or NO_LAB
        raise UnknownMachine(f"no machine {name!r}", hint=f"machines: {names}")

    def client(self, role: str) -> grpc.Channel:
        """A channel from the host to a running machine of `role` (the first healthy one).

        Its calls present the lab credential: the host is the lab's operator, and a lab's
        entry role may be protected (the mapreduce master). A switch strips it before it
        forwards a call."""
        for machine in self.machines():
            if machine.info.role == role and machine.info.grpc_endpoint and \
                    machine.info.health in ("healthy", "-"):
                return machine.protected_channel()
        raise DistlabError(f"no healthy machine has role {role!r}")

    def sync_targets(self) -> None:
        """Rewrite Prometheus' target list from the machines that exist now."""
        infos = self.runtime.machines()
        self.write_targets(TARGETS_PATH, targets_document(infos), infos)

    def write_targets(self, path: str, document: bytes,
                      infos: list[MachineInfo] | None = None) -> bool:
        """Put a file_sd target file into the Prometheus machine; False when none runs."""
        infos = self.runtime.machines() if infos is None else infos
        prometheus = next((m for m in infos if m.role == "prometheus" and m.state == "running"),
                          None)
        if prometheus is None:
            return False
        self.runtime.put_file(prometheus.container, path, document)
        return True


def _ready(info: MachineInfo) -> bool:
    return info.state == "running" and info.health in ("healthy", "-")
