"""The bank's logic over the data tier, as a sans-I/O core.

Every operation is a generator: it yields the data-tier requests it needs
(`chain_pb2.ReadRequest` or `TxnRequest`), is sent each reply, and returns
the Bank reply or raises `BankError` (a gRPC status code and a message).
When the data tier did not answer, the driver throws `DataTierDown` in
instead of sending a reply. `nodes.app.drivers` runs these generators over
the blocking DataClient and the asyncio AsyncDataClient; the unit tests run
them over an in-memory data tier. The core keeps no balance: its only state
is the Statement cursor table it is given.

Keys in the data tier (values are compact JSON):

  bank/account/<account>              {"balance": cents, "lines": n}
  bank/history/<account>/<n:012d>     line n of the account's history (only the
                                      newest `Limits.history_lines` are kept):
                                      {"kind": "open" | "deposit" | "transfer_in" |
                                       "transfer_out", "amount": signed cents,
                                       "counterparty": account or "",
                                       "balance": cents after the line}
                                      (the "open" line also holds the nonce of
                                      the call that opened the account)
  bank/idempotency/<sha256(key)>      {"key": the idempotency key,
                                       "digest": sha256 of the request,
                                       "nonce": the call that applied it,
                                       "reply": the reply's fields,
                                       "expires_ms": see below}
  bank/idempotency-expiry/<expires_ms:015d>/<sha256(key)>
                                      empty: the record's entry in an index
                                      sorted by expiry, for the sweep

How a write stays correct:
- An account record and its new history lines change in ONE Txn that
  compares the record's version with the one just read (optimistic
  concurrency). A failed compare means another writer came first: re-read and
  try again, at most `Limits.txn_attempts` times.
- Deposit and Transfer also compare that their idempotency record does not
  exist yet and write it in the same Txn, so a request is applied at most
  once: a repeat gets the stored reply (replayed=true), the same key with
  another payload gets ALREADY_EXISTS. Only applied requests are recorded, so
  a refused one (overdraft, unknown account) may be retried with its key.
- Idempotency records expire (bounded state). A request carries when it was
  first issued (issued_at_unix_ms, kept on every retry, part of its digest):
  one older than the window (`Limits.idempotency_window_seconds`, reported
  in every Deposit and Transfer reply) is refused FAILED_PRECONDITION before
  anything is read, and the check is repeated before each Txn is sent. Its
  record, written with expires_ms = issued + window, is deleted by
  `sweep_idempotency` only IDEMPOTENCY_GRACE_SECONDS after that: longer than
  a Txn can stay in flight (the head drops one whose caller's deadline
  passed) plus the clock difference between app servers. So no request that
  could still be accepted ever finds its record swept: a retry is answered
  from the record or refused, never applied twice. (Stripe instead treats a
  key used after its record was pruned as new; that re-applies a late retry.)
  Every app server must run with the same window.
- Statement history is bounded (bounded state, as a ledger's online
  statement is): an account keeps its newest `Limits.history_lines` lines.
  The Txn that adds line n deletes line n - history_lines, so the window
  moves in the same atomic write and a reader never sees it half moved. A
  Statement page asked to start before the first kept line starts at that
  line instead: every line carries its number, so the caller sees where the
  kept history begins (a page at offset 0 is "the oldest lines still kept",
  and a cursor that fell behind the window moves up to it rather than dying).
  A line inside the window that is missing is DATA_LOSS. Every app server
  must run with the same value, and raising it on a live bank does not bring
  dropped lines back: pages over them would be DATA_LOSS.
- When the data tier may have applied a Txn without saying so
  (`DataTierDown(definite=False)`) the same Txn is sent again: if the first
  one applied, the compares fail and the re-read finds the records this call
  wrote, recognised by its random nonce. If the data tier still does not
  answer, the caller gets UNAVAILABLE saying the outcome is unknown.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from nodes.app.cursors import CursorTable
from nodes.rpc import bank_pb2, chain_pb2

ACCOUNT_PREFIX = "bank/account/"
HISTORY_PREFIX = "bank/history/"
IDEMPOTENCY_PREFIX = "bank/idempotency/"
IDEMPOTENCY_EXPIRY_PREFIX = "bank/idempotency-expiry/"
DEFAULT_IDEMPOTENCY_WINDOW_SECONDS = 300.0
DEFAULT_HISTORY_LINES = 1000
# A record outlives its window by this much before the sweep may delete it: more than a
# Txn can stay in flight (the data tier's head drops one whose caller stopped waiting,
# within DATA_TRANSFER_TIMEOUT_SECONDS, 30 s by default) plus the clocks of two app
# servers disagreeing. It is also how far in the future issued_at may lie.
IDEMPOTENCY_GRACE_SECONDS = 60.0
# How a refusal for an expired window starts: clients (the bank workload's settle) tell
# it from other FAILED_PRECONDITIONs by it, as "outcome unknown", not "not applied".
IDEMPOTENCY_EXPIRED = "idempotency window passed"
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_IDEMPOTENCY_KEY_CHARS = 128
MAX_CURSOR_CHARS = 64
DEFAULT_PAGE_LINES = 20
MAX_PAGE_LINES = 100
INT64_MAX = 2**63 - 1

# After a conflict, wait a random time up to 2 ms, 4 ms, ... (capped) before re-reading, so
# writers contending for the same accounts spread out instead of colliding again at once.
CONFLICT_BACKOFF_SECONDS = 0.002
CONFLICT_BACKOFF_CAP_SECONDS = 0.1


@dataclass(frozen=True)
class Pause:
    """Asks the driver to wait this long before resuming the operation (conflict backoff)."""

    seconds: float

    @classmethod
    def after_conflict(cls, attempt: int, jitter: Callable[[], float]) -> Pause:
        """The randomized, exponentially growing, capped wait after conflict number `attempt`
        (counted from 0)."""
        ceiling = min(CONFLICT_BACKOFF_CAP_SECONDS, CONFLICT_BACKOFF_SECONDS * 2 ** attempt)
        return cls(jitter() * ceiling)


T = TypeVar("T")
DataRequest = chain_pb2.ReadRequest | chain_pb2.TxnRequest | Pause
DataReply = chain_pb2.ReadReply | chain_pb2.TxnReply | None
Operation = Generator[DataRequest, DataReply, T]


class BankError(Exception):
    """A request the bank refuses or cannot finish: the status and message its caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str, *,
                 outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: True when the write may or may not have been applied.
        self.outcome_unknown = outcome_unknown


