"""The KV service's logic over the data tier, as a sans-I/O core: the app tier's registers.

The tiers lab's app servers serve `distlab.kv.KV` (protos/kv.proto) beside
the Bank so a register workload can test them for linearizability. Like the
bank core (nodes.app.bank), every operation is a generator: it yields
`chain_pb2.ReadRequest`, `TxnRequest` or `Pause`, is sent each reply (or has
`DataTierDown` thrown in), and returns the KV reply or raises `BankError`.
`nodes.app.drivers` runs it; the unit tests run it over an in-memory data tier.
The core keeps no state of its own.

A key k lives in the data tier as "kv/" + k, its value the raw bytes; the
version a client sees is the data tier's sequence number of the write.

- Put is one blind Txn. Get is one Read at the tail. Delete reads the key's
  version and deletes it with a Txn that compares that version, so `existed`
  is true exactly when this Delete removed it (a compare that fails means
  another writer came first: re-read, back off, try again, at most
  `txn_attempts` times). List is one prefix Read.
- When the data tier certainly did not apply a write, the caller gets
  UNAVAILABLE starting "not applied: "; when a Txn may have applied (its answer
  was lost) the caller gets UNAVAILABLE saying the outcome is unknown. Such a
  Txn is never resent: a Put resent later could overwrite a newer write, and
  the caller's history must say "maybe", not "twice".
"""

from __future__ import annotations

import random
from collections.abc import Callable

import grpc

from nodes.app.bank import BankError, DataTierDown, Operation, Pause
from nodes.data.store import MAX_KEY_LENGTH as DATA_MAX_KEY_CHARS
from nodes.rpc import chain_pb2, kv_pb2

KV_PREFIX = "kv/"
# The data tier refuses longer keys, and it stores each of ours behind KV_PREFIX.
MAX_KEY_CHARS = DATA_MAX_KEY_CHARS - len(KV_PREFIX)
MAX_VALUE_BYTES = 64 * 1024
MAX_LIST_KEYS = 1000  # also the default of a List without a limit


def data_key(key: str) -> str:
    return KV_PREFIX + key


def check_key(key: str, field: str = "key", *, may_be_empty: bool = False) -> str:
    """`key` when it is 1-MAX_KEY_CHARS printable characters (a prefix may be empty)."""
    if not key and not may_be_empty:
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{field} must not be empty (1-{MAX_KEY_CHARS} characters)")
    if len(key) > MAX_KEY_CHARS:
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{field} is {len(key)} characters; the limit is {MAX_KEY_CHARS}")
    if not key.isprintable():
        # The data tier's own rule: control characters, and separators other than ' '.
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{field} {key[:80]!r} must be printable text (no control characters)")
    return key


def check_value(value: bytes) -> bytes:
    if len(value) > MAX_VALUE_BYTES:
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"value is {len(value)} bytes; the limit is {MAX_VALUE_BYTES} (64 KiB)")
    return value


def check_limit(limit: int) -> int:
    """The number of keys a List returns at most (0 means the default)."""
    if limit > MAX_LIST_KEYS:
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"limit {limit} is above the cap of {MAX_LIST_KEYS} "
                        f"(0 means {MAX_LIST_KEYS})")
    return limit or MAX_LIST_KEYS


class Registers:
    """The KV service's operations; one instance serves every call of an app server."""

    def __init__(self, *, txn_attempts: int = 8,
                 on_conflict: Callable[[str], None] = lambda operation: None,
                 jitter: Callable[[], float] = random.random) -> None:
        if txn_attempts < 1:
            raise ValueError(f"txn_attempts must be >= 1, not {txn_attempts}")
        self.txn_attempts = txn_attempts
        self._on_conflict = on_conflict
        self._jitter = jitter

    # -- talking to the data tier ------------------------------------------------------------

    def _read(self, request: chain_pb2.ReadRequest, *,
              writing: bool = False) -> Operation[chain_pb2.ReadReply]:
        try:
            return (yield request)
        except DataTierDown as down:
            # A read changes nothing, so a write that fails at its read was not applied.
            start = "not applied: " if writing else ""
            raise BankError(grpc.StatusCode.UNAVAILABLE,
                            f"{start}data tier unavailable: {down}") from None

    def _txn(self, request: chain_pb2.TxnRequest, operation: str) -> Operation[chain_pb2.TxnReply]:
        try:
            return (yield request)
        except DataTierDown as down:
            if down.definite:
                raise BankError(grpc.StatusCode.UNAVAILABLE,
                                f"not applied: data tier unavailable: {down}") from None
            raise BankError(grpc.StatusCode.UNAVAILABLE,
                            f"data tier unavailable: {down}; the outcome of this {operation} "
                            f"is unknown (it may have been applied): Get the key to learn "
                            f"its value now", outcome_unknown=True) from None

    # -- the operations ----------------------------------------------------------------------

    def put(self, request: kv_pb2.PutRequest) -> Operation[kv_pb2.PutReply]:
        key = data_key(check_key(request.key))
        value = check_value(request.value)
        result = yield from self._txn(
            chain_pb2.TxnRequest(puts=[chain_pb2.KeyValue(key=key, value=value)]), "put")
        if not result.succeeded:  # a Txn without compares cannot fail them
            raise BankError(grpc.StatusCode.INTERNAL,
                            f"the data tier refused a put of {request.key!r} without compares")
        return kv_pb2.PutReply(version=result.seq)

    def get(self, request: kv_pb2.GetRequest) -> Operation[kv_pb2.GetReply]:
        key = data_key(check_key(request.key))
        reply = yield from self._read(chain_pb2.ReadRequest(keys=[key]))
        for found in reply.found:
            if found.key == key:
                return kv_pb2.GetReply(value=found.value, version=found.version)
        raise BankError(grpc.StatusCode.NOT_FOUND, f"no key {request.key!r}")

    def delete(self, request: kv_pb2.DeleteRequest) -> Operation[kv_pb2.DeleteReply]:
        key = data_key(check_key(request.key))
        for attempt in range(self.txn_attempts):
            reply = yield from self._read(chain_pb2.ReadRequest(keys=[key]), writing=True)
            version = next((found.version for found in reply.found if found.key == key), 0)
            if not version:
                return kv_pb2.DeleteReply(existed=False)
            result = yield from self._txn(chain_pb2.TxnRequest(
                compares=[chain_pb2.Compare(key=key, target=chain_pb2.Compare.VERSION,
                                            version=version)],
                deletes=[key]), "delete")
            if result.succeeded:
                return kv_pb2.DeleteReply(existed=True)
            self._on_conflict("delete")
            yield Pause.after_conflict(attempt, self._jitter)  # as the bank's writes back off
        raise BankError(grpc.StatusCode.ABORTED,
                        f"not applied: the delete of {request.key!r} gave up after "
                        f"{self.txn_attempts} attempts: other writers kept changing the key; "
                        f"retry it")

    def list(self, request: kv_pb2.ListRequest) -> Operation[kv_pb2.ListReply]:
        prefix = check_key(request.prefix, "prefix", may_be_empty=True)
        limit = check_limit(request.limit)
        reply = yield from self._read(chain_pb2.ReadRequest(prefix=data_key(prefix),
                                                            limit=limit))
        keys = sorted(found.key[len(KV_PREFIX):] for found in reply.found
                      if found.key.startswith(KV_PREFIX))
        return kv_pb2.ListReply(keys=keys, truncated=reply.truncated)
