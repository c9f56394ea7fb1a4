"""ComposeRuntime: machines are Compose services on this host's Docker engine.

Compose v2 (`docker compose`, through the command runner) brings labs up and
down; the Docker SDK reads and acts on containers. Everything is found by
the `distlab.lab` label, so `clean` works even after a crash: `clean` and the
end of `down` are the sweep (distlab.runtime.sweep), which finishes and
reports on a drowning engine too. Listings are sparse (one request, no
per-container inspect), so polling a 64-machine lab stays cheap.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from distlab import credential
from distlab.commands import Result, Runner
from distlab.errors import (
    CommandFailed,
    CommandTimeout,
    EngineUnavailable,
    UnknownMachine,
    UsageError,
)
from distlab.runtime import sweep
from distlab.runtime.base import GRPC_PORT, CleanReport, MachineInfo, Runtime, file_archive

LAB_LABEL = "distlab.lab"
ROLE_LABEL = "distlab.role"
CONTRACT_LABEL = "distlab.contract"  # "none": the machine does not keep the node contract
EPHEMERAL_LABEL = "distlab.ephemeral"  # "true": made and removed by its lab, not by Compose
PROJECT = "distlab"
IMAGES_ENV = Path(".distlab") / "images.env"  # written by scripts/images.sh
# `docker compose down` stops every container in parallel with a 10 s grace, then removes
# them: past this it is stuck on a drowning engine, and the sweep takes over.
COMPOSE_DOWN_SECONDS = 120.0
# Docker's own failures (requests' timeouts and lost connections come through docker-py
# unwrapped): every one becomes EngineUnavailable with a plain reason, never a traceback.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
NEIGHBOUR_LIMIT = Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3")


def neighbour_limit() -> int:
    """This host's ARP table limit, shared by every container on it (0: cannot read)."""
    try:
        return int(NEIGHBOUR_LIMIT.read_text())
    except (OSError, ValueError):
        return 0


def read_images_env(root: Path) -> dict[str, str]:
    """The image choices `make images` made (DISTLAB_*_IMAGE), or {} before it ran."""
    path = root / IMAGES_ENV
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


