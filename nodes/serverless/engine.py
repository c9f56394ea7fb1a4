"""The runner's hands on the Docker engine: function instances as containers, created,
paused, resumed and removed through the engine proxy (nodes.serverless.engineproxy) with
the Docker SDK. Every container is made the way the proxy's policy demands — the lab's
image and label, the functions network, non-root, read-only, no capability, memory, CPU
and pids limits — so a refusal here means a bug, and says which rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import docker
import docker.errors
import requests.exceptions

from nodes.common.auth import Credential
from nodes.serverless.enginepolicy import LAB_LABEL

CREDENTIAL_HEADER = "X-Distlab-Credential"
ROLE_LABEL = "distlab.role"
FUNCTION_LABEL = "distlab.function"
EPHEMERAL_LABEL = "distlab.ephemeral"  # the host's nemesis: killed, it is not started again
INSTANCE_ROLE = "serverless-instance"
CONTAINER_PREFIX = "distlab-"  # as Compose names the lab's machines: status shows `fn-...`
INSTANCE_USER = "10001"
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class EngineError(Exception):
    """The engine (or its proxy) refused or failed; the message says which and why."""


@dataclass(frozen=True)
class InstanceSpec:
    instance: str  # the controller's id; the container is CONTAINER_PREFIX + instance
    function: str  # "" for a prewarmed container
    token: str  # opens this instance's protected methods (INSTANCE_TOKEN)
    memory_bytes: int
    nano_cpus: int
    pids: int


class Engine:
    def __init__(self, url: str, credential: Credential | None, *, image: str, network: str,
                 lab: str, storage: str, timeout: float = 60.0) -> None:
        self.image, self.network, self.lab, self.storage = image, network, lab, storage
        try:
            self.client = docker.DockerClient(base_url=url, version="auto", timeout=timeout)
        except ENGINE_ERRORS as exc:
            raise EngineError(f"the engine proxy at {url} does not answer: {exc}") from None
        if credential is not None:  # the same token the node presents as gRPC metadata
            (_, token), = credential.metadata()
            self.client.api.headers[CREDENTIAL_HEADER] = token

    @staticmethod
    def container(instance: str) -> str:
        return CONTAINER_PREFIX + instance

    def start(self, spec: InstanceSpec) -> str:
        """Create and start the instance's container; returns its name."""
        name = self.container(spec.instance)
        environment = {"NODE_NAME": spec.instance, "INSTANCE_TOKEN": spec.token,
                       "FN_STORAGE": self.storage, "LOG_LEVEL": "warning"}
        labels = {LAB_LABEL: self.lab, ROLE_LABEL: INSTANCE_ROLE,
                  FUNCTION_LABEL: spec.function, EPHEMERAL_LABEL: "true"}
        try:
            container = self.client.containers.create(
                self.image, ["python", "-m", "nodes.serverless.instance"], name=name,
                user=INSTANCE_USER, environment=environment, labels=labels,
                network=self.network, read_only=True, cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"], mem_limit=spec.memory_bytes,
                memswap_limit=spec.memory_bytes, nano_cpus=spec.nano_cpus,
                pids_limit=spec.pids, detach=True)
            container.start()
        except ENGINE_ERRORS as exc:
            raise EngineError(f"could not start {name}: {_reason(exc)}") from None
        return name

    def pause(self, instance: str) -> None:
        self._call(instance, "pause")

    def unpause(self, instance: str) -> None:
        self._call(instance, "unpause")

    def remove(self, instance: str) -> None:
        try:
            self.client.api.remove_container(self.container(instance), force=True, v=True)
        except docker.errors.NotFound:
            return
        except ENGINE_ERRORS as exc:
            raise EngineError(f"could not remove {self.container(instance)}: "
                              f"{_reason(exc)}") from None

    def oom_killed(self, instance: str, *, within: float = 3.0) -> bool:
        """Whether the kernel killed the instance for exceeding its memory. Asked when a
        run's connection broke, which may be a moment before the engine sees the exit."""
        deadline = time.monotonic() + within
        while True:
            try:
                state = self.client.api.inspect_container(self.container(instance))["State"]
            except ENGINE_ERRORS:
                return False
            if state.get("OOMKilled") or not state.get("Running") \
                    or time.monotonic() > deadline:
                return bool(state.get("OOMKilled"))
            time.sleep(0.1)

    def states(self) -> dict[str, str]:
        """Every instance container of the lab, by instance id: its state (running,
        paused, exited ...). One listing: what the runner reconciles with."""
        try:
            summaries = self.client.api.containers(all=True, filters={
                "label": [f"{LAB_LABEL}={self.lab}", f"{ROLE_LABEL}={INSTANCE_ROLE}"]})
        except ENGINE_ERRORS as exc:
            raise EngineError(f"could not list the lab's instances: {_reason(exc)}") from None
        return {name.lstrip("/")[len(CONTAINER_PREFIX):]: s.get("State", "")
                for s in summaries for name in (s.get("Names") or [])[:1]}

    def _call(self, instance: str, verb: str) -> None:
        try:
            getattr(self.client.api, verb)(self.container(instance))
        except ENGINE_ERRORS as exc:
            raise EngineError(f"could not {verb} {self.container(instance)}: "
                              f"{_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)