class DataTierDown(Exception):
    """Thrown into an operation when the data tier did not answer its request.

    `definite` is True when the request was certainly not applied; False when
    a Txn may have been (its answer was lost).
    """

    def __init__(self, detail: str, *, definite: bool) -> None:
        super().__init__(detail)
        self.definite = definite


@dataclass(frozen=True)
class Limits:
    max_balance_cents: int = 10**15
    max_audit_accounts: int = 5000
    txn_attempts: int = 8          # reads + Txns per write while compares keep failing
    unknown_resends: int = 2       # resends of a Txn whose outcome was left unknown
    idempotency_window_seconds: float = DEFAULT_IDEMPOTENCY_WINDOW_SECONDS
    history_lines: int = DEFAULT_HISTORY_LINES  # statement lines kept per account

    def complaint(self) -> str | None:
        """Why these limits cannot work together, or None."""
        if self.max_balance_cents * self.max_audit_accounts > INT64_MAX:
            return (f"max balance {self.max_balance_cents} x max audit accounts "
                    f"{self.max_audit_accounts} exceeds int64: an audit total could overflow")
        return None


@dataclass(frozen=True)
class Account:
    name: str
    balance: int
    lines: int  # history lines so far; the next line's number
    version: int  # the data tier's version of the record, for compares


@dataclass(frozen=True)
class _Done:
    """A write decided without a Txn (a replay, or its own Txn found applied)."""

    reply: Any


@dataclass(frozen=True)
class _Attempt:
    """A write ready to commit: the Txn, and the reply to give when it succeeds."""

    txn: chain_pb2.TxnRequest
    reply: Any


def account_key(account: str) -> str:
    return ACCOUNT_PREFIX + account


def history_key(account: str, number: int) -> str:
    return f"{HISTORY_PREFIX}{account}/{number:012d}"


def idempotency_key(key: str) -> str:
    # Hashed: a client's key may hold any characters and be up to 128 long.
    return IDEMPOTENCY_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def idempotency_expiry_key(record_key: str, expires_ms: int) -> str:
    # Zero-padded, so the index's key order is expiry order and a sweep reads oldest first.
    return f"{IDEMPOTENCY_EXPIRY_PREFIX}{expires_ms:015d}/{record_key[len(IDEMPOTENCY_PREFIX):]}"


