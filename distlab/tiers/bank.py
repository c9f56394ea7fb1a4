"""The bank workload: random transfers and reads over a fixed set of accounts.

Client processes (threads) share one channel to the cluster's entry point and
each draws its operations from its own seeded RNG, so a seed gives the same
operation sequence. Bounded by an operation count AND a duration. Every
operation lands in a `History`: a write that failed in a way that may still
have happened (deadline, UNAVAILABLE, ...) is `info`, never `fail`.

`settle()` resolves the indefinite transfers afterwards by replaying each
with its idempotency key (the bank applies a key once, so a replay says
whether it had happened, or makes it happen now) and takes a final audit, so
the checker can compare the final balances with every applied transfer.
A transfer carries when it was first issued (`issued_at_ms`, in its args and
history line), and a replay sends that same time: the bank remembers a key
only for its idempotency window, and refuses a replay past it. Such a
transfer stays unresolved (the verdict becomes unknown), never "not applied".
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from distlab.checkers import Verdict
from distlab.history import FAIL, INFO, OK, History, Op
from distlab.tiers.bank_checker import BankOutcome, check_bank
from distlab.workloads.clients import (
    DEFINITE_CODES,
    SESSION_KEY,
    ClientConfig,
    ClientWorkload,
    describe,
)
from distlab.workloads.pacing import Pacer
from nodes.app.bank import IDEMPOTENCY_EXPIRED
from nodes.rpc import bank_pb2, bank_pb2_grpc


@dataclass
class BankConfig(ClientConfig):
    accounts: int = 8
    initial_cents: int = 100_000
    max_amount_cents: int = 5_000
    # Shares of each operation; the rest of the mix is up to the caller.
    mix: dict[str, float] = field(default_factory=lambda: {
        "transfer": 0.7, "balance": 0.2, "audit": 0.1})


class BankWorkload(ClientWorkload):
    name = "bank"

    def __init__(self, channel: grpc.Channel, config: BankConfig | None = None, *,
                 history: History | None = None, run_id: str | None = None,
                 first_process: int = 0) -> None:
        super().__init__(config or BankConfig(), history=history, run_id=run_id,
                         first_process=first_process)
        self.stub = bank_pb2_grpc.BankStub(channel)
        self.accounts = [f"acct-{self.run_id}-{i}" for i in range(self.config.accounts)]
        self.initial = {name: self.config.initial_cents for name in self.accounts}
        self.outcome: BankOutcome | None = None

    # -- phases ---------------------------------------------------------------------------

    def setup(self, *, deadline_seconds: float = 60.0) -> None:
        """Open every account; retried until the cluster answers (it may still be starting)."""
        for account in self.accounts:
            request = bank_pb2.OpenAccountRequest(account=account,
                                                  initial_cents=self.config.initial_cents)
            _until_definite(lambda r=request: self.stub.OpenAccount(r, timeout=self.config.timeout),
                            deadline_seconds, accept={grpc.StatusCode.ALREADY_EXISTS})

    def settle(self, *, deadline_seconds: float = 60.0) -> BankOutcome:
        """Resolve every indefinite transfer by replaying its key, then audit once more.

        `deadline_seconds` bounds the replays all together, so a cluster that does not
        serve again makes the verdict unknown in bounded time instead of hanging."""
        applied, unresolved = [], []
        ends = time.monotonic() + deadline_seconds
        for op in self.history.of("transfer"):
            if op.type == OK:
                applied.append(op.args)
            elif op.type == INFO:
                state = self._replay(op.args, ends)
                (applied.append(op.args) if state is True else
                 unresolved.append(op.args) if state is None else None)
        try:
            final = _until_definite(
                lambda: self.stub.Audit(bank_pb2.AuditRequest(), timeout=self.config.timeout),
                deadline_seconds)
            balances = {name: final.balances[name] for name in self.accounts
                        if name in final.balances}
        except grpc.RpcError:
            balances = None  # the checker says unknown: nothing to compare with
        self.outcome = BankOutcome(self.accounts, self.initial, balances, applied, unresolved)
        return self.outcome

    def check(self) -> Verdict:
        if self.outcome is None:
            self.settle()
        return check_bank(self.history, self.outcome)

    # -- one client process ---------------------------------------------------------------

    def _process(self, process: int, stop: threading.Event, ends: float) -> None:
        rng = random.Random(f"{self.config.seed}-{process}")
        metadata = ((SESSION_KEY, f"{self.run_id}-p{process}"),)
        ops, weights = zip(*self.config.mix.items(), strict=True)
        serial = 0
        pacer = Pacer(self.config.rate / self.config.processes)
        while not stop.is_set() and time.monotonic() < ends and self._take_slot():
            pacer.wait(stop)
            if stop.is_set():
                break
            name = rng.choices(ops, weights)[0]
            if name == "transfer":
                source, target = rng.sample(self.accounts, 2)
                serial += 1
                args = {"from": source, "to": target,
                        "amount": rng.randint(1, self.config.max_amount_cents),
                        "key": f"{self.run_id}-{process}-{serial}",
                        "issued_at_ms": int(time.time() * 1000)}
                self._transfer(process, args)
            elif name == "balance":
                self._read(process, "balance", {"account": rng.choice(self.accounts)}, metadata)
            else:
                self._read(process, "audit", {}, metadata)

    def _transfer(self, process: int, args: dict) -> None:
        invoke = self.history.now()
        try:
            reply = self.stub.Transfer(_transfer_request(args), timeout=self.config.timeout)
        except grpc.RpcError as exc:
            kind = FAIL if exc.code() in DEFINITE_CODES else INFO
            self.history.add(Op(process, "transfer", args, invoke, self.history.now(), kind,
                                error=describe(exc)))
            return
        self.history.add(Op(process, "transfer", args, invoke, self.history.now(), OK,
                            result={"from": reply.from_balance_cents,
                                    "to": reply.to_balance_cents}))

    def _read(self, process: int, name: str, args: dict, metadata) -> None:
        invoke = self.history.now()
        try:
            if name == "balance":
                reply = self.stub.Balance(bank_pb2.BalanceRequest(account=args["account"]),
                                          timeout=self.config.timeout, metadata=metadata)
                result = reply.balance_cents
            else:
                reply = self.stub.Audit(bank_pb2.AuditRequest(), timeout=self.config.timeout,
                                        metadata=metadata)
                result = {n: reply.balances[n] for n in self.accounts if n in reply.balances}
        except grpc.RpcError as exc:
            # A read changes nothing: whatever went wrong, it certainly did not happen.
            self.history.add(Op(process, name, args, invoke, self.history.now(), FAIL,
                                error=describe(exc)))
            return
        self.history.add(Op(process, name, args, invoke, self.history.now(), OK, result=result))

    def _replay(self, args: dict, ends: float) -> bool | None:
        """True: the transfer is applied (before or now); False: it cannot be; None: unknown."""
        while time.monotonic() < ends:
            try:
                self.stub.Transfer(_transfer_request(args), timeout=self.config.timeout)
                return True
            except grpc.RpcError as exc:
                if (exc.details() or "").startswith(IDEMPOTENCY_EXPIRED):
                    return None  # the bank no longer knows whether it applied this key
                if exc.code() in DEFINITE_CODES:
                    return False
                time.sleep(0.2)
        return None


def _transfer_request(args: dict) -> bank_pb2.TransferRequest:
    return bank_pb2.TransferRequest(from_account=args["from"], to_account=args["to"],
                                    amount_cents=args["amount"], idempotency_key=args["key"],
                                    issued_at_unix_ms=args["issued_at_ms"])


def _until_definite(call: Callable, deadline_seconds: float, *,
                    accept: frozenset | set = frozenset()):
    """Call until it answers or fails definitely; codes in `accept` count as done (None)."""
    ends = time.monotonic() + deadline_seconds
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() in accept:
                return None
            if exc.code() in DEFINITE_CODES or time.monotonic() > ends:
                raise
            time.sleep(0.2)
