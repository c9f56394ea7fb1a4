"""The app role: the Bank service's gRPC adapters over the bank core, in four architectures.

`BankNode` is the role; `BlockingBank` and `AsyncBank` are its servicers,
thin adapters that run the core's operations (nodes.app.bank) through a
driver (nodes.app.drivers), count outcomes and turn `BankError` into a
status. APP_ARCHITECTURE picks how calls are served, for the textbook
question "which one is more resource efficient?":

- iterative: one call at a time. The node has ONE RPC thread, shared by the
  Bank, Control and health services: while a Work call runs, a health check
  or a Control.Status waits its turn, and so does the next call (none is
  refused). That is what iterative means (and why a long Work can make the
  machine look unhealthy).
- threaded (default): APP_WORKERS threads; a call waiting for the data tier
  or in Work's wait holds its thread. One more call than APP_WORKERS (or
  MAX_CONCURRENT_RPCS) is refused RESOURCE_EXHAUSTED at once, while health
  and Control keep threads of their own.
- async: a grpc.aio server; Bank calls are coroutines on one event loop using
  AsyncDataClient, so waiting holds no thread, but Work's CPU part stops
  every other call. Control keeps its blocking servicer and runs in
  APP_WORKERS threads beside the loop (nodes.common.aio); health is grpc.aio's
  own servicer, on the loop, so a Watch holds no thread. It takes up to
  MAX_CONCURRENT_RPCS calls at once (default 256).
- process: APP_PROCESSES processes share the port (nodes.app.processes), each
  a threaded node: CPU work runs on several cores at once.

The node also serves `distlab.kv.KV` (`BlockingKV`, `AsyncKV`) over the
registers core (nodes.app.registers): keys under "kv/" in the data tier, for
the register workload's linearizability checks.

The servicers touch nothing but the core, the data-tier client and the
metrics; the only state of an app server is its Statement cursors.

Idempotency records expire: a key is remembered APP_IDEMPOTENCY_WINDOW_SECONDS
(default 300; every reply of Deposit and Transfer states it, and so does
Control.Status) from the request's issued_at (see nodes.app.bank for why that
is safe). A sweeper thread deletes expired records every
APP_IDEMPOTENCY_SWEEP_SECONDS, at most APP_IDEMPOTENCY_SWEEP_RECORDS a pass,
so the data tier holds about one window's worth of them. Statement history
is bounded too: each account keeps its newest APP_BANK_HISTORY_LINES lines
(default 1000; see nodes.app.bank).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from nodes.app.bank import (
    DEFAULT_HISTORY_LINES,
    DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
    Bank,
    BankError,
    Limits,
    Operation,
)
from nodes.app.cursors import CursorTable
from nodes.app.drivers import run, run_async
from nodes.app.registers import Registers
from nodes.app.work import burn_cpu, check_work
from nodes.common.config import ConfigError, Setting, non_negative, one_of, positive
from nodes.common.role import NodeContext, RoleNode, RoleSpec, ServerMode
from nodes.data.client import AsyncDataClient, DataClient, DataUnavailable
from nodes.rpc import bank_pb2, bank_pb2_grpc, kv_pb2, kv_pb2_grpc

SERVICE_NAME = bank_pb2.DESCRIPTOR.services_by_name["Bank"].full_name
KV_SERVICE_NAME = kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name
ARCHITECTURES = ("iterative", "threaded", "async", "process")
TRANSFER_RESULTS = ("committed", "replayed", "rejected", "failed", "unknown")
MAX_PROCESSES = 64
ASYNC_MAX_CONCURRENT_RPCS = 256
STATUS_TIMEOUT_SECONDS = 2.0
# Refusals of the request itself; every other error left the transfer undone for the
# bank's own reasons (data tier down, contention), or its outcome unknown.
REJECTIONS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)


def at_most(cap: int):
    def check(value: int) -> str | None:
        return None if 1 <= value <= cap else f"must be 1-{cap}"

    return check


SETTINGS = (
    Setting("DATA_MASTER", str, "data-master:50051",
            "host:port of the data tier's master (nodes.datamaster), which names the chain"),
    Setting("APP_ARCHITECTURE", str, "threaded",
            "how calls are served: iterative (one at a time, on the one thread Control and "
            "health share too), threaded (APP_WORKERS threads), async (one asyncio event "
            "loop; Control on APP_WORKERS threads), process (APP_PROCESSES "
            "threaded processes on one port; a Control call reaches one of them)",
            one_of(*ARCHITECTURES)),
    Setting("APP_WORKERS", int, 16,
            "threads of the threaded architecture (per process in process), and of async's "
            "pool for Control; this role's WORKERS (iterative has 1)", positive),
    Setting("APP_PROCESSES", int, 2, "worker processes of the process architecture",
            at_most(MAX_PROCESSES)),
    Setting("APP_DATA_ATTEMPTS", int, 4,
            "tries of each data-tier call (the client's own retries) before it gives up",
            positive),
    Setting("APP_TXN_ATTEMPTS", int, 8,
            "reads and Txns a write tries while other writers keep changing its accounts "
            "(then ABORTED)", positive),
    Setting("APP_UNKNOWN_RESENDS", int, 2,
            "resends of a Txn whose answer was lost before the caller is told the outcome "
            "is unknown", non_negative),
    Setting("APP_MAX_BALANCE_CENTS", int, 10**15,
            "largest balance (and amount) in cents; with APP_AUDIT_MAX_ACCOUNTS its product "
            "must fit int64, so an audit's total does", positive),
    Setting("APP_AUDIT_MAX_ACCOUNTS", int, 5000,
            "most accounts an Audit reads (in one data-tier Read; at most the data tier's "
            "read limit); more is FAILED_PRECONDITION", positive),
    Setting("APP_CURSORS", int, 10_000,
            "Statement cursors kept open; one more forgets the least recently used", positive),
    Setting("APP_CURSOR_IDLE_SECONDS", float, 300.0,
            "a Statement cursor unused this long is forgotten", positive),
    Setting("APP_BANK_HISTORY_LINES", int, DEFAULT_HISTORY_LINES,
            "statement lines kept per account: the write adding a line deletes the one that "
            "falls out; a Statement page asked to start before the oldest kept line starts "
            "there; the same on every app server, and never raised on a live bank", positive),
    Setting("APP_IDEMPOTENCY_WINDOW_SECONDS", float, DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
            "how long after a Deposit or Transfer was first issued (its issued_at_unix_ms) "
            "a retry of it is answered; an older one is refused FAILED_PRECONDITION, and its "
            "record is deleted a minute later; the same on every app server", positive),
    Setting("APP_IDEMPOTENCY_SWEEP_SECONDS", float, 2.0,
            "how often this server deletes expired idempotency records", positive),
    Setting("APP_IDEMPOTENCY_SWEEP_RECORDS", int, 512,
            "most idempotency records one sweep deletes (at most the data tier's "
            "DATA_MAX_READ_LIMIT)", positive),
    Setting("APP_IDEMPOTENCY_SWEEP_TXN_RECORDS", int, 32,
            "records deleted per data-tier Txn (4 operations each: at most a quarter of "
            "DATA_MAX_TXN_OPS)", positive),
)


def limits_from(config: dict[str, Any]) -> Limits:
    limits = Limits(max_balance_cents=config["APP_MAX_BALANCE_CENTS"],
                    max_audit_accounts=config["APP_AUDIT_MAX_ACCOUNTS"],
                    txn_attempts=config["APP_TXN_ATTEMPTS"],
                    unknown_resends=config["APP_UNKNOWN_RESENDS"],
                    idempotency_window_seconds=config["APP_IDEMPOTENCY_WINDOW_SECONDS"],
                    history_lines=config["APP_BANK_HISTORY_LINES"])
    if limits.complaint():
        raise ConfigError(f"APP_MAX_BALANCE_CENTS={limits.max_balance_cents} x "
                          f"APP_AUDIT_MAX_ACCOUNTS={limits.max_audit_accounts} exceeds int64: "
                          f"an audit's total could overflow")
    return limits


def server_mode_for(architecture: str, workers: int) -> ServerMode:
    if architecture == "iterative":
        # One thread for everything, health included, and no refusals: that is the lesson.
        return ServerMode(workers=1, reserved_threads=0)
    if architecture == "async":
        # Waiting holds no thread here, so the limit is well above the pool's size.
        return ServerMode(workers=workers, asyncio=True,
                          max_concurrent_rpcs=ASYNC_MAX_CONCURRENT_RPCS)
    return ServerMode(workers=workers, reuse_port=architecture == "process")


class BankMetrics:
    """The app role's metrics, on the node's registry."""

    def __init__(self, registry: CollectorRegistry, architecture: str) -> None:
        self.transfers = Counter(
            "distlab_bank_transfers_total",
            "Transfers by result: committed; replayed (a repeated idempotency key); rejected "
            "(bad input, unknown account, overdraft, key reused); failed (not applied: data "
            "tier down or contention); unknown (the data tier may have applied it).",
            ["result"], registry=registry)
        for result in TRANSFER_RESULTS:
            self.transfers.labels(result=result)
        self.conflicts = Counter(
            "distlab_bank_txn_conflicts_total",
            "Data-tier Txns whose compares failed (another writer came first), so the write "
            "re-read and tried again.", ["operation"], registry=registry)
        self.cursors_open = Gauge("distlab_bank_cursors_open",
                                  "Stateful Statement cursors this app server holds.",
                                  registry=registry)
        self.work_seconds = Counter(
            "distlab_app_work_seconds_total",
            "Synthetic Work done, by kind: cpu (CPU time burned) or io (time waited).",
            ["kind"], registry=registry)
        self.idempotency_swept = Counter(
            "distlab_bank_idempotency_swept_total",
            "Idempotency records this server deleted after their window (and grace) passed.",
            registry=registry)
        self.architecture = Gauge("distlab_app_architecture_info",
                                  "Always 1; the label says how this app server serves calls.",
                                  ["architecture"], registry=registry)
        self.architecture.labels(architecture=architecture).set(1)

    def transfer_answered(self, reply: bank_pb2.TransferReply) -> None:
        self.transfers.labels(result="replayed" if reply.replayed else "committed").inc()

    def transfer_refused(self, error: BankError) -> None:
        if error.outcome_unknown:
            result = "unknown"
        else:
            result = "rejected" if error.code in REJECTIONS else "failed"
        self.transfers.labels(result=result).inc()


class BlockingServicer:
    """Runs a core's operations with the blocking driver: each call holds its thread
    throughout, and a BankError becomes the call's status."""

    def __init__(self, client: DataClient, *, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    def _run(self, operation: Operation[Any], context: grpc.ServicerContext,
             on_refused: Callable[[BankError], None] | None = None) -> Any:
        try:
            return run(operation, self._client, timeout=self._timeout,
                       time_remaining=context.time_remaining)
        except BankError as error:
            if on_refused is not None:
                on_refused(error)
            context.abort(error.code, error.message)


class AsyncServicer:
    """Runs a core's operations as coroutines on a grpc.aio server's event loop."""

    def __init__(self, client: AsyncDataClient, *, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def _run(self, operation: Operation[Any], context: grpc.aio.ServicerContext,
                   on_refused: Callable[[BankError], None] | None = None) -> Any:
        try:
            return await run_async(operation, self._client, timeout=self._timeout,
                                   time_remaining=context.time_remaining)
        except BankError as error:
            if on_refused is not None:
                on_refused(error)
            await context.abort(error.code, error.message)


class BlockingBank(BlockingServicer, bank_pb2_grpc.BankServicer):
    """The Bank service for a thread-pool server."""

    def __init__(self, bank: Bank, client: DataClient, metrics: BankMetrics, *,
                 timeout: float) -> None:
        super().__init__(client, timeout=timeout)
        self._bank = bank
        self._metrics = metrics

    def OpenAccount(self, request, context):
        return self._run(self._bank.open_account(request), context)

    def Deposit(self, request, context):
        return self._run(self._bank.deposit(request), context)

    def Transfer(self, request, context):
        reply = self._run(self._bank.transfer(request), context, self._metrics.transfer_refused)
        self._metrics.transfer_answered(reply)
        return reply

    def Balance(self, request, context):
        return self._run(self._bank.balance(request), context)

    def Audit(self, request, context):
        return self._run(self._bank.audit(request), context)

    def Statement(self, request, context):
        return self._run(self._bank.statement(request), context)

    def Work(self, request, context):
        try:
            cpu_seconds, io_seconds = check_work(request)
        except BankError as error:
            context.abort(error.code, error.message)
        self._metrics.work_seconds.labels(kind="cpu").inc(burn_cpu(cpu_seconds))
        time.sleep(io_seconds)
        self._metrics.work_seconds.labels(kind="io").inc(io_seconds)
        return bank_pb2.WorkReply(served_by=self._bank.served_by)


class AsyncBank(AsyncServicer, bank_pb2_grpc.BankServicer):
    """The Bank service as coroutines on a grpc.aio server's event loop."""

    def __init__(self, bank: Bank, client: AsyncDataClient, metrics: BankMetrics, *,
                 timeout: float) -> None:
        super().__init__(client, timeout=timeout)
        self._bank = bank
        self._metrics = metrics

    async def OpenAccount(self, request, context):
        return await self._run(self._bank.open_account(request), context)

    async def Deposit(self, request, context):
        return await self._run(self._bank.deposit(request), context)

    async def Transfer(self, request, context):
        reply = await self._run(self._bank.transfer(request), context,
                                self._metrics.transfer_refused)
        self._metrics.transfer_answered(reply)
        return reply

    async def Balance(self, request, context):
        return await self._run(self._bank.balance(request), context)

    async def Audit(self, request, context):
        return await self._run(self._bank.audit(request), context)

    async def Statement(self, request, context):
        return await self._run(self._bank.statement(request), context)

    async def Work(self, request, context):
        try:
            cpu_seconds, io_seconds = check_work(request)
        except BankError as error:
            await context.abort(error.code, error.message)
        # On the loop's own thread, on purpose: CPU work stalls every call of this server.
        self._metrics.work_seconds.labels(kind="cpu").inc(burn_cpu(cpu_seconds))
        await asyncio.sleep(io_seconds)
        self._metrics.work_seconds.labels(kind="io").inc(io_seconds)
        return bank_pb2.WorkReply(served_by=self._bank.served_by)


class BlockingKV(BlockingServicer, kv_pb2_grpc.KVServicer):
    """The KV service for a thread-pool server."""

    def __init__(self, registers: Registers, client: DataClient, *, timeout: float) -> None:
        super().__init__(client, timeout=timeout)
        self._registers = registers

    def Put(self, request, context):
        return self._run(self._registers.put(request), context)

    def Get(self, request, context):
        return self._run(self._registers.get(request), context)

    def Delete(self, request, context):
        return self._run(self._registers.delete(request), context)

    def List(self, request, context):
        return self._run(self._registers.list(request), context)


class AsyncKV(AsyncServicer, kv_pb2_grpc.KVServicer):
    """The KV service as coroutines on a grpc.aio server's event loop."""

    def __init__(self, registers: Registers, client: AsyncDataClient, *,
                 timeout: float) -> None:
        super().__init__(client, timeout=timeout)
        self._registers = registers

    async def Put(self, request, context):
        return await self._run(self._registers.put(request), context)

    async def Get(self, request, context):
        return await self._run(self._registers.get(request), context)

    async def Delete(self, request, context):
        return await self._run(self._registers.delete(request), context)

    async def List(self, request, context):
        return await self._run(self._registers.list(request), context)


class BankNode(RoleNode):
    service_names = (SERVICE_NAME, KV_SERVICE_NAME)

    def __init__(self, ctx: NodeContext, *, process_index: int | None = None) -> None:
        config = ctx.config
        self._ctx = ctx
        self.architecture = config["APP_ARCHITECTURE"]
        self.server_mode = server_mode_for(self.architecture, config["APP_WORKERS"])
        # Worker processes of one machine share its name; served_by tells them apart.
        self.served_by = ctx.name if process_index is None else f"{ctx.name}/{process_index}"
        self._cursors = CursorTable(capacity=config["APP_CURSORS"],
                                    idle_seconds=config["APP_CURSOR_IDLE_SECONDS"])
        self.metrics = BankMetrics(ctx.registry, self.architecture)
        self.metrics.cursors_open.set_function(lambda: len(self._cursors))
        self.bank = Bank(limits_from(config), self._cursors, served_by=self.served_by,
                         on_conflict=lambda operation: self.metrics.conflicts.labels(
                             operation=operation).inc())
        self.registers = Registers(txn_attempts=config["APP_TXN_ATTEMPTS"],
                                   on_conflict=lambda operation: self.metrics.conflicts.labels(
                                       operation=f"kv_{operation}").inc())
        self._master = config["DATA_MASTER"]
        self._timeout = config["RPC_TIMEOUT_SECONDS"]
        self._attempts = config["APP_DATA_ATTEMPTS"]
        self._client: DataClient | AsyncDataClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep_every = config["APP_IDEMPOTENCY_SWEEP_SECONDS"]
        self._sweep_records = config["APP_IDEMPOTENCY_SWEEP_RECORDS"]
        self._sweep_per_txn = config["APP_IDEMPOTENCY_SWEEP_TXN_RECORDS"]
        self._stopped = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="idempotency-sweeper",
                                         daemon=True)

    def register(self, server: grpc.Server | grpc.aio.Server) -> None:
        if self.server_mode.asyncio:
            # Called on the server's event loop: the client's grpc.aio channels belong to it.
            self._loop = asyncio.get_running_loop()
            self._client = AsyncDataClient(
                self._master, timeout=self._timeout, attempts=self._attempts,
                max_message_bytes=self._ctx.config["MAX_MESSAGE_BYTES"], caller=self._ctx.name,
                credential=self._ctx.credential)
            servicer = AsyncBank(self.bank, self._client, self.metrics, timeout=self._timeout)
            kv_servicer = AsyncKV(self.registers, self._client, timeout=self._timeout)
        else:
            self._client = DataClient(self._master, self._ctx.channels, timeout=self._timeout,
                                      attempts=self._attempts)
            servicer = BlockingBank(self.bank, self._client, self.metrics,
                                    timeout=self._timeout)
            kv_servicer = BlockingKV(self.registers, self._client, timeout=self._timeout)
        bank_pb2_grpc.add_BankServicer_to_server(servicer, server)
        kv_pb2_grpc.add_KVServicer_to_server(kv_servicer, server)

    def serving(self, grpc_port: int) -> None:
        self._sweeper.start()

    def status(self) -> dict[str, str]:
        return {"architecture": self.architecture, "served_by": self.served_by,
                "cursors": str(len(self._cursors)), "data_master": self._master,
                "chain": self._chain(),
                "idempotency_window_seconds": str(self.bank.window_seconds)}

    def _sweep_loop(self) -> None:
        # Its own blocking client: the async architecture's client belongs to the event loop.
        client = DataClient(self._master, self._ctx.channels, timeout=self._timeout,
                            attempts=self._attempts)
        problem = ""
        while not self._stopped.wait(self._sweep_every):
            try:
                swept = run(self.bank.sweep_idempotency(records=self._sweep_records,
                                                        per_txn=self._sweep_per_txn),
                            client, timeout=self._timeout)
                now = ""
            except BankError as exc:  # the data tier is down or refused: try next pass
                swept, now = 0, f"{exc.code.name}: {exc.message}"
            self.metrics.idempotency_swept.inc(swept)
            if now != problem:
                if now:
                    self._ctx.log.warning("idempotency_sweep_failed", problem=now)
                else:
                    self._ctx.log.info("idempotency_sweep_recovered")
                problem = now

    def _chain(self) -> str:
        """The data tier's chain, head first, as this server's client last learned it."""
        try:
            if self._loop is None:
                config = self._client.config()
            else:
                pending = asyncio.run_coroutine_threadsafe(self._client.config(), self._loop)
                try:
                    config = pending.result(STATUS_TIMEOUT_SECONDS)
                finally:
                    pending.cancel()  # no-op once done; stops a master call that hangs
        except (DataUnavailable, TimeoutError) as exc:
            return f"unknown ({exc or 'no answer'})"
        return " -> ".join(member.name for member in config.chain) or "empty"

    def close(self) -> None:
        self._stopped.set()
        if self._sweeper.is_alive():
            self._sweeper.join(timeout=self._timeout + 1)
        if self._loop is not None and self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(
                STATUS_TIMEOUT_SECONDS)


SPEC = RoleSpec(
    name="app",
    summary="the tiers lab's app server: the Bank service (accounts, idempotent deposits and "
            "transfers, audit, statements, synthetic Work) and KV registers over the "
            "chain-replicated data tier, keeping no balance itself; APP_ARCHITECTURE picks "
            "how it serves calls.",
    settings=SETTINGS,
    build=BankNode,
)