def request_digest(operation: str, *fields: object) -> str:
    return hashlib.sha256(json.dumps([operation, *fields]).encode()).hexdigest()


def check_account(name: str, field: str = "account") -> str:
    if not ACCOUNT_NAME.fullmatch(name):
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{field} {name[:80]!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return name


def check_idempotency_key(key: str) -> str:
    if not key:
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        "idempotency_key is required (1-128 characters, unique per request)")
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"idempotency_key is {len(key)} characters; the limit is "
                        f"{MAX_IDEMPOTENCY_KEY_CHARS}")
    return key


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _decode(found: chain_pb2.KeyValue) -> dict[str, Any]:
    try:
        value = json.loads(found.value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        value = None
    if not isinstance(value, dict):
        raise BankError(grpc.StatusCode.DATA_LOSS, f"data-tier record {found.key!r} is corrupt")
    return value


def _absent(key: str) -> chain_pb2.Compare:
    return chain_pb2.Compare(key=key, target=chain_pb2.Compare.VERSION, version=0)


def _unchanged(key: str, version: int) -> chain_pb2.Compare:
    return chain_pb2.Compare(key=key, target=chain_pb2.Compare.VERSION, version=version)


def _put(key: str, value: dict[str, Any]) -> chain_pb2.KeyValue:
    return chain_pb2.KeyValue(key=key, value=_encode(value))


def _account_update(account: Account, balance: int) -> chain_pb2.KeyValue:
    return _put(account_key(account.name), {"balance": balance, "lines": account.lines + 1})


def _history_line(account: Account, kind: str, amount: int, counterparty: str,
                  balance: int) -> chain_pb2.KeyValue:
    return _put(history_key(account.name, account.lines),
                {"kind": kind, "amount": amount, "counterparty": counterparty,
                 "balance": balance})


def _dropped_line(account: Account, keep: int) -> list[str]:
    """The line that falls out of the kept window when `account` gets its next line."""
    number = account.lines - keep
    return [history_key(account.name, number)] if number >= 0 else []


def _first_kept_line(lines: int, keep: int) -> int:
    """The number of the oldest line still kept by an account with `lines` lines."""
    return max(0, lines - keep)


class Bank:
    """The Bank service's operations; one instance serves every call of an app server.

    `clock` is wall-clock time (seconds since the epoch), what issued_at is measured in.
    """

    def __init__(self, limits: Limits, cursors: CursorTable, *, served_by: str,
                 new_nonce: Callable[[], str] = lambda: secrets.token_hex(8),
                 on_conflict: Callable[[str], None] = lambda operation: None,
                 jitter: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.time) -> None:
        complaint = limits.complaint()
        if complaint:
            raise ValueError(complaint)
        self.limits = limits
        self.cursors = cursors
        self.served_by = served_by
        self._new_nonce = new_nonce
        self._on_conflict = on_conflict
        self._jitter = jitter
        self._clock = clock
        self.window_seconds = int(limits.idempotency_window_seconds)

    # -- checks shared by the operations -----------------------------------------------------

    def _check_amount(self, amount: int, field: str) -> int:
        if amount <= 0:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT, f"{field} must be > 0 (got {amount})")
        return self._check_cap(amount, f"{field} {amount}")

    def _check_cap(self, cents: int, what: str) -> int:
        """`cents`, unless above the balance cap; `what` names it in the refusal."""
        if cents > self.limits.max_balance_cents:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{what} is above the cap of {self.limits.max_balance_cents} cents")
        return cents

    def _check_issued(self, issued_ms: int) -> int:
        """When a request's window closes (ms), unless it is closed or issued_at is absurd."""
        if issued_ms <= 0:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                            "issued_at_unix_ms is required: when the request was first issued "
                            "(milliseconds since the epoch), the same on every retry")
        now_ms = self._clock() * 1000
        if issued_ms > now_ms + IDEMPOTENCY_GRACE_SECONDS * 1000:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"issued_at_unix_ms {issued_ms} is {(issued_ms - now_ms) / 1000:.0f} s "
                            f"in the future (at most {IDEMPOTENCY_GRACE_SECONDS:.0f} s of clock "
                            f"difference is allowed)")
        closes_ms = issued_ms + self.window_seconds * 1000
        self._check_open(closes_ms, issued_ms)
        return closes_ms

    def _check_open(self, closes_ms: int, issued_ms: int) -> None:
        now_ms = self._clock() * 1000
        if now_ms > closes_ms:
            raise BankError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"{IDEMPOTENCY_EXPIRED}: this request was first issued "
                            f"{(now_ms - issued_ms) / 1000:.0f} s ago, longer than the "
                            f"{self.window_seconds} s a key is remembered, so it is refused "
                            f"rather than risk applying it twice; nothing was changed. Look "
                            f"at the account's Statement to learn whether it was applied, "
                            f"and send a new request (new key, new issued_at) if it was not")

    # -- talking to the data tier ------------------------------------------------------------

    def _read(self, request: chain_pb2.ReadRequest, *, uncertain: bool = False,
              operation: str = "read") -> Operation[chain_pb2.ReadReply]:
        try:
            return (yield request)
        except DataTierDown as down:
            if uncertain:
                raise _unknown(operation, f"data tier unavailable: {down}") from None
            raise BankError(grpc.StatusCode.UNAVAILABLE,
                            f"data tier unavailable: {down}; nothing was changed") from None

    def _read_keys(self, keys: list[str], *, uncertain: bool = False,
                   operation: str = "read") -> Operation[dict[str, chain_pb2.KeyValue]]:
        reply = yield from self._read(chain_pb2.ReadRequest(keys=keys), uncertain=uncertain,
                                      operation=operation)
        return {found.key: found for found in reply.found}

    def _write(self, operation: str, keys: list[str],
               decide: Callable[[dict[str, chain_pb2.KeyValue], bool], _Done | _Attempt],
               *, closes_ms: float | None = None) -> Operation[Any]:
        """Read `keys`, let `decide` plan the Txn, commit it; re-read and retry on conflict.

        `decide(found, uncertain)` returns the final reply (`_Done`) or the Txn
        to try (`_Attempt`), or raises BankError; `uncertain` is True once a
        Txn of this call may have been applied unseen. Past `closes_ms` (the
        request's idempotency window) no Txn is resent: its record may be swept.
        """
        uncertain = False
        for attempt in range(self.limits.txn_attempts):
            found = yield from self._read_keys(keys, uncertain=uncertain, operation=operation)
            decision = decide(found, uncertain)
            if isinstance(decision, _Done):
                return decision.reply
            resends = 0
            while True:
                try:
                    result = yield decision.txn
                    break
                except DataTierDown as down:
                    if down.definite and not uncertain:
                        raise BankError(grpc.StatusCode.UNAVAILABLE,
                                        f"data tier unavailable: {down}; "
                                        f"the {operation} was not applied") from None
                    uncertain = True
                    if resends == self.limits.unknown_resends:
                        raise _unknown(operation, f"data tier unavailable: {down}") from None
                    if closes_ms is not None and self._clock() * 1000 > closes_ms:
                        raise _unknown(operation, f"data tier unavailable: {down}, and the "
                                       f"request's idempotency window has passed") from None
                    resends += 1
            if result.succeeded:
                return decision.reply
            self._on_conflict(operation)
            yield Pause.after_conflict(attempt, self._jitter)
        if uncertain:  # a Txn of this call may still be on its way to the head
            raise _unknown(operation, f"gave up after {self.limits.txn_attempts} attempts")
        raise BankError(grpc.StatusCode.ABORTED,
                        f"the {operation} gave up after {self.limits.txn_attempts} attempts: "
                        f"the accounts kept changing under it; retry it")

    # -- the operations ----------------------------------------------------------------------

    def open_account(self, request: bank_pb2.OpenAccountRequest,
                     ) -> Operation[bank_pb2.AccountReply]:
        name = check_account(request.account)
        initial = request.initial_cents
        if initial < 0:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"initial_cents must be >= 0 (got {initial})")
        self._check_cap(initial, f"initial_cents {initial}")
        nonce = self._new_nonce()
        reply = bank_pb2.AccountReply(account=name, balance_cents=initial)
        record_key, first_line_key = account_key(name), history_key(name, 0)

        def decide(found: dict[str, chain_pb2.KeyValue], uncertain: bool) -> _Done | _Attempt:
            if record_key in found:
                first_line = found.get(first_line_key)
                if uncertain and first_line is not None and \
                        _decode(first_line).get("nonce") == nonce:
                    return _Done(reply)  # this call's own Txn applied; its answer was lost
                raise BankError(grpc.StatusCode.ALREADY_EXISTS, f"account {name!r} already exists")
            return _Attempt(chain_pb2.TxnRequest(
                compares=[_absent(record_key)],
                puts=[_put(record_key, {"balance": initial, "lines": 1}),
                      _put(first_line_key, {"kind": "open", "amount": initial,
                                            "counterparty": "", "balance": initial,
                                            "nonce": nonce})]), reply)

        return (yield from self._write("open", [record_key, first_line_key], decide))

    def deposit(self, request: bank_pb2.DepositRequest) -> Operation[bank_pb2.AccountReply]:
        name = check_account(request.account)
        amount = self._check_amount(request.amount_cents, "amount_cents")
        key = check_idempotency_key(request.idempotency_key)
        issued = request.issued_at_unix_ms
        closes_ms = self._check_issued(issued)
        digest = request_digest("deposit", name, amount, issued)
        nonce = self._new_nonce()
        record_key, idem_key = account_key(name), idempotency_key(key)
        window = self.window_seconds

        def decide(found: dict[str, chain_pb2.KeyValue], uncertain: bool) -> _Done | _Attempt:
            stored = _stored_reply(found.get(idem_key), key, digest)
            if stored is not None:
                return _Done(bank_pb2.AccountReply(account=name,
                                                   balance_cents=stored["reply"]["balance"],
                                                   idempotency_window_seconds=window))
            self._check_open(closes_ms, issued)
            account = _account(found, name)
            balance = self._check_cap(account.balance + amount,
                                      f"the balance of {name!r} after this deposit")
            return _Attempt(chain_pb2.TxnRequest(
                compares=[_unchanged(record_key, account.version), _absent(idem_key)],
                puts=[_account_update(account, balance),
                      _history_line(account, "deposit", amount, "", balance),
                      *_idempotency_record(idem_key, closes_ms,
                                           {"key": key, "digest": digest, "nonce": nonce,
                                            "reply": {"balance": balance}})],
                deletes=_dropped_line(account, self.limits.history_lines)),
                bank_pb2.AccountReply(account=name, balance_cents=balance,
                                      idempotency_window_seconds=window))

        return (yield from self._write("deposit", [record_key, idem_key], decide,
                                       closes_ms=closes_ms))

    def transfer(self, request: bank_pb2.TransferRequest) -> Operation[bank_pb2.TransferReply]:
        source = check_account(request.from_account, "from_account")
        target = check_account(request.to_account, "to_account")
        if source == target:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"from_account and to_account are both {source!r}: "
                            f"a transfer needs two accounts")
        amount = self._check_amount(request.amount_cents, "amount_cents")
        key = check_idempotency_key(request.idempotency_key)
        issued = request.issued_at_unix_ms
        closes_ms = self._check_issued(issued)
        digest = request_digest("transfer", source, target, amount, issued)
        nonce = self._new_nonce()
        idem_key = idempotency_key(key)
        window = self.window_seconds

        def decide(found: dict[str, chain_pb2.KeyValue], uncertain: bool) -> _Done | _Attempt:
            stored = _stored_reply(found.get(idem_key), key, digest)
            if stored is not None:
                return _Done(bank_pb2.TransferReply(
                    from_balance_cents=stored["reply"]["from_balance"],
                    to_balance_cents=stored["reply"]["to_balance"],
                    replayed=stored["nonce"] != nonce, idempotency_window_seconds=window))
            self._check_open(closes_ms, issued)
            paying, paid = _account(found, source), _account(found, target)
            if paying.balance < amount:
                raise BankError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"insufficient funds: balance {paying.balance} < amount {amount}")
            from_balance, to_balance = paying.balance - amount, paid.balance + amount
            self._check_cap(to_balance, f"the balance of {target!r} after this transfer")
            return _Attempt(chain_pb2.TxnRequest(
                compares=[_unchanged(account_key(source), paying.version),
                          _unchanged(account_key(target), paid.version),
                          _absent(idem_key)],
                puts=[_account_update(paying, from_balance),
                      _account_update(paid, to_balance),
                      _history_line(paying, "transfer_out", -amount, target, from_balance),
                      _history_line(paid, "transfer_in", amount, source, to_balance),
                      *_idempotency_record(idem_key, closes_ms,
                                           {"key": key, "digest": digest, "nonce": nonce,
                                            "reply": {"from_balance": from_balance,
                                                      "to_balance": to_balance}})],
                deletes=[*_dropped_line(paying, self.limits.history_lines),
                         *_dropped_line(paid, self.limits.history_lines)]),
                bank_pb2.TransferReply(from_balance_cents=from_balance,
                                       to_balance_cents=to_balance,
                                       idempotency_window_seconds=window))

        return (yield from self._write(
            "transfer", [account_key(source), account_key(target), idem_key], decide,
            closes_ms=closes_ms))

    def sweep_idempotency(self, *, records: int, per_txn: int) -> Operation[int]:
        """Delete up to `records` idempotency records whose window closed more than
        IDEMPOTENCY_GRACE_SECONDS ago, oldest first, `per_txn` to a Txn; return how many
        went. Each deletion compares that the index entry and the record are still the
        ones written together (same version), so two sweepers racing, or a key reused
        after its record went, never delete a live record. Stops at the first failure:
        the next pass reads again."""
        cutoff_ms = (self._clock() - IDEMPOTENCY_GRACE_SECONDS) * 1000
        reply = yield from self._read(chain_pb2.ReadRequest(prefix=IDEMPOTENCY_EXPIRY_PREFIX,
                                                            limit=records))
        expired = []
        for entry in reply.found:  # key order is expiry order
            expires, _, digest = entry.key[len(IDEMPOTENCY_EXPIRY_PREFIX):].partition("/")
            if not expires.isdigit():
                continue  # not written by this code: left alone
            if int(expires) > cutoff_ms:
                break
            expired.append((entry, IDEMPOTENCY_PREFIX + digest))
        deleted = 0
        for start in range(0, len(expired), per_txn):
            group = expired[start:start + per_txn]
            txn = chain_pb2.TxnRequest(
                compares=[compare for entry, record in group
                          for compare in (_unchanged(entry.key, entry.version),
                                          _unchanged(record, entry.version))],
                deletes=[key for entry, record in group for key in (entry.key, record)])
            try:
                result = yield txn
            except DataTierDown:
                break
            if not result.succeeded:
                break
            deleted += len(group)
        return deleted

    def balance(self, request: bank_pb2.BalanceRequest) -> Operation[bank_pb2.AccountReply]:
        name = check_account(request.account)
        found = yield from self._read_keys([account_key(name)])
        return bank_pb2.AccountReply(account=name, balance_cents=_account(found, name).balance)

    def audit(self, request: bank_pb2.AuditRequest) -> Operation[bank_pb2.AuditReply]:
        # One prefix read: every balance comes from the same state, so the sum is one
        # the bank really had (transfers conserve it) and not a mix of before and after.
        reply = yield from self._read(chain_pb2.ReadRequest(
            prefix=ACCOUNT_PREFIX, limit=self.limits.max_audit_accounts))
        if reply.truncated:
            raise BankError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"the bank has more than {self.limits.max_audit_accounts} accounts: "
                            f"an audit reads them all at once and cannot")
        balances = {found.key[len(ACCOUNT_PREFIX):]: _parse_account(found).balance
                    for found in reply.found}
        return bank_pb2.AuditReply(balances=balances, total_cents=sum(balances.values()),
                                   as_of_seq=reply.seq)

    def statement(self, request: bank_pb2.StatementRequest,
                  ) -> Operation[bank_pb2.StatementReply]:
        name = check_account(request.account)
        limit = request.limit or DEFAULT_PAGE_LINES
        if limit > MAX_PAGE_LINES:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"limit {limit} is out of range: 1-{MAX_PAGE_LINES} lines a page "
                            f"(0 means {DEFAULT_PAGE_LINES})")
        stateful = request.WhichOneof("page") == "cursor"
        cursor_id = request.cursor if stateful else ""
        offset = request.offset
        if cursor_id:
            offset = self._cursor_offset(cursor_id, name)
        keep = self.limits.history_lines
        for _ in range(self.limits.txn_attempts):
            # The record and the page in one Read, so the kept window is the page's own.
            found = yield from self._read_keys(
                [account_key(name), *(history_key(name, n) for n in range(offset, offset + limit))])
            account = _account(found, name)
            first = _first_kept_line(account.lines, keep)
            if offset >= first:
                break
            offset = first  # the lines asked for were dropped: page from the oldest kept one
        else:
            raise BankError(grpc.StatusCode.ABORTED,
                            f"the history of {name!r} kept moving past the page asked for; "
                            f"retry it")
        lines = []
        for number in range(offset, min(offset + limit, account.lines)):
            line = found.get(history_key(name, number))
            if line is None:
                raise BankError(grpc.StatusCode.DATA_LOSS,
                                f"history line {number} of {name!r} is missing")
            lines.append(_statement_line(number, _decode(line), line.key))
        next_offset = offset + len(lines)
        if stateful:
            if cursor_id:
                self.cursors.advance(cursor_id, next_offset)
            else:
                cursor_id = self.cursors.open(name, next_offset)
        return bank_pb2.StatementReply(lines=lines, cursor=cursor_id,
                                       done=next_offset >= account.lines,
                                       served_by=self.served_by)

    def _cursor_offset(self, cursor_id: str, account: str) -> int:
        if len(cursor_id) > MAX_CURSOR_CHARS:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"cursor is {len(cursor_id)} characters; cursors are at most "
                            f"{MAX_CURSOR_CHARS}")
        cursor = self.cursors.get(cursor_id)
        if cursor is None:
            raise BankError(grpc.StatusCode.NOT_FOUND,
                            f"cursor {cursor_id!r} is unknown on {self.served_by}: it was lost "
                            f"(server restarted or another server answered); "
                            f"open a new one or page by offset")
        if cursor.account != account:
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"cursor {cursor_id!r} pages account {cursor.account!r}, "
                            f"not {account!r}")
        return cursor.offset


