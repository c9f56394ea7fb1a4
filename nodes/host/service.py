"""The Hypervisor gRPC service: vm processes started, listed, stopped and moved between hosts.

Runs `python -m nodes.vm` children (their stdout is this machine's, so their
JSON lines reach the same log; stderr goes to DATA_DIR/<host>/<vm>.stderr),
each on a port of HOST_VM_PORTS, its metrics on that port + 1000. A
migration: the destination host prepares an incoming vm process, the local
vm migrates itself there (Migration/Migrate, progress relayed), and on
success the local process is stopped; on failure the destination's incoming
process is stopped and the vm runs here as before.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodes.common.auth import service_methods
from nodes.common.config import ConfigError, own_ip
from nodes.common.peers import container_name_of
from nodes.common.role import NodeContext, RoleNode
from nodes.host.metrics import STRATEGIES, HostMetrics
from nodes.host.table import TableError, VmEntry, VmTable
from nodes.mobility.service import PROTECTED as MOBILITY_PROTECTED
from nodes.mobility.service import SERVICE_NAME as MOBILITY_SERVICE
from nodes.mobility.service import MobilityService
from nodes.rpc import control_pb2, control_pb2_grpc, vm_pb2, vm_pb2_grpc

HYPERVISOR = vm_pb2.DESCRIPTOR.services_by_name["Hypervisor"]
SERVICE_NAME = HYPERVISOR.full_name
# Code mobility's service is served beside the Hypervisor and as guarded: it runs code.
PROTECTED = service_methods(HYPERVISOR) | MOBILITY_PROTECTED
METRICS_OFFSET = 1000
# Settings a vm process gets from the hypervisor, never from the caller or this host's env.
OWN_SETTINGS = ("NODE_NAME", "GRPC_PORT", "METRICS_PORT", "PEERS", "VM_INCOMING")
# Settings a vm process gets as this host has them.
INHERITED = ("CREDENTIAL_FILE", "DATA_DIR", "LOG_LEVEL", "GRACE_SECONDS", "MAX_MESSAGE_BYTES",
             "RPC_TIMEOUT_SECONDS")
PREPARE_SECONDS = 40.0
SETTING_NAME = re.compile(r"^VM_[A-Z0-9_]{1,64}$")
SWITCH_SECONDS = 5.0  # deadline of one call to a switch
INCOMING_POLL_SECONDS = 0.5
# How long the switch holds new calls once the vm pauses: the switch caps it at its
# SWITCH_HOLD_SECONDS, and re-pointing it ends the hold sooner.
SWITCH_HOLD_SECONDS = 30.0
# Phases of a migration once the destination owns the vm (nodes.vm.transfer).
OWNED = ("committed", "done")


def parse_ports(raw: str) -> tuple[int, int]:
    first, _, last = raw.partition("-")
    return int(first), int(last or first)


def parse_pairs(raw: str, separator: str) -> dict[str, str]:
    """`vm-1@host-1,vm-2@host-2` -> {"vm-1": "host-1", ...}; ValueError says which is wrong."""
    pairs = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        left, sep, right = item.partition(separator)
        if not sep or not left or not right:
            raise ValueError(f"{item!r} is not NAME{separator}VALUE")
        pairs[left] = right
    return pairs


def _abort(context, exc: TableError) -> None:
    context.abort(getattr(grpc.StatusCode, exc.code), str(exc))


class _Refused(Exception):
    pass


class _Raise:
    """A stand-in for a call's context where no call is (booting): abort raises."""

    @staticmethod
    def abort(code: grpc.StatusCode, details: str):
        raise _Refused(f"{code.name}: {details}")