class ComposeRuntime(Runtime):
    def __init__(self, root: Path, *, runner: Runner | None = None,
                 engine_api: Callable[[], sweep.EngineAPI] | None = None,
                 sweep_options: dict | None = None) -> None:
        self.root = root
        self.compose_file = root / "compose.yaml"
        self.images_env = root / IMAGES_ENV
        self.runner = runner or Runner()
        self._docker: docker.DockerClient | None = None
        self._engine_api = engine_api or _sweep_client
        self._sweep_options = sweep_options or {}  # tests: a clock and a sleep of their own

    @property
    def docker(self) -> docker.DockerClient:
        if self._docker is None:
            try:
                self._docker = docker.from_env(version="auto", timeout=60)
            except docker.errors.DockerException as exc:
                raise EngineUnavailable(f"no Docker engine answers: {exc}") from None
        return self._docker

    def compose_argv(self, *args: str) -> list[str]:
        # compose.yaml names the lab credential's file as a secret, and Compose refuses a
        # project whose secret file is missing: make it before any compose command.
        credential.ensure(self.root)
        argv = ["docker", "compose", "--project-name", PROJECT, "-f", str(self.compose_file),
                "--project-directory", str(self.root)]
        if self.images_env.exists():
            argv += ["--env-file", str(self.images_env)]
        return argv + list(args)

    def up(self, profiles: Sequence[str], scale: dict[str, int], *,
           on_line: Callable[[str], None] | None = None,
           environment: Mapping[str, str] | None = None,
           placement: Mapping[str, str] | None = None) -> None:
        if placement:
            raise UsageError("--place needs several hosts: this engine is one",
                             hint="`distlab up LAB --runtime swarm --place ...` on a cluster "
                                  "(docs/cluster.md)")
        args = [arg for profile in profiles for arg in ("--profile", profile)]
        args += ["up", "--detach", "--no-build", "--pull", "never", "--quiet-pull"]
        for service, count in scale.items():
            args += ["--scale", f"{service}={count}"]
        # Compose reads ${VARIABLE}s from its own environment first (before --env-file); a
        # machine whose configuration changes with them is created again.
        env = {**os.environ, **environment} if environment else None
        self.runner.run(self.compose_argv(*args), timeout=600, on_line=on_line, env=env)

    def down(self) -> CleanReport:
        """Compose down (every profile, so no lab's machines are left running), then the
        sweep for whatever it left; named volumes are kept for the next `up`."""
        notes = []
        started = time.monotonic()
        try:
            self.runner.run(self.compose_argv("--profile", "*", "down", "--timeout", "10",
                                              "--remove-orphans"), timeout=COMPOSE_DOWN_SECONDS)
        except (CommandFailed, CommandTimeout) as exc:
            notes.append(f"docker compose down: {exc}; removing by label instead")
        # One budget for the whole of `down`; the sweep always gets a minute of it.
        left = max(sweep.BUDGET_SECONDS - (time.monotonic() - started), 60.0)
        report = self._sweep(volumes=False, budget=left)
        return CleanReport(report.containers, report.networks, report.volumes,
                           tuple(map(str, report.leftovers)), tuple(notes + report.notes))

    def machines(self) -> list[MachineInfo]:
        try:
            summaries = self.docker.api.containers(all=True, filters={"label": LAB_LABEL})
        except ENGINE_ERRORS as exc:
            raise EngineUnavailable(
                f"cannot list containers: {sweep.describe(exc, self.docker.api.timeout)}"
            ) from None
        return sorted((machine_info(s) for s in summaries), key=_machine_order)

    def resources(self) -> tuple[int, int, int]:
        """The engine's CPUs and memory (`docker info` NCPU, MemTotal) and, when the engine
        runs on this host, the kernel's ARP table limit (0 when it is elsewhere)."""
        try:
            info = self.docker.api.info()
        except ENGINE_ERRORS as exc:
            raise EngineUnavailable(
                f"cannot read docker info: {sweep.describe(exc, self.docker.api.timeout)}"
            ) from None
        local = self.docker.api.base_url.startswith("http+docker://")  # the unix socket
        return (int(info.get("NCPU") or 0), int(info.get("MemTotal") or 0),
                neighbour_limit() if local else 0)

    def _container(self, name: str):
        try:
            return self.docker.containers.get(name)
        except docker.errors.NotFound:
            raise UnknownMachine(f"no container {name!r}") from None
        except ENGINE_ERRORS as exc:
            raise EngineUnavailable(f"cannot inspect {name}: "
                                    f"{sweep.describe(exc, self.docker.api.timeout)}") from None

    def signal(self, container: str, signal: str) -> None:
        self._act(container, "signal", lambda c: c.kill(signal=signal))

    def stop(self, container: str, timeout: float) -> None:
        self._act(container, "stop", lambda c: c.stop(timeout=int(timeout)))

    def start(self, container: str) -> None:
        self._act(container, "start", lambda c: c.start())

    def restart(self, container: str, timeout: float) -> None:
        self._act(container, "restart", lambda c: c.restart(timeout=int(timeout)))

    def remove(self, container: str) -> None:
        self._act(container, "rm", lambda c: c.remove(force=True))

    def pause(self, container: str) -> None:
        self._act(container, "pause", lambda c: c.pause())

    def unpause(self, container: str) -> None:
        self._act(container, "unpause", lambda c: c.unpause())

    def _act(self, container: str, verb: str, action: Callable) -> None:
        try:
            action(self._container(container))
        except docker.errors.APIError as exc:
            raise CommandFailed(["docker", verb, container], 1,
                                exc.explanation or str(exc), where=container) from None
        except ENGINE_ERRORS as exc:  # a timeout: the engine may still do it (indefinite)
            raise CommandTimeout(f"`docker {verb} {container}`: "
                                 f"{sweep.describe(exc, self.docker.api.timeout)}") from None

    def exec(self, container: str, argv: Sequence[str], *, user: str = "root",
             timeout: float = 30.0, check: bool = True) -> Result:
        result = self.runner.run(["docker", "exec", "--user", user, container, *argv],
                                 timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise CommandFailed(list(argv), result.returncode, result.output, where=container)
        return result

    def logs(self, container: str, tail: int) -> str:
        return self._container(container).logs(tail=tail).decode(errors="replace")

    def put_file(self, container: str, path: str, content: bytes) -> None:
        directory, archive = file_archive(path, content)
        if not self._container(container).put_archive(directory, archive):
            raise CommandFailed(["put_archive", path], 1, "the engine refused the file",
                                where=container)

    def clean(self) -> CleanReport:
        """Every labelled container (with its anonymous volumes), network and volume."""
        report = self._sweep(volumes=True)
        return CleanReport(report.containers, report.networks, report.volumes,
                           tuple(map(str, report.leftovers)), tuple(report.notes))

    def _sweep(self, *, volumes: bool, budget: float = sweep.BUDGET_SECONDS
               ) -> sweep.SweepReport:
        options = {"budget": budget, **self._sweep_options}
        return sweep.Sweep(self._engine_api(), LAB_LABEL, **options).run(volumes=volumes)


def _sweep_client() -> sweep.EngineAPI:
    """A low-level client for the sweep: a loaded engine's timeout, a pool per worker.

    The API version is negotiated (the engine here speaks 1.41, newer ones refuse
    anything that old), which is itself a call that may time out: tried like the rest."""
    reason = ""
    for attempt in range(sweep.ATTEMPTS):
        try:
            return docker.APIClient(version="auto", timeout=sweep.CALL_TIMEOUT_SECONDS,
                                    max_pool_size=sweep.WORKERS,
                                    **docker.utils.kwargs_from_env())
        except ENGINE_ERRORS as exc:
            reason = str(exc)
        if attempt + 1 < sweep.ATTEMPTS:
            time.sleep(sweep.BACKOFF_SECONDS[min(attempt, len(sweep.BACKOFF_SECONDS) - 1)])
    raise EngineUnavailable(f"no Docker engine answers: {reason}")


def machine_info(summary: dict) -> MachineInfo:
    """A machine from one entry of a sparse container listing (`GET /containers/json`).

    The listing has no health field before API 1.52: it is read from the status text
    ("Up 2 minutes (healthy)", "(unhealthy)", "(health: starting)")."""
    labels = summary.get("Labels") or {}
    status = summary.get("State") or "unknown"
    health = (summary.get("Health") or {}).get("Status") or _health_of(summary.get("Status"))
    networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
    addresses = tuple(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))
    gateways = tuple(n["Gateway"] for n in networks.values() if n.get("Gateway"))
    endpoint = next((f"127.0.0.1:{p['PublicPort']}" for p in summary.get("Ports") or ()
                     if p.get("PrivatePort") == GRPC_PORT and p.get("PublicPort")
                     and p.get("Type", "tcp") == "tcp"
                     and p.get("IP") in ("127.0.0.1", "", None)), None)
    names = summary.get("Names") or [summary.get("Id", "")[:12]]
    name = names[0].lstrip("/")
    short = name[len(PROJECT) + 1:] if name.startswith(PROJECT + "-") else name
    return MachineInfo(
        name=short, container=name, lab=labels.get(LAB_LABEL, ""),
        role=labels.get(ROLE_LABEL, ""),
        service=labels.get("com.docker.compose.service", short),
        state=status, health=health, addresses=addresses,
        grpc_endpoint=endpoint if status == "running" else None, gateways=gateways,
        contract=labels.get(CONTRACT_LABEL) != "none",
        ephemeral=labels.get(EPHEMERAL_LABEL) == "true")


def _health_of(status_text: str | None) -> str:
    text = status_text or ""
    for marker, health in (("(health: starting)", "starting"), ("(unhealthy)", "unhealthy"),
                           ("(healthy)", "healthy")):
        if marker in text:
            return health
    return "-"


def _machine_order(info: MachineInfo) -> tuple:
    service, _, index = info.name.rpartition("-")
    return (info.lab == "common", service, int(index) if index.isdigit() else 0, info.name)
