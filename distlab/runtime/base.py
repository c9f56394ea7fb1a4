"""The Runtime interface: what the Testbed needs from a place that runs machines.

Docker Compose on this host is the first backend; Docker Swarm and SSH hosts
(Fabric) can follow without changing the Testbed or any scenario.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from distlab.commands import Result
from distlab.errors import UsageError

GRPC_PORT = 50051  # every node's gRPC server, inside its machine (the node contract)
# Where the common machines publish their web ports (compose.yaml reads the same variables).
PROMETHEUS_PORT = int(os.environ.get("DISTLAB_PROMETHEUS_PORT", "9090"))
GRAFANA_PORT = int(os.environ.get("DISTLAB_GRAFANA_PORT", "3000"))


@dataclass(frozen=True)
class MachineInfo:
    name: str  # "kv-2": what users type and see
    container: str  # "distlab-kv-2"
    lab: str
    role: str
    service: str
    state: str  # running, paused, exited, restarting, created
    health: str  # healthy, unhealthy, starting, or "-" when the machine has no health check
    addresses: tuple[str, ...]  # on the lab networks
    grpc_endpoint: str | None  # host:port published on 127.0.0.1, when running
    # The host's own address on each of those networks (the bridge gateway): where a
    # host-side server is reachable from the lab's containers and from nowhere else.
    gateways: tuple[str, ...] = ()
    # False for a machine that does not keep the node contract (a real BitTorrent client):
    # no gRPC admin, no metrics port, so nothing asks it for either.
    contract: bool = True
    # True for a machine its lab makes and removes by itself (a serverless instance): a
    # kill or stop is its end, the lab replaces it, and nothing starts it again.
    ephemeral: bool = False
    # The cluster host that runs it (the swarm runtime); "" on this machine's engine.
    host: str = ""


@dataclass(frozen=True)
class CleanReport:
    """What `clean` or `down` removed, what is still there and why (empty when all went)."""

    containers: int
    networks: int
    volumes: int
    leftovers: tuple[str, ...] = ()  # "container distlab-chord-5: the engine did not ..."
    notes: tuple[str, ...] = ()  # trouble met on the way that did not leave anything behind

    @property
    def complete(self) -> bool:
        return not self.leftovers


class Runtime(ABC):
    @abstractmethod
    def up(self, profiles: Sequence[str], scale: dict[str, int], *,
           on_line: Callable[[str], None] | None = None,
           environment: Mapping[str, str] | None = None,
           placement: Mapping[str, str] | None = None) -> None:
        """Start `profiles` at `scale`; `environment` fills the variables compose.yaml reads
        (a lab's `Lab.variables`) on top of the host's own; `placement` pins services to
        hosts ({"data": "host-2"}) where there are several."""

    @abstractmethod
    def down(self) -> CleanReport: ...

    @abstractmethod
    def machines(self) -> list[MachineInfo]: ...

    @abstractmethod
    def signal(self, container: str, signal: str) -> None: ...

    @abstractmethod
    def stop(self, container: str, timeout: float) -> None: ...

    @abstractmethod
    def start(self, container: str) -> None: ...

    @abstractmethod
    def restart(self, container: str, timeout: float) -> None: ...

    @abstractmethod
    def remove(self, container: str) -> None:
        """Kill the machine and delete its container (its named volumes stay)."""

    @abstractmethod
    def pause(self, container: str) -> None: ...

    @abstractmethod
    def unpause(self, container: str) -> None: ...

    @abstractmethod
    def exec(self, container: str, argv: Sequence[str], *, user: str = "root",
             timeout: float = 30.0, check: bool = True) -> Result: ...

    @abstractmethod
    def logs(self, container: str, tail: int) -> str: ...

    @abstractmethod
    def put_file(self, container: str, path: str, content: bytes) -> None: ...

    @abstractmethod
    def clean(self) -> CleanReport: ...

    def web_url(self, role: str, port: int) -> str:
        """Where the common machine of `role` (Prometheus, Grafana) answers from this
        machine at the host port it publishes: compose.yaml publishes on loopback."""
        return f"http://127.0.0.1:{port}"

    def resources(self) -> tuple[int, int, int] | None:
        """(CPUs, memory bytes, ARP table limit or 0) the machines share, or None when the
        backend cannot say."""
        return None

    # -- hosts: only a runtime over several hosts (the swarm) has them --------------------

    def hosts(self) -> list[str]:
        """The hosts machines run on, by name (host-1 ...); [] for this machine alone."""
        return []

    def stop_host(self, host: str) -> None:
        """Stop a whole host's engine: every machine on it stops, the others see it gone."""
        raise one_host_error()

    def start_host(self, host: str) -> None:
        raise one_host_error()

    def partition_host(self, host: str) -> None:
        """Cut a host off from every other host (this machine still reaches it)."""
        raise one_host_error()

    def slow_link(self, host: str, other: str, rate: str) -> None:
        """Cap what `host` sends to `other` to `rate` (tc tbf), both ways."""
        raise one_host_error()

    def heal_host(self, host: str) -> None:
        """Undo every network fault on a host (partition, slow links); start its engine."""
        raise one_host_error()


def file_archive(path: str, content: bytes) -> tuple[str, bytes]:
    """(the directory, a tar of the one file) for putting `content` at `path` in a
    container: the engine's API takes files as a tar unpacked into a directory."""
    target = PurePosixPath(path)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        entry = tarfile.TarInfo(target.name)
        entry.size, entry.mode, entry.mtime = len(content), 0o644, int(time.time())
        tar.addfile(entry, io.BytesIO(content))
    return str(target.parent), archive.getvalue()


def one_host_error() -> UsageError:
    return UsageError("host faults need several hosts: this lab runs on one engine",
                      hint="bring the lab up with `--runtime swarm` on a cluster "
                           "(docs/cluster.md)")