class HostNode(RoleNode, vm_pb2_grpc.HypervisorServicer):
    service_names = (SERVICE_NAME, MOBILITY_SERVICE)

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._log = ctx.log
        config = ctx.config
        try:
            self._table = VmTable(*config["HOST_VM_PORTS"])
        except ValueError as exc:
            raise ConfigError(f"HOST_VM_PORTS={config['HOST_VM_PORTS']!r}: {exc}") from None
        address = own_ip()
        self._advertise = (config["HOST_ADVERTISE"] or (address and container_name_of(address))
                           or socket.gethostname())
        self._start_seconds = config["HOST_VM_START_SECONDS"]
        self._lock = threading.Lock()
        self._migrating: dict[str, str] = {}
        self._switches: dict[str, str] = config["HOST_SWITCHES"]
        self._metrics = HostMetrics(ctx.registry, vms=lambda: len(self._table.entries))
        self._boot = sorted(vm for vm, host in config["HOST_BOOT_VMS"].items()
                            if host == ctx.name)
        self._boot_guests: dict[str, str] = config["HOST_VM_GUESTS"]
        self._mobility = MobilityService(ctx)

    def register(self, server: grpc.Server) -> None:
        vm_pb2_grpc.add_HypervisorServicer_to_server(self, server)
        self._mobility.register(server)

    def serving(self, grpc_port: int) -> None:
        self._mobility.start()
        for name in self._boot:
            self._boot_vm(name)

    def _boot_vm(self, name: str) -> None:
        """Start vm `name` with this host's VM_* settings and point its switch at it."""
        elsewhere = self._lives_elsewhere(name)
        if elsewhere:
            self._log.info("vm_not_booted", vm=name, reason=elsewhere)
            return
        guest = self._boot_guests.get(name)
        try:  # with this host's VM_* settings, and its guest when it is not one of pages
            entry = self._spawn(name, {"VM_GUEST": guest} if guest else {}, incoming=False,
                                context=_Raise())
        except _Refused as exc:
            self._log.error("vm_boot_failed", vm=name, problem=str(exc))
            return
        self._steer(name, {"backends": self._address(entry)})

    def _lives_elsewhere(self, name: str) -> str:
        """Why not to boot `name` here ("" to boot it): its switch points at another host
        whose vm serves (it moved there before this host restarted)."""
        switch = self._switches.get(name)
        if not switch:
            return ""
        try:
            status = control_pb2_grpc.ControlStub(self._ctx.channels.get(switch, switch)).Status(
                control_pb2.StatusRequest(), timeout=SWITCH_SECONDS)
        except grpc.RpcError:
            return ""  # no switch to ask: boot, as on a lab's first start
        healthy = status.state.get("backends", "0/0").split("/")[0]
        entries = status.state.get("entries", "")
        if healthy not in ("", "0") and not entries.startswith(f"{self._advertise}:"):
            return f"its switch {switch} reaches it at {entries}"
        return ""

    def status(self) -> dict[str, str]:
        with self._lock:
            state = {"vms": ",".join(sorted(self._table.entries)),
                     "migrating": ",".join(sorted(self._migrating))}
        return state | self._mobility.status()

    def close(self) -> None:
        self._mobility.close()
        with self._lock:
            entries = list(self._table.entries.values())
            self._table.entries.clear()
        for entry in entries:
            self._stop_process(entry)

    # -- vm processes ----------------------------------------------------------------
    def _environ(self, name: str, port: int, settings: dict[str, str],
                 incoming: bool) -> dict[str, str]:
        # This host's VM_* settings are the lab's defaults for every vm it starts, an
        # incoming one included (its rate limits apply to the next move); the caller's win.
        environ = {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS}
        environ.update(settings)
        # The node contract's settings as this host has them: the vm is a machine of the lab.
        config = self._ctx.config
        environ.update({key: str(config[key]) for key in INHERITED})
        environ.update(NODE_NAME=name, GRPC_PORT=str(port),
                       METRICS_PORT=str(port + METRICS_OFFSET),
                       VM_INCOMING="true" if incoming else "false")
        return environ

    def _spawn(self, name: str, settings: dict[str, str], incoming: bool, context) -> VmEntry:
        for key, value in settings.items():
            if not SETTING_NAME.match(key) or key in OWN_SETTINGS:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"setting {key[:80]!r}: a vm takes VM_* settings (capitals, "
                              f"digits and _), except VM_INCOMING")
            # An environment variable cannot hold one; found here, not as Popen's ValueError
            # after the vm's port was reserved.
            if "\0" in value:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"setting {key}: the value contains a NUL byte")
        with self._lock:
            try:
                port = self._table.reserve(name)
            except TableError as exc:
                _abort(context, exc)
            directory = self._ctx.data_dir
            directory.mkdir(parents=True, exist_ok=True)
            stderr_path = directory / f"{name}.stderr"
            with open(stderr_path, "wb") as stderr:
                process = subprocess.Popen([sys.executable, "-m", "nodes.vm"],
                                           env=self._environ(name, port, settings, incoming),
                                           stdout=None, stderr=stderr)
            entry = VmEntry(name, port, process, incoming)
            self._table.add(entry)
        problem = self._wait_serving(entry)
        if problem:
            with self._lock:
                self._table.remove(name)
            self._stop_process(entry)
            detail = stderr_path.read_text(errors="replace").strip().splitlines()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT if entry.process.returncode == 2
                          else grpc.StatusCode.UNAVAILABLE,
                          f"vm {name} did not start: {detail[-1] if detail else problem}")
        self._log.info("vm_started", vm=name, port=port, incoming=incoming, pid=process.pid)
        return entry

    def _wait_serving(self, entry: VmEntry) -> str:
        """"" once the vm answers health SERVING; else why not."""
        deadline = time.monotonic() + self._start_seconds
        with grpc.insecure_channel(f"127.0.0.1:{entry.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if entry.process.poll() is not None:
                    return f"it exited with status {entry.process.returncode}"
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return ""
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        return f"it did not answer within {self._start_seconds} s"

    def _stop_process(self, entry: VmEntry) -> None:
        process = entry.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self._ctx.config["GRACE_SECONDS"] + 5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._log.info("vm_stopped", vm=entry.name, exit_code=process.returncode)

    def _address(self, entry: VmEntry) -> str:
        return f"{self._advertise}:{entry.port}"

    def _info(self, entry: VmEntry, checksum: bool = False) -> vm_pb2.VmInfo:
        info = vm_pb2.VmInfo(name=entry.name, address=self._address(entry))
        if entry.process.poll() is not None:
            info.state = "exited"
            return info
        try:
            status = self._vm(entry).Status(vm_pb2.VmStatusRequest(checksum=checksum),
                                            timeout=30 if checksum else 2)
        except grpc.RpcError as exc:
            info.state = f"unreachable ({exc.code().name})"
            return info
        info.state, info.guest_step, info.pages = status.state, status.guest_step, status.pages
        info.checksum, info.pages_missing = status.checksum, status.pages_missing
        info.guest, info.keys = status.guest, status.keys
        return info

    def _vm(self, entry: VmEntry) -> vm_pb2_grpc.MigrationStub:
        return vm_pb2_grpc.MigrationStub(
            self._ctx.channels.get(f"127.0.0.1:{entry.port}", peer=entry.name))

    def _peer(self, address: str) -> vm_pb2_grpc.HypervisorStub:
        return vm_pb2_grpc.HypervisorStub(self._ctx.channels.get(address, peer=address))

    # -- the service -----------------------------------------------------------------
    def StartVm(self, request, context):
        entry = self._spawn(request.name, dict(request.settings), incoming=False,
                            context=context)
        self._steer(entry.name, {"backends": self._address(entry)})  # its switch finds it
        return self._info(entry)

    def PrepareIncoming(self, request, context):
        if request.from_host == self._ctx.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"vm {request.name} is on {self._ctx.name} already: a migration "
                          "goes to another host")
        entry = self._spawn(request.name, {}, incoming=True, context=context)
        threading.Thread(target=self._watch_incoming, args=(entry,), daemon=True,
                         name=f"incoming-{entry.name}").start()
        return self._info(entry)

    def _watch_incoming(self, entry: VmEntry) -> None:
        """Reap an incoming vm its source abandoned: one that went back to waiting after a
        broken transfer (the source died mid-way), or never heard from it at all. A vm
        that arrived is this host's like any other."""
        waited_until = time.monotonic() + self._ctx.config["HOST_INCOMING_WAIT_SECONDS"]
        received = False
        while True:
            time.sleep(INCOMING_POLL_SECONDS)
            with self._lock:
                if self._table.entries.get(entry.name) is not entry:
                    return  # stopped by the source's clean-up, or by StopVm
            if entry.process.poll() is not None:
                break
            try:
                status = self._vm(entry).Status(vm_pb2.VmStatusRequest(), timeout=2)
            except grpc.RpcError:
                continue
            state = status.state
            if state not in ("incoming", "receiving"):
                entry.incoming = False
                return
            # A transfer that broke off between two polls shows as the vm's last error.
            received = received or state == "receiving" or bool(status.last_error)
            if state == "incoming" and (received or time.monotonic() > waited_until):
                break
        with self._lock:
            if self._table.entries.get(entry.name) is not entry:
                return
            self._table.remove(entry.name)
        self._log.warning("vm_incoming_abandoned", vm=entry.name,
                          why="its transfer broke off" if received else "no transfer came")
        self._stop_process(entry)

    def StopVm(self, request, context):
        with self._lock:
            if request.name in self._migrating:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"vm {request.name} is migrating")
            try:
                entry = self._table.get(request.name)
            except TableError as exc:
                _abort(context, exc)
            self._table.remove(request.name)
        self._stop_process(entry)
        return vm_pb2.VmInfo(name=entry.name, state="exited")

    def ListVms(self, request, context):
        with self._lock:
            entries = list(self._table.entries.values())
        return vm_pb2.ListVmsReply(host=self._ctx.name,
                                   vms=[self._info(entry, request.checksum)
                                        for entry in entries])

    def MigrateVm(self, request, context):
        if request.strategy and request.strategy not in STRATEGIES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"strategy {request.strategy[:40]!r} is not one of "
                          f"{', '.join(STRATEGIES)}")
        host, _, port = request.to.rpartition(":")
        if not host or not port.isdigit():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"to {request.to!r} must be host:port of a hypervisor")
        try:
            socket.getaddrinfo(host, int(port))
        except OSError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no machine named {host!r}")
        with self._lock:
            try:
                entry = self._table.get(request.name)
            except TableError as exc:
                _abort(context, exc)
            if request.name in self._migrating:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"vm {request.name} is already migrating to "
                              f"{self._migrating[request.name]}")
            self._migrating[request.name] = request.to
        try:
            yield from self._migrate(entry, request, context)
        finally:
            with self._lock:
                self._migrating.pop(request.name, None)

    def _migrate(self, entry: VmEntry, request, context):
        peer = self._peer(request.to)
        try:
            target = peer.PrepareIncoming(vm_pb2.PrepareIncomingRequest(
                name=entry.name, from_host=self._ctx.name), timeout=PREPARE_SECONDS)
        except grpc.RpcError as exc:
            context.abort(exc.code(), f"host {request.to}: {exc.details()}")
        self._log.info("vm_migrating", vm=entry.name, to=request.to, address=target.address,
                       strategy=request.strategy or "pre-copy")
        migrate = vm_pb2.MigrateRequest(
            destination=target.address, strategy=request.strategy, min_rate=request.min_rate,
            max_rate=request.max_rate, rate_increment=request.rate_increment,
            max_rounds=request.max_rounds)
        holding = repointed = False
        strategy = request.strategy or "pre-copy"
        try:
            for progress in self._vm(entry).Migrate(
                    migrate, timeout=self._ctx.config["HOST_MIGRATION_TIMEOUT_SECONDS"]):
                self._metrics.progress(progress)
                if progress.HasField("result"):
                    self._metrics.finished(strategy, progress.result)
                if progress.phase == "paused" and not holding:
                    holding = self._steer(entry.name, {"hold": str(SWITCH_HOLD_SECONDS)})
                elif progress.phase in OWNED and not repointed:
                    # The destination owns the vm (post-copy: while pages are still pushed):
                    # what the switch held, and what the fenced source refused as moved,
                    # goes there now.
                    repointed = self._steer(entry.name, {"backends": target.address})
                yield progress
        except grpc.RpcError as exc:
            self._metrics.finished(strategy, None)
            if repointed:
                # Post-copy after the commit: the destination runs the vm (and says which
                # pages never came); the fenced source can serve nothing.
                with self._lock:
                    self._table.remove(entry.name)
                self._stop_process(entry)
                context.abort(exc.code(), exc.details())
            if holding:
                self._steer(entry.name, {"hold": "0"})  # the source serves on
            self._clean_up(peer, entry.name)
            context.abort(exc.code(), exc.details())
        if not repointed:  # the last message was the first to say "done"
            self._steer(entry.name, {"backends": target.address})
        with self._lock:
            self._table.remove(entry.name)
        self._stop_process(entry)
        self._log.info("vm_moved", vm=entry.name, to=request.to)

    def _steer(self, name: str, settings: dict[str, str]) -> bool:
        """Reconfigure the switch in front of vm `name` (if it has one); whether it took it."""
        switch = self._switches.get(name)
        if not switch:
            return False
        stub = control_pb2_grpc.ControlStub(self._ctx.channels.get(switch, switch))
        try:
            stub.Reconfigure(control_pb2.ReconfigureRequest(settings=settings),
                             timeout=SWITCH_SECONDS)
        except grpc.RpcError as exc:
            # Calls then wait out the switch's hold, or the vm's "moved" refusal.
            self._log.warning("switch_not_steered", vm=name, switch=switch, settings=settings,
                              code=exc.code().name, problem=exc.details())
            return False
        self._log.info("switch_steered", vm=name, switch=switch, **settings)
        return True

    def _clean_up(self, peer: vm_pb2_grpc.HypervisorStub, name: str) -> None:
        """The migration failed: stop the destination's incoming process (best effort)."""
        try:
            peer.StopVm(vm_pb2.StopVmRequest(name=name), timeout=15)
        except grpc.RpcError as exc:
            self._log.warning("vm_incoming_not_stopped", vm=name, code=exc.code().name,
                              problem=exc.details())
