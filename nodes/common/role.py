"""What a role plugs into the node contract.

A role (kv, switch, chord, ...) is a `RoleSpec`: its name, its own settings,
the methods only lab machines may call, and a `build` function that receives
the node's `NodeContext` and returns a `RoleNode`: the gRPC services it adds
plus its status and snapshot hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from nodes.common.auth import Credential
from nodes.common.channel import Channels
from nodes.common.config import Setting
from nodes.common.faults import FaultRules
from nodes.common.logs import EventLog
from nodes.common.metrics import NodeMetrics


class RoleError(Exception):
    """A role hook refused a request; the message is shown to the caller."""


@dataclass
class NodeContext:
    """Everything a role may use; built once per node by the server bootstrap."""

    name: str
    role: str
    config: dict[str, Any]
    registry: CollectorRegistry
    metrics: NodeMetrics
    log: EventLog
    rules: FaultRules
    channels: Channels
    #: The lab credential (None: this node has none). For calls to protected methods on
    #: channels the node makes itself; `channels` already present it.
    credential: Credential | None = None
    #: Marks every service of the node NOT_SERVING in grpc.health until it is restarted,
    #: with the reason (logged): for a role that can no longer do its work (a stopped log),
    #: so health checkers (the data-master, the switch) route around it.
    set_not_serving: Callable[[str], None] = lambda reason: None

    @property
    def data_dir(self) -> Path:
        """This machine's own directory under DATA_DIR.

        Scaled replicas of a service share one volume; a directory per machine
        name keeps their state apart and finds it again after a restart.
        """
        return Path(self.config["DATA_DIR"]) / self.name


@dataclass(frozen=True)
class ServerMode:
    """How a role wants its gRPC server run.

    workers: threads running RPC handlers (None: the WORKERS setting). In
      asyncio mode they run only the plain-function handlers (Control, health);
      coroutine handlers run on the event loop.
    asyncio: serve with grpc.aio on an event loop thread.
    reuse_port: set SO_REUSEPORT, so processes serving the same port share it
      (the kernel spreads connections among them).
    max_concurrent_rpcs: the role's default for MAX_CONCURRENT_RPCS (None: one
      call per thread, which is what a thread-pool server can work on at once).
    reserved_threads: threads beyond the limit, so health checks, Control and
      refusals never wait behind the role's work (0: they wait their turn).
    """

    workers: int | None = None
    asyncio: bool = False
    reuse_port: bool = False
    max_concurrent_rpcs: int | None = None
    reserved_threads: int = 4


class RoleNode:
    """The hooks the node contract calls; a role overrides what it has."""

    #: How the node serves this role: the default is a thread pool of WORKERS threads.
    server_mode: ServerMode = ServerMode()

    #: Full names of the services `register` adds, for health and reflection.
    service_names: tuple[str, ...] = ()
    #: False when the role answers reflection itself (the switch does, listing
    #: only the services it forwards), so the node must not register its own.
    serves_own_reflection: bool = True

    def register(self, server: grpc.Server) -> None:
        raise NotImplementedError

    def serving(self, grpc_port: int) -> None:
        """Called once the server answers on `grpc_port`: start background work here."""

    def status(self) -> dict[str, str]:
        return {}

    def reconfigure(self, settings: dict[str, str]) -> dict[str, str]:
        """Apply run-time settings and return them all; RoleError refuses the change."""
        raise RoleError("this role has no run-time settings")

    def snapshot(self) -> bytes:
        raise RoleError("this role has no state to snapshot")

    def restore(self, state: bytes) -> None:
        raise RoleError("this role has no state to restore")

    def close(self) -> None:
        """Called once after the server stopped serving: flush and release."""


@dataclass(frozen=True)
class RoleSpec:
    """A role as the node bootstrap sees it.

    protected: full method names ("/pkg.Service/Method", see
      `nodes.common.auth.service_methods`) of this role's services that only lab
      machines and the host call: they need the lab credential. Control's methods
      always do; everything else the node serves stays open.
    credential_from: see the field.
    """

    name: str
    summary: str
    settings: tuple[Setting, ...]
    build: Callable[[NodeContext], RoleNode]
    protected: frozenset[str] = frozenset()
    #: Where the node's credential comes from instead of the lab's file (CREDENTIAL_FILE):
    #: given the settings, the credential. A serverless instance runs a user's code, so it
    #: holds a token of its own that opens only itself, never the lab's.
    credential_from: Callable[[dict[str, Any]], Credential] | None = None
