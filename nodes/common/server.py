"""Server bootstrap: turns a `RoleSpec` into a running node that keeps the contract.

`python -m nodes.<role>` calls `main(SPEC)`. It reads the environment (exit
2 naming the bad variable) and the lab credential (CREDENTIAL_FILE; without
it the node starts and refuses every protected call), starts /metrics, the
gRPC server with the interceptors, health, reflection and Control, the peer
heartbeat (the peer watcher, phi accrual: nodes.common.peers), and on
SIGTERM stops accepting, lets in-flight RPCs finish within GRACE_SECONDS and
exits 0. `NodeServer` is the same thing without signals,
for tests.

Protected methods (Control's and the role's `RoleSpec.protected`) need the
lab credential (nodes.common.auth); health, reflection and the rest of the
role's services stay open.

Overload: the node works on at most MAX_CONCURRENT_RPCS calls of the role's
services at once and refuses one more RESOURCE_EXHAUSTED at once
(nodes.common.interceptors.Admission), and no one method takes the last
MAX_CONCURRENT_RPCS_RESERVED places, so a flood of slow calls leaves room for
cheap ones. A thread-pool server has threads for
all of them plus `ServerMode.reserved_threads`, so health checks, Control
and the refusals themselves never queue behind the role's work.

A role may ask for another kind of server with its `server_mode`
(`ServerMode`, nodes.common.role): its own thread count and limit, SO_REUSEPORT so several
processes share the port, or asyncio mode, where a grpc.aio server runs on an event loop
thread of the node's own (see nodes.common.aio). In asyncio mode the role's
`register` runs on that loop's thread and `close` is called while the loop
still runs, so a role can make and close grpc.aio objects there.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from nodes.common import httpd
from nodes.common.aio import AioServerInterceptor, EventLoopThread
from nodes.common.auth import (
    AioCredentialInterceptor,
    Credential,
    CredentialCheck,
    CredentialError,
    CredentialInterceptor,
    service_methods,
)
from nodes.common.channel import Channels
from nodes.common.config import (
    COMMON_SETTINGS,
    ConfigError,
    default_node_name,
    describe,
    load_settings,
)
from nodes.common.control import ControlService
from nodes.common.durable import LogCorrupt
from nodes.common.faults import FaultRules
from nodes.common.interceptors import Admission, ServerInterceptor, default_reserved
from nodes.common.logs import EventLog
from nodes.common.metrics import NodeMetrics
from nodes.common.peers import Heartbeat, phi_detector
from nodes.common.role import NodeContext, RoleSpec
from nodes.rpc import control_pb2, control_pb2_grpc

VERSION = "0.1.0"
# Below the probe's own 2.5 s socket timeout and Docker's 3 s: a slow answer is reported as
# one, not as a probe that hung.
HEALTH_PROBE_TIMEOUT_SECONDS = 2.0
CONTROL_SERVICE = control_pb2.DESCRIPTOR.services_by_name["Control"].full_name
CONTROL_METHODS = service_methods(control_pb2.DESCRIPTOR.services_by_name["Control"])
# What a busy node must still answer: whether it is alive, what it is, and its operator.
UNBOUNDED_SERVICES = (health.SERVICE_NAME, CONTROL_SERVICE, reflection.SERVICE_NAME,
                      "grpc.reflection.v1.ServerReflection")


class NodeServer:
    """One node: a role behind the node contract, started and stopped explicitly."""

    def __init__(self, spec: RoleSpec, environ: Mapping[str, str]) -> None:
        self.spec = spec
        self.config = load_settings(COMMON_SETTINGS + spec.settings, environ)
        name = self.config["NODE_NAME"] or default_node_name()
        self.registry = CollectorRegistry()
        self.metrics = NodeMetrics(self.registry, node=name, role=spec.name, version=VERSION,
                                   client_peer_labels=self.config["METRICS_PEER_LABELS"])
        self.log = EventLog(name, spec.name, level=self.config["LOG_LEVEL"])
        self.rules = FaultRules()
        self.metrics.fault_rules_active.set_function(lambda: len(self.rules.active()))
        credential = self._load_credential()
        self.credential_check = CredentialCheck(credential, CONTROL_METHODS | spec.protected,
                                                self.metrics.auth_refused)
        self.channels = Channels(node=name, metrics=self.metrics, rules=self.rules,
                                 default_timeout=self.config["RPC_TIMEOUT_SECONDS"],
                                 max_message_bytes=self.config["MAX_MESSAGE_BYTES"],
                                 credential=credential)
        self._services: tuple[str, ...] = ()
        self._not_serving = ""  # why the role asked to be routed around ("" : it did not)
        self.context = NodeContext(name=name, role=spec.name, config=self.config,
                                   registry=self.registry, metrics=self.metrics, log=self.log,
                                   rules=self.rules, channels=self.channels,
                                   credential=credential, set_not_serving=self._set_not_serving)
        self.role = spec.build(self.context)
        self.heartbeat = Heartbeat(
            entries=self.config["PEERS"], port=self.config["GRPC_PORT"],
            interval=self.config["PEER_INTERVAL_SECONDS"],
            detector=phi_detector(interval=self.config["PEER_INTERVAL_SECONDS"],
                                  threshold=self.config["PEER_PHI_THRESHOLD"],
                                  acceptable_pause=self.config["PEER_ACCEPTABLE_PAUSE_SECONDS"],
                                  rise=self.config["PEER_RISE"], fall=self.config["PEER_FALL"]),
            channels=self.channels, metrics=self.metrics, log=self.log)
        # grpc.aio never tells a plain-function handler that its caller has gone, and the
        # blocking servicer's Watch waits for exactly that: each Watch would hold a thread
        # of the asyncio server for good. Its own servicer's Watch is a coroutine, which the
        # caller's going away cancels.
        self.health = (health.aio.HealthServicer() if self.role.server_mode.asyncio
                       else health.HealthServicer())
        self.grpc_port = 0
        self.metrics_port = 0
        self._server: grpc.Server | grpc.aio.Server | None = None
        self._pool: futures.ThreadPoolExecutor | None = None
        self._loop: EventLoopThread | None = None
        self._metrics_server = None
        self._health_channel: grpc.Channel | None = None

    @property
    def name(self) -> str:
        return self.context.name

    def _load_credential(self) -> Credential | None:
        """The lab credential, read once; None (and one log line, without the contents)
        when the file is missing or malformed: every protected call is then refused."""
        try:
            if self.spec.credential_from is not None:
                return self.spec.credential_from(self.config)
            return Credential.from_file(self.config["CREDENTIAL_FILE"])
        except CredentialError as exc:
            self.log.warning("credential_missing", problem=str(exc),
                             effect="every protected call is refused")
            return None

    def start(self) -> None:
        mode = self.role.server_mode
        limit = self.config["MAX_MESSAGE_BYTES"]
        options = [("grpc.max_receive_message_length", limit),
                   ("grpc.max_send_message_length", limit),
                   ("grpc.so_reuseport", int(mode.reuse_port))]
        threads = mode.workers or self.config["WORKERS"]
        limit = self.config["MAX_CONCURRENT_RPCS"] or mode.max_concurrent_rpcs or threads
        reserved = self.config["MAX_CONCURRENT_RPCS_RESERVED"]
        # -1: not set. A method always keeps one place, whatever the two settings say.
        reserved = default_reserved(limit) if reserved < 0 else min(reserved, limit - 1)
        admission = Admission(limit, UNBOUNDED_SERVICES, reserved)
        if not mode.asyncio:  # every admitted call holds a thread: there must be one for each
            threads = max(threads, admission.limit) + mode.reserved_threads
        self._pool = pool = futures.ThreadPoolExecutor(max_workers=threads,
                                                       thread_name_prefix="rpc")
        address = f"0.0.0.0:{self.config['GRPC_PORT']}"
        if mode.asyncio:
            self._loop = EventLoopThread(f"{self.name}-loop")
            self._server, services, self.grpc_port = self._loop.run(
                self._build_aio_server(pool, options, address, admission))
        else:
            self._server = grpc.server(pool, options=options, interceptors=[
                ServerInterceptor(self.metrics, self.rules, self.log, admission),
                CredentialInterceptor(self.credential_check)])
            services = self._add_services(self._server)
            self.grpc_port = self._server.add_insecure_port(address)
        self._metrics_server = httpd.start(self.config["METRICS_PORT"], self.registry,
                                           self._own_health)
        self.metrics_port = self._metrics_server.server_port
        if self._loop is not None:
            self._loop.run(self._server.start())
        else:
            self._server.start()
        self._services = services
        status = (health_pb2.HealthCheckResponse.NOT_SERVING if self._not_serving
                  else health_pb2.HealthCheckResponse.SERVING)
        for service in ("", *services):
            self._on_loop(self.health.set(service, status))
        self.heartbeat.start()
        self.role.serving(self.grpc_port)
        self.log.info("node_started", grpc_port=self.grpc_port, metrics_port=self.metrics_port,
                      services=list(services), peers=list(self.config["PEERS"]))

    def _own_health(self) -> tuple[bool, str]:
        """What this node's gRPC health service answers over loopback: the container's
        health probe (through /healthz) sees exactly what a gRPC client would."""
        if self._health_channel is None:
            self._health_channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        try:
            reply = health_pb2_grpc.HealthStub(self._health_channel).Check(
                health_pb2.HealthCheckRequest(), timeout=HEALTH_PROBE_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return reply.status == health_pb2.HealthCheckResponse.SERVING, status

    def _set_not_serving(self, reason: str) -> None:
        if not self._not_serving:
            self.log.error("node_not_serving", reason=reason)
        self._not_serving = reason
        if self._server is None:
            return  # not started yet: start() reads _not_serving
        for service in ("", *self._services):
            self._on_loop(self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING))

    async def _build_aio_server(self, pool: futures.ThreadPoolExecutor, options: list,
                                address: str, admission: Admission,
                                ) -> tuple[grpc.aio.Server, tuple[str, ...], int]:
        server = grpc.aio.server(migration_thread_pool=pool, options=options, interceptors=[
            AioServerInterceptor(self.metrics, self.rules, self.log, admission),
            AioCredentialInterceptor(self.credential_check)])
        services = self._add_services(server)
        return server, services, server.add_insecure_port(address)

    def _add_services(self, server: grpc.Server | grpc.aio.Server) -> tuple[str, ...]:
        """Add the role's services, Control, health and reflection; return the names served."""
        self.role.register(server)
        control_pb2_grpc.add_ControlServicer_to_server(
            ControlService(self.context, self.role, VERSION, self.heartbeat.peers), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        services = (*self.role.service_names, CONTROL_SERVICE)
        if self.role.serves_own_reflection:
            reflection.enable_server_reflection(
                (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        return services

    def _on_loop(self, result: Any) -> None:
        """Finish a call to the health servicer: the asyncio one's are coroutines for the
        server's loop, the blocking one's are done already."""
        if inspect.iscoroutine(result):
            self._loop.run(result)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight RPCs finish within `grace`, then release everything."""
        grace = self.config["GRACE_SECONDS"] if grace is None else grace
        self.log.info("node_stopping", grace_seconds=grace)
        self._on_loop(self.health.enter_graceful_shutdown())
        self.heartbeat.stop()
        if self._loop is not None:
            if self._server is not None:
                self._loop.run(self._server.stop(grace))
            self.role.close()
            self._loop.stop()
        else:
            if self._server is not None:
                self._server.stop(grace).wait()
            self.role.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # neither kind of grpc server shuts its pool down
        self.channels.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._health_channel is not None:
            self._health_channel.close()
        self.log.info("node_stopped")


def main(spec: RoleSpec, argv: Sequence[str] | None = None,
         environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    if argv and argv[0] in ("-h", "--help"):
        print(f"python -m nodes.{spec.name}: {spec.summary}\n")
        print(describe(COMMON_SETTINGS + spec.settings))
        return 0
    if argv:
        print(f"nodes.{spec.name}: unexpected argument {argv[0]!r}; configure with environment "
              f"variables (see --help)", file=sys.stderr)
        return 2
    try:
        node = NodeServer(spec, environ)
    except ConfigError as exc:
        print(f"nodes.{spec.name}: bad configuration: {exc}", file=sys.stderr)
        return 2
    except LogCorrupt as exc:
        print(f"nodes.{spec.name}: cannot start: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        node.start()
    except (OSError, RuntimeError) as exc:
        print(f"nodes.{spec.name}: cannot start: {exc}", file=sys.stderr)
        return 1
    # With a timeout: a signal the kernel hands to another thread (a role's HTTP server,
    # say) only runs its Python handler once this thread wakes; an endless wait never does.
    while not stopping.wait(timeout=0.5):
        pass
    node.stop()
    return 0
