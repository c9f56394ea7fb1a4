"""Machine: a handle on one machine of a lab, for scenarios, the nemesis and the CLI.

Every action goes through the runtime, so the same handle works on any backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from distlab.commands import Result
from distlab.control import ControlClient
from distlab.errors import DistlabError
from distlab.runtime.base import GRPC_PORT, MachineInfo, Runtime
from nodes.common.auth import Credential, with_credential


class Machine:
    def __init__(self, runtime: Runtime, info: MachineInfo, *,
                 credential: Credential | None = None) -> None:
        self._runtime = runtime
        self.info = info
        self._credential = credential

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def container(self) -> str:
        return self.info.container

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, {self.info.state})"

    def refresh(self) -> Machine:
        for info in self._runtime.machines():
            if info.container == self.container:
                self.info = info
        return self

    def exec(self, argv: Sequence[str], *, user: str = "root", timeout: float = 30.0,
             check: bool = True) -> Result:
        return self._runtime.exec(self.container, argv, user=user, timeout=timeout, check=check)

    def kill(self, signal: str = "SIGKILL") -> None:
        self._runtime.signal(self.container, signal)

    def stop(self, timeout: float = 10.0) -> None:
        self._runtime.stop(self.container, timeout)

    def start(self) -> None:
        self._runtime.start(self.container)

    def restart(self, timeout: float = 10.0) -> None:
        self._runtime.restart(self.container, timeout)

    def remove(self) -> None:
        """Kill the machine and delete its container; its named volumes stay."""
        self._runtime.remove(self.container)

    def pause(self) -> None:
        self._runtime.pause(self.container)

    def resume(self) -> None:
        self._runtime.unpause(self.container)

    def logs(self, tail: int = 100) -> str:
        return self._runtime.logs(self.container, tail)

    @property
    def address(self) -> str:
        """host:port other machines use to reach this one's gRPC server."""
        return f"{self.container}:{GRPC_PORT}"

    def endpoint(self) -> str:
        """host:port of this machine's published gRPC port, as of `info`.

        The port changes when the machine restarts: call `refresh()` first after one.
        """
        endpoint = self.info.grpc_endpoint
        if endpoint is None:
            raise DistlabError(f"machine {self.name} is {self.info.state}: no gRPC endpoint",
                               hint=f"distlab chaos start {self.name}")
        return endpoint

    def channel(self) -> grpc.Channel:
        """A channel from the host to this machine's data-plane services."""
        return grpc.insecure_channel(self.endpoint())

    def protected_channel(self) -> grpc.Channel:
        """A channel whose calls present the lab credential: for a role's protected services
        (the peers' PeerStatus, say) that are not Control."""
        return with_credential(self.channel(), self._credential)

    def control(self) -> ControlClient:
        """This machine's Control service, with the lab credential: `with m.control() as c:`."""
        return ControlClient(self.name, self.endpoint(), self._credential)
