"""The vm role's gRPC adapters: the VM data plane and the Migration service.

Thin around `VirtualMachine` (nodes.vm.machine) and the migration driver
(nodes.vm.transfer): validate, translate refusals into gRPC statuses, and
report. Migrate runs the migration in a thread of its own and streams its
progress; the migration goes on if the caller stops listening.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import grpc
from prometheus_client import Counter, Gauge, Histogram

from nodes.common.auth import service_methods
from nodes.common.config import ConfigError
from nodes.common.interceptors import MOVED_METADATA_KEY
from nodes.common.role import NodeContext, RoleNode
from nodes.rpc import kv_pb2, kv_pb2_grpc, vm_pb2, vm_pb2_grpc
from nodes.vm.guest import GuestLayout, KVFull
from nodes.vm.kvservice import VmKV
from nodes.vm.machine import KV_GUEST, GuestSettings, VirtualMachine, VmRefused
from nodes.vm.memory import MIB, PAGE_SIZE, PageError
from nodes.vm.strategies import PreCopyLimits, Strategy
from nodes.vm.transfer import POST_COPY_NEEDS_PAGES, Incoming, MigrationPlan, Outgoing

VM_SERVICE = vm_pb2.DESCRIPTOR.services_by_name["VM"].full_name
KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name
MIGRATION_SERVICE = vm_pb2.DESCRIPTOR.services_by_name["Migration"].full_name
PROTECTED = service_methods(vm_pb2.DESCRIPTOR.services_by_name["Migration"])
PROGRESS_SECONDS = 0.2


def _abort(context, exc: Exception) -> None:
    if isinstance(exc, VmRefused):
        if exc.moved_to:  # a switch in front holds the call and sends it to the new home
            context.set_trailing_metadata(((MOVED_METADATA_KEY, exc.moved_to),))
        context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def guest_from(config) -> GuestSettings:
    """The guest VM_* settings describe."""
    if config["VM_GUEST"] == KV_GUEST:
        return GuestSettings.kv()
    pages = int(config["VM_IMAGE_MIB"] * MIB) // PAGE_SIZE
    kv_pages = config["VM_KV_PAGES"]
    if not 0 <= kv_pages < pages:
        raise ConfigError(f"VM_KV_PAGES={kv_pages} leaves no guest pages in an image "
                          f"of {pages} pages (VM_IMAGE_MIB={config['VM_IMAGE_MIB']})")
    return GuestSettings(
        GuestLayout(pages=pages, kv_pages=kv_pages,
                    hot_pages=min(config["VM_HOT_PAGES"], pages - kv_pages),
                    hot_fraction=config["VM_HOT_FRACTION"], seed=config["VM_GUEST_SEED"]),
        dirty_rate=config["VM_DIRTY_RATE"], steps=config["VM_GUEST_STEPS"])


class VmNode(RoleNode, vm_pb2_grpc.VMServicer, vm_pb2_grpc.MigrationServicer):
    service_names = (VM_SERVICE, KV_SERVICE, MIGRATION_SERVICE)

    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        self._ctx = ctx
        self._log = ctx.log
        # An incoming vm process gets its guest with the migration.
        guest = None if config["VM_INCOMING"] else guest_from(config)
        self.vm = VirtualMachine(guest=guest, hold_seconds=config["VM_HOLD_SECONDS"],
                                 fault_timeout=config["VM_FAULT_TIMEOUT_SECONDS"],
                                 on_event=ctx.log.info)
        self._limits = PreCopyLimits(min_rate=config["VM_MIN_RATE_MIB"] * MIB,
                                     max_rate=config["VM_MAX_RATE_MIB"] * MIB,
                                     rate_increment=config["VM_RATE_INCREMENT_MIB"] * MIB,
                                     max_rounds=config["VM_MAX_ROUNDS"])
        self._max_incoming_pages = int(config["VM_INCOMING_MAX_MIB"] * MIB) // PAGE_SIZE
        self._migration: Outgoing | None = None
        self._migration_lock = threading.Lock()
        registry = ctx.registry
        Gauge("distlab_vm_image_bytes", "Size of this vm's memory image (0: none here).",
              registry=registry).set_function(
            lambda: self.vm.image.size_bytes if self.vm.image is not None else 0)
        Gauge("distlab_vm_guest_steps", "Guest steps (page writes) run so far.",
              registry=registry).set_function(lambda: self.vm.guest_step)
        # Read at each scrape from the running (or last) migration.
        for name, help_text, field in (
                ("distlab_vm_migration_round", "Round of the running migration.", "round"),
                ("distlab_vm_migration_pages_left",
                 "Pages the running migration has still to send.", "pages_left"),
                ("distlab_vm_migration_dirty_pages_per_second",
                 "Pages dirtied per second in the last pre-copy round.",
                 "dirty_pages_per_second"),
                ("distlab_vm_migration_transfer_bytes_per_second",
                 "Page bytes per second the running migration has sent.", "bytes_per_second")):
            Gauge(name, help_text, registry=registry).set_function(
                lambda field=field: self._progress_value(field))
        self._sent = Counter("distlab_vm_migration_sent_bytes_total",
                             "Page bytes sent by migrations from this vm.", registry=registry)
        self._downtime = Histogram("distlab_vm_migration_downtime_seconds",
                                   "From pausing the guest to the destination owning the vm.",
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5,
                                            10, 30), registry=registry)
        self._migrations = Counter("distlab_vm_migrations_total", "Migrations from this vm.",
                                   ["strategy", "outcome"], registry=registry)

    def register(self, server: grpc.Server) -> None:
        vm_pb2_grpc.add_VMServicer_to_server(self, server)
        vm_pb2_grpc.add_MigrationServicer_to_server(self, server)
        kv_pb2_grpc.add_KVServicer_to_server(VmKV(self._call), server)

    def serving(self, grpc_port: int) -> None:
        self.vm.start_guest()

    def close(self) -> None:
        self.vm.stop()

    def status(self) -> dict[str, str]:
        vm = self.vm
        state = {"state": vm.state, "guest_step": str(vm.guest_step),
                 "pages": str(vm.image.pages if vm.image is not None else 0)}
        if vm.guest is not None:
            state["guest"] = vm.guest.kind
        if vm.moved_to:
            state["moved_to"] = vm.moved_to
        return state

    # -- the data plane --------------------------------------------------------------
    def _call(self, context, operation):
        try:
            return self.vm.call(operation)
        except (VmRefused, PageError, ValueError) as exc:
            _abort(context, exc)
        except KVFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    def ReadPage(self, request, context):
        length = request.length or (PAGE_SIZE - request.offset if request.offset < PAGE_SIZE
                                    else 0)
        data = self._call(context, lambda vm: vm.read(request.page, request.offset, length))
        return vm_pb2.ReadPageReply(data=data)

    def WritePage(self, request, context):
        if not request.data:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "data must not be empty")
        self._call(context, lambda vm: vm.write(request.page, request.offset, request.data))
        return vm_pb2.WritePageReply()

    def Put(self, request, context):
        self._call(context, lambda vm: vm.kv().put(request.key, request.value))
        return vm_pb2.PutReply()

    def Get(self, request, context):
        value = self._call(context, lambda vm: vm.kv().get(request.key))
        return vm_pb2.GetReply(found=value is not None, value=value or b"")

    # -- migration -------------------------------------------------------------------
    def _plan(self, request, context) -> MigrationPlan:
        destination = request.destination
        host, _, port = destination.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"destination {destination!r} must be host:port")
        try:
            socket.getaddrinfo(host, int(port))
        except OSError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no machine named {host!r}")
        try:
            strategy = Strategy.named(request.strategy or "pre-copy")
            limits = PreCopyLimits(
                min_rate=request.min_rate or self._limits.min_rate,
                max_rate=request.max_rate or self._limits.max_rate,
                rate_increment=request.rate_increment or self._limits.rate_increment,
                max_rounds=request.max_rounds or self._limits.max_rounds)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if strategy is Strategy.POST_COPY and self.vm.image is not None and self.vm.image.sparse:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, POST_COPY_NEEDS_PAGES)
        config = self._ctx.config
        return MigrationPlan(destination, strategy, limits, config["VM_CHUNK_PAGES"],
                             config["VM_MIGRATION_TIMEOUT_SECONDS"])

    def Migrate(self, request, context):
        plan = self._plan(request, context)
        with self._migration_lock:
            try:
                self.vm.begin_outgoing(plan.destination)
            except VmRefused as exc:
                _abort(context, exc)
            channel = self._ctx.channels.get(plan.destination, peer=plan.destination)
            migration = Outgoing(self.vm, self._ctx.name, plan,
                                 vm_pb2_grpc.MigrationStub(channel).Transfer, self._log)
            self._migration = migration
        self._log.info("migration_started", destination=plan.destination,
                       strategy=plan.strategy.value)
        threading.Thread(target=migration.run, args=(self._count,), name="migration",
                         daemon=True).start()
        while not migration.finished.is_set():
            migration.phase_changed.wait(PROGRESS_SECONDS)
            migration.phase_changed.clear()
            if not migration.finished.is_set():
                yield migration.progress()
        if migration.error is not None:
            context.abort(migration.error.code, str(migration.error))
        yield migration.progress()

    def _count(self, migration: Outgoing) -> None:
        strategy = migration.plan.strategy.value
        if migration.result is not None:
            self._sent.inc(migration.result.bytes_sent)
            self._downtime.observe(migration.result.downtime_seconds)
            self._migrations.labels(strategy=strategy, outcome="done").inc()
        else:
            self._migrations.labels(strategy=strategy, outcome="failed").inc()
            self._log.warning("migration_failed", destination=migration.plan.destination,
                              code=migration.error.code.name, problem=str(migration.error))

    def _progress_value(self, field: str) -> float:
        migration = self._migration
        if migration is None or migration.finished.is_set():
            return 0.0
        return float(getattr(migration.progress(), field))

    def Transfer(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("body") != "begin":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a transfer starts with begin")
        incoming = Incoming(self.vm, self._ctx.name, self._max_incoming_pages, self._log)
        try:
            strategy = incoming.accept(first.begin)
        except VmRefused as exc:
            _abort(context, exc)
        self._log.info("migration_incoming", source=first.begin.source_node,
                       strategy=strategy.value, pages=first.begin.pages)
        threading.Thread(target=incoming.consume, args=(request_iterator,),
                         name="transfer-in", daemon=True).start()
        for reply in incoming.replies():
            if isinstance(reply, VmRefused):
                _abort(context, reply)
            yield reply

    def Status(self, request, context):
        vm = self.vm
        migration = self._migration
        # With a checksum, the step and the image are read together: the guest writes
        # under `cpu`, so the image is exactly the one `guest_step` steps produce.
        with vm.cpu if request.checksum else contextlib.nullcontext():
            reply = vm_pb2.VmStatus(state=vm.state, pages=vm.image.pages if vm.image else 0,
                                    guest_step=vm.guest_step, moved_to=vm.moved_to,
                                    pages_missing=vm.pages_missing(),
                                    guest=vm.guest.kind if vm.guest else "")
            if vm.guest is not None and vm.store() is not None:
                reply.keys = len(vm.store())
            if request.checksum and vm.image is not None:
                reply.checksum = vm.image.checksum()
        if migration is not None:
            reply.migration.CopyFrom(migration.progress())
            if migration.result is not None:
                reply.last_result.CopyFrom(migration.result)
            if migration.error is not None:
                reply.last_error = str(migration.error)
        elif vm.dropped:
            reply.last_error = f"an incoming transfer broke off: {vm.dropped}"
        return reply

