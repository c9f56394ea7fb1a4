"""The data tier's client: Txn to the head, Read to the tail, configuration from the data-master.

Used by the app tier (nodes.app: `AsyncDataClient` in its asyncio server,
`DataClient` elsewhere) and by host-side tests. Both keep the chain
configuration they last got from the master, and when a replica says it is
not the head or tail, refuses an epoch, or cannot be reached, they ask the
master again and retry, within `attempts` calls and the call's overall
timeout. Every call has a deadline, and presents the lab credential: the data
tier serves only lab machines (see nodes/data/__init__.py). `DataClient` gets
it from its `Channels`, `AsyncDataClient` as an argument.

A Txn is retried only when it was certainly not applied (the replica was not
the head, its epoch was refused, the connection was refused before the
request left, the head said ABORTED). Any other failure may have applied it:
`DataUnavailable(definite=False)` is raised and repeating it is the caller's
choice (the bank makes its txns safe to repeat with a compare on an
idempotency key). Reads change nothing and are retried on any such failure.
INVALID_ARGUMENT and RESOURCE_EXHAUSTED (a request too large) are raised as
they are (`grpc.RpcError`): retrying cannot help.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import grpc

from nodes.common.auth import Credential
from nodes.common.channel import Channels, channel_options
from nodes.common.interceptors import CALLER_METADATA_KEY
from nodes.rpc import chain_pb2, chain_pb2_grpc

MASTER_PEER = "data-master"
RAISED_AS_IS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
# Refusals that leave a Txn certainly unapplied (see nodes/data/service.py).
NOT_APPLIED_CODES = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED,
                     grpc.StatusCode.UNIMPLEMENTED)
# How gRPC's own status for "no connection was made" (so the request never left) begins.
# Only the start counts: a replica's UNAVAILABLE may quote such a message from further
# down the chain, after the head applied the update.
CONNECT_FAILURE_PREFIXES = ("failed to connect to all addresses", "dns resolution failed")
FIRST_PAUSE_SECONDS = 0.05
MAX_PAUSE_SECONDS = 0.5


class DataUnavailable(Exception):
    """The data tier did not answer. `definite`: True means a Txn was certainly NOT
    applied; False means it may have been (indefinite)."""

    def __init__(self, message: str, *, definite: bool) -> None:
        super().__init__(message)
        self.definite = definite


def certainly_not_applied(code: grpc.StatusCode, details: str) -> bool:
    if code in NOT_APPLIED_CODES:
        return True
    lowered = (details or "").lower()
    return code == grpc.StatusCode.UNAVAILABLE and lowered.startswith(CONNECT_FAILURE_PREFIXES)


class RetryPolicy:
    """One call's attempts, deadline and pauses; both clients follow it. Sans-I/O."""

    def __init__(self, what: str, *, attempts: int, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what  # "txn" or "read"
        self._left = attempts
        self._clock = clock
        self._deadline = clock() + timeout
        self._pause = FIRST_PAUSE_SECONDS
        self._problem = "no attempt was made"

    def remaining(self) -> float:
        return self._deadline - self._clock()

    def begin(self) -> float:
        """The timeout of the next attempt; DataUnavailable when no attempt is left."""
        remaining = self.remaining()
        if self._left <= 0 or remaining <= 0:
            raise DataUnavailable(f"{self.what} gave up: {self._problem}", definite=True)
        self._left -= 1
        return remaining

    def failed(self, where: str, error: grpc.RpcError) -> float:
        """Judge a failed attempt at `where`: re-raise it, raise an indefinite
        DataUnavailable, or return the pause before the next attempt."""
        code, details = error.code(), error.details()
        if code in RAISED_AS_IS:
            raise error
        if self.what == "txn" and not certainly_not_applied(code, details):
            raise DataUnavailable(f"txn at {where} may have been applied: {code.name}: {details}",
                                  definite=False)
        return self.unanswered(f"{where}: {code.name}: {details}")

    def unanswered(self, problem: str) -> float:
        """Record a failure that applied nothing; return the pause before the next attempt."""
        self._problem = problem
        pause = min(self._pause, max(0.0, self.remaining()))
        self._pause = min(self._pause * 2, MAX_PAUSE_SECONDS)
        return pause


def pick(config: chain_pb2.ChainConfig, what: str) -> chain_pb2.ChainMember | None:
    """The head for a txn, the tail for a read; None while the chain has no member."""
    if not config.chain:
        return None
    return config.chain[0] if what == "txn" else config.chain[-1]


class _ConfigCache:
    """The newest configuration seen; shared by the threads (or tasks) of one client."""

    def __init__(self) -> None:
        self._config: chain_pb2.ChainConfig | None = None
        self._suspect = False
        self._lock = threading.Lock()

    def get(self) -> chain_pb2.ChainConfig | None:
        with self._lock:
            return self._config

    def suspect(self) -> None:
        """A member failed a call: the next call asks the master first. Without this, a call
        that fails indefinitely (a partitioned head times out) would leave the old head
        cached and every later call would go to it again."""
        with self._lock:
            self._suspect = True

    def suspected(self) -> bool:
        with self._lock:
            return self._suspect

    def offer(self, config: chain_pb2.ChainConfig) -> chain_pb2.ChainConfig:
        with self._lock:
            if self._config is None or config.epoch >= self._config.epoch:
                self._config = config
            self._suspect = False
            return self._config


class DataClient:
    def __init__(self, master: str, channels: Channels, *, timeout: float = 2.0,
                 attempts: int = 4) -> None:
        self._master = master
        self._channels = channels
        self._timeout = timeout
        self._attempts = attempts
        self._cache = _ConfigCache()

    def txn(self, request: chain_pb2.TxnRequest, *,
            timeout: float | None = None) -> chain_pb2.TxnReply:
        return self._call("txn", request, timeout)

    def read(self, request: chain_pb2.ReadRequest, *,
             timeout: float | None = None) -> chain_pb2.ReadReply:
        return self._call("read", request, timeout)

    def config(self) -> chain_pb2.ChainConfig:
        """The cached configuration; asks the master when there is none yet."""
        return self._cache.get() or self._refresh(self._timeout)

    def _refresh(self, timeout: float) -> chain_pb2.ChainConfig:
        stub = chain_pb2_grpc.MasterStub(self._channels.get(self._master, MASTER_PEER))
        try:
            config = stub.GetConfig(chain_pb2.GetConfigRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise DataUnavailable(f"data-master {self._master}: {exc.code().name}: "
                                  f"{exc.details()}", definite=True) from None
        return self._cache.offer(config)

    def _call(self, what: str, request, timeout: float | None):
        policy = RetryPolicy(what, attempts=self._attempts, timeout=timeout or self._timeout)
        stale = self._cache.suspected()
        while True:
            attempt_timeout = policy.begin()
            config = self._cache.get()
            if stale or config is None:
                try:
                    # Leave time for the call itself when there is a configuration to fall
                    # back on: a master that does not answer must not eat the whole budget.
                    config = self._refresh(attempt_timeout / 2 if config else attempt_timeout)
                except DataUnavailable as exc:
                    if config is None:
                        time.sleep(policy.unanswered(str(exc)))
                        continue
            member = pick(config, what)
            if member is None:
                stale = True
                time.sleep(policy.unanswered("the chain has no member yet"))
                continue
            stub = chain_pb2_grpc.DataStub(self._channels.get(member.address, member.name))
            method = stub.Txn if what == "txn" else stub.Read
            try:
                return method(request, timeout=max(0.001, policy.remaining()))
            except grpc.RpcError as exc:
                self._cache.suspect()
                pause = policy.failed(member.name, exc)
            stale = True
            time.sleep(pause)


class AsyncDataClient:
    """DataClient's methods as coroutines, on grpc.aio channels this client owns."""

    def __init__(self, master: str, *, timeout: float = 2.0, attempts: int = 4,
                 max_message_bytes: int = 4 * 1024 * 1024, caller: str = "",
                 credential: Credential | None = None) -> None:
        self._master = master
        self._timeout = timeout
        self._attempts = attempts
        self._options = channel_options(max_message_bytes)
        self._metadata = (((CALLER_METADATA_KEY, caller),) if caller else ()) + (
            credential.metadata() if credential else ())
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._cache = _ConfigCache()

    async def txn(self, request: chain_pb2.TxnRequest, *,
                  timeout: float | None = None) -> chain_pb2.TxnReply:
        return await self._call("txn", request, timeout)

    async def read(self, request: chain_pb2.ReadRequest, *,
                   timeout: float | None = None) -> chain_pb2.ReadReply:
        return await self._call("read", request, timeout)

    async def config(self) -> chain_pb2.ChainConfig:
        return self._cache.get() or await self._refresh(self._timeout)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    def _channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = grpc.aio.insecure_channel(target, options=self._options)
            self._channels[target] = channel
        return channel

    async def _refresh(self, timeout: float) -> chain_pb2.ChainConfig:
        stub = chain_pb2_grpc.MasterStub(self._channel(self._master))
        try:
            config = await stub.GetConfig(chain_pb2.GetConfigRequest(), timeout=timeout,
                                          metadata=self._metadata)
        except grpc.RpcError as exc:
            raise DataUnavailable(f"data-master {self._master}: {exc.code().name}: "
                                  f"{exc.details()}", definite=True) from None
        return self._cache.offer(config)

    async def _call(self, what: str, request, timeout: float | None):
        policy = RetryPolicy(what, attempts=self._attempts, timeout=timeout or self._timeout)
        stale = self._cache.suspected()
        while True:
            attempt_timeout = policy.begin()
            config = self._cache.get()
            if stale or config is None:
                try:
                    config = await self._refresh(attempt_timeout / 2 if config
                                                 else attempt_timeout)
                except DataUnavailable as exc:
                    if config is None:
                        await asyncio.sleep(policy.unanswered(str(exc)))
                        continue
            member = pick(config, what)
            if member is None:
                stale = True
                await asyncio.sleep(policy.unanswered("the chain has no member yet"))
                continue
            stub = chain_pb2_grpc.DataStub(self._channel(member.address))
            method = stub.Txn if what == "txn" else stub.Read
            try:
                return await method(request, timeout=max(0.001, policy.remaining()),
                                    metadata=self._metadata)
            except grpc.RpcError as exc:
                self._cache.suspect()
                pause = policy.failed(member.name, exc)
            stale = True
            await asyncio.sleep(pause)