def _account(found: dict[str, chain_pb2.KeyValue], name: str) -> Account:
    record = found.get(account_key(name))
    if record is None:
        raise BankError(grpc.StatusCode.NOT_FOUND, f"no account {name!r}")
    return _parse_account(record)


def _parse_account(record: chain_pb2.KeyValue) -> Account:
    value = _decode(record)
    try:
        return Account(record.key[len(ACCOUNT_PREFIX):], int(value["balance"]),
                       int(value["lines"]), record.version)
    except (KeyError, TypeError, ValueError):
        raise BankError(grpc.StatusCode.DATA_LOSS,
                        f"data-tier record {record.key!r} is corrupt") from None


def _idempotency_record(record_key: str, closes_ms: int,
                        record: dict[str, Any]) -> list[chain_pb2.KeyValue]:
    """The record and its expiry-index entry: put in one Txn, so both get its version."""
    expires_ms = int(closes_ms)
    return [_put(record_key, {**record, "expires_ms": expires_ms}),
            chain_pb2.KeyValue(key=idempotency_expiry_key(record_key, expires_ms))]


def _stored_reply(found: chain_pb2.KeyValue | None, key: str,
                  digest: str) -> dict[str, Any] | None:
    """The idempotency record of `key` when one exists and matches this request."""
    if found is None:
        return None
    stored = _decode(found)
    if stored.get("digest") != digest:
        raise BankError(grpc.StatusCode.ALREADY_EXISTS,
                        f"idempotency key {key!r} was used for a different request; "
                        f"nothing was changed")
    return stored


def _statement_line(number: int, line: dict[str, Any], key: str) -> bank_pb2.StatementLine:
    try:
        return bank_pb2.StatementLine(number=number, kind=line["kind"],
                                      amount_cents=line["amount"],
                                      counterparty=line["counterparty"],
                                      balance_cents=line["balance"])
    except (KeyError, TypeError, ValueError):
        raise BankError(grpc.StatusCode.DATA_LOSS, f"data-tier record {key!r} is corrupt") from None


def _unknown(operation: str, reason: str) -> BankError:
    learn = ("retry with the same idempotency_key to learn it" if operation != "open"
             else "ask Balance whether the account exists")
    return BankError(grpc.StatusCode.UNAVAILABLE,
                     f"{reason}; the outcome of this {operation} is unknown (it may have "
                     f"been applied): {learn}", outcome_unknown=True)
