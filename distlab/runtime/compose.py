"""ComposeRuntime: machines are Compose services on this host's Docker engine.

Compose v2 (`docker compose`, through the command runner) brings labs up and
down; the Docker SDK reads and acts on containers. Everything is found by
the `distlab.lab` label, so `clean` works even after a crash.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import docker
import docker.errors

from distlab import credential
from distlab.commands import Result, Runner
from distlab.errors import CommandFailed, EngineUnavailable, UnknownMachine
from distlab.runtime.base import GRPC_PORT, CleanReport, MachineInfo, Runtime

LAB_LABEL = "distlab.lab"
ROLE_LABEL = "distlab.role"
CONTRACT_LABEL = "distlab.contract"  # "none": the machine does not keep the node contract
PROJECT = "distlab"
IMAGES_ENV = Path(".distlab") / "images.env"  # written by scripts/images.sh


def read_images_env(root: Path) -> dict[str, str]:
    """The image choices `make images` made (DISTLAB_*_IMAGE), or {} before it ran."""
    path = root / IMAGES_ENV
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


class ComposeRuntime(Runtime):
    def __init__(self, root: Path, *, runner: Runner | None = None) -> None:
        self.root = root
        self.compose_file = root / "compose.yaml"
        self.images_env = root / IMAGES_ENV
        self.runner = runner or Runner()
        self._docker: docker.DockerClient | None = None

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
           on_line: Callable[[str], None] | None = None) -> None:
        args = [arg for profile in profiles for arg in ("--profile", profile)]
        args += ["up", "--detach", "--no-build", "--pull", "never", "--quiet-pull"]
        for service, count in scale.items():
            args += ["--scale", f"{service}={count}"]
        self.runner.run(self.compose_argv(*args), timeout=600, on_line=on_line)

    def down(self) -> None:
        # Every profile, so no lab's machines are left running.
        profiles = ["--profile", "*"]
        self.runner.run(self.compose_argv(*profiles, "down", "--timeout", "10",
                                          "--remove-orphans"), timeout=300)

    def machines(self) -> list[MachineInfo]:
        try:
            containers = self.docker.containers.list(all=True, filters={"label": LAB_LABEL})
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"cannot list containers: {exc}") from None
        return sorted((self._info(c) for c in containers), key=_machine_order)

    def _container(self, name: str):
        try:
            return self.docker.containers.get(name)
        except docker.errors.NotFound:
            raise UnknownMachine(f"no container {name!r}") from None

    def signal(self, container: str, signal: str) -> None:
        self._act(container, "signal", lambda c: c.kill(signal=signal))

    def stop(self, container: str, timeout: float) -> None:
        self._act(container, "stop", lambda c: c.stop(timeout=int(timeout)))

    def start(self, container: str) -> None:
        self._act(container, "start", lambda c: c.start())

    def restart(self, container: str, timeout: float) -> None:
        self._act(container, "restart", lambda c: c.restart(timeout=int(timeout)))

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
        target = PurePosixPath(path)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            entry = tarfile.TarInfo(target.name)
            entry.size, entry.mode, entry.mtime = len(content), 0o644, int(time.time())
            tar.addfile(entry, io.BytesIO(content))
        if not self._container(container).put_archive(str(target.parent), archive.getvalue()):
            raise CommandFailed(["put_archive", path], 1, "the engine refused the file",
                                where=container)

    def clean(self) -> CleanReport:
        client = self.docker
        label = {"label": LAB_LABEL}
        containers = client.containers.list(all=True, filters=label)
        for container in containers:
            container.remove(force=True, v=False)
        networks = client.networks.list(filters=label)
        for network in networks:
            network.remove()
        volumes = client.volumes.list(filters=label)
        for volume in volumes:
            volume.remove(force=True)
        return CleanReport(len(containers), len(networks), len(volumes))

    @staticmethod
    def _info(container) -> MachineInfo:
        attrs = container.attrs
        labels = attrs["Config"].get("Labels") or {}
        state = attrs["State"]
        status = "paused" if state.get("Paused") else state.get("Status", "unknown")
        health = (state.get("Health") or {}).get("Status", "-")
        networks = attrs["NetworkSettings"].get("Networks") or {}
        addresses = tuple(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))
        gateways = tuple(n["Gateway"] for n in networks.values() if n.get("Gateway"))
        published = (attrs["NetworkSettings"].get("Ports") or {}).get(f"{GRPC_PORT}/tcp") or []
        endpoint = next((f"127.0.0.1:{p['HostPort']}" for p in published
                         if p.get("HostIp") in ("127.0.0.1", "")), None)
        name = container.name
        short = name[len(PROJECT) + 1:] if name.startswith(PROJECT + "-") else name
        return MachineInfo(
            name=short, container=name, lab=labels.get(LAB_LABEL, ""),
            role=labels.get(ROLE_LABEL, ""),
            service=labels.get("com.docker.compose.service", short),
            state=status, health=health, addresses=addresses,
            grpc_endpoint=endpoint if status == "running" else None, gateways=gateways,
            contract=labels.get(CONTRACT_LABEL) != "none")


def _machine_order(info: MachineInfo) -> tuple:
    service, _, index = info.name.rpartition("-")
    return (info.lab == "common", service, int(index) if index.isdigit() else 0, info.name)
