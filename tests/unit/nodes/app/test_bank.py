"""The bank core against an in-memory data tier: money is conserved, a request applies once,
bad input changes nothing, and lost answers from the data tier are handled honestly."""

from __future__ import annotations

import itertools
import json

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nodes.app.bank import (
    ACCOUNT_PREFIX,
    HISTORY_PREFIX,
    IDEMPOTENCY_EXPIRED,
    IDEMPOTENCY_EXPIRY_PREFIX,
    IDEMPOTENCY_GRACE_SECONDS,
    IDEMPOTENCY_PREFIX,
    Bank,
    BankError,
    Limits,
    account_key,
    history_key,
)
from nodes.app.cursors import CursorTable
from nodes.rpc import bank_pb2, chain_pb2
from tests.unit.nodes.app.memory_data import MemoryData, Stepper, drive

Code = grpc.StatusCode


class Clock:
    """Wall-clock time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Teller:
    """A bank core over a MemoryData, with one-line helpers for each call; requests are
    stamped issued "now" on the teller's clock unless told otherwise."""

    def __init__(self, data: MemoryData | None = None, *, limits: Limits | None = None,
                 cursors: CursorTable | None = None, served_by: str = "app-1") -> None:
        self.data = data if data is not None else MemoryData()
        self.conflicts: list[str] = []
        nonces = itertools.count()
        cursors = cursors if cursors is not None else CursorTable(capacity=100, idle_seconds=60)
        self.clock = Clock()
        self.bank = Bank(limits or Limits(), cursors,
                         served_by=served_by, new_nonce=lambda: f"n{next(nonces)}",
                         on_conflict=self.conflicts.append, clock=self.clock)

    def now_ms(self) -> int:
        return int(self.clock.now * 1000)

    def open(self, account: str, initial: int = 0) -> bank_pb2.AccountReply:
        return drive(self.bank.open_account(
            bank_pb2.OpenAccountRequest(account=account, initial_cents=initial)), self.data)

    def deposit(self, account: str, amount: int, key: str,
                issued: int | None = None) -> bank_pb2.AccountReply:
        return drive(self.bank.deposit(bank_pb2.DepositRequest(
            account=account, amount_cents=amount, idempotency_key=key,
            issued_at_unix_ms=self.now_ms() if issued is None else issued)), self.data)

    def transfer_request(self, source: str, target: str, amount: int, key: str,
                         issued: int | None = None) -> bank_pb2.TransferRequest:
        return bank_pb2.TransferRequest(
            from_account=source, to_account=target, amount_cents=amount, idempotency_key=key,
            issued_at_unix_ms=self.now_ms() if issued is None else issued)

    def transfer(self, source: str, target: str, amount: int, key: str,
                 issued: int | None = None) -> bank_pb2.TransferReply:
        return drive(self.bank.transfer(self.transfer_request(source, target, amount, key,
                                                              issued)), self.data)

    def sweep(self, records: int = 100, per_txn: int = 4) -> int:
        return drive(self.bank.sweep_idempotency(records=records, per_txn=per_txn), self.data)

    def idempotency_keys(self) -> int:
        return sum(1 for key in self.data.data
                   if key.startswith((IDEMPOTENCY_PREFIX, IDEMPOTENCY_EXPIRY_PREFIX)))

    def balance(self, account: str) -> int:
        return drive(self.bank.balance(bank_pb2.BalanceRequest(account=account)),
                     self.data).balance_cents

    def audit(self) -> bank_pb2.AuditReply:
        return drive(self.bank.audit(bank_pb2.AuditRequest()), self.data)

    def statement(self, account: str, **page) -> bank_pb2.StatementReply:
        return drive(self.bank.statement(bank_pb2.StatementRequest(account=account, **page)),
                     self.data)

    def lines(self, account: str) -> list[tuple[str, int, str, int]]:
        reply = self.statement(account, limit=100)
        return [(line.kind, line.amount_cents, line.counterparty, line.balance_cents)
                for line in reply.lines]


def refusal(call, *args, **kwargs) -> BankError:
    with pytest.raises(BankError) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.fixture
def teller() -> Teller:
    teller = Teller()
    teller.open("alice", 1000)
    teller.open("bob", 500)
    return teller


# -- OpenAccount -----------------------------------------------------------------------------

def test_open_account_starts_its_history_and_refuses_a_second_open(teller):
    assert teller.balance("alice") == 1000
    assert teller.lines("alice") == [("open", 1000, "", 1000)]
    error = refusal(teller.open, "alice", 5)
    assert error.code == Code.ALREADY_EXISTS and "'alice' already exists" in error.message
    assert teller.balance("alice") == 1000
    assert teller.open("zero").balance_cents == 0


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "slash/y", "ünïcode", "tab\t"])
def test_bad_account_names_are_invalid_argument(teller, name):
    calls = (teller.data.reads, teller.data.txns)
    for call in (lambda: teller.open(name, 1), lambda: teller.deposit(name, 1, "k"),
                 lambda: teller.transfer("alice", name, 1, "k"), lambda: teller.balance(name),
                 lambda: teller.statement(name)):
        error = refusal(call)
        assert error.code == Code.INVALID_ARGUMENT and "1-64 characters" in error.message
    assert (teller.data.reads, teller.data.txns) == calls  # refused before any data-tier call


def test_open_refuses_negative_and_capped_initial_balances():
    teller = Teller(limits=Limits(max_balance_cents=1000, max_audit_accounts=10))
    assert refusal(teller.open, "a", -1).code == Code.INVALID_ARGUMENT
    error = refusal(teller.open, "a", 1001)
    assert error.code == Code.INVALID_ARGUMENT and "cap of 1000 cents" in error.message
    assert teller.data.seq == 0


# -- Deposit ---------------------------------------------------------------------------------

def test_deposit_adds_and_a_repeat_of_its_key_applies_once(teller):
    assert teller.deposit("alice", 250, "d1").balance_cents == 1250
    assert teller.deposit("alice", 250, "d1").balance_cents == 1250
    assert teller.balance("alice") == 1250
    assert teller.lines("alice") == [("open", 1000, "", 1000), ("deposit", 250, "", 1250)]


def test_deposit_key_reused_for_another_payload_is_already_exists(teller):
    teller.deposit("alice", 250, "d1")
    seq = teller.data.seq
    for account, amount in (("alice", 251), ("bob", 250)):
        error = refusal(teller.deposit, account, amount, "d1")
        assert error.code == Code.ALREADY_EXISTS
        assert "idempotency key 'd1' was used for a different request" in error.message
    assert teller.data.seq == seq


@pytest.mark.parametrize("amount, key, code, fragment", [
    (0, "k", Code.INVALID_ARGUMENT, "amount_cents must be > 0"),
    (-5, "k", Code.INVALID_ARGUMENT, "amount_cents must be > 0"),
    (2**63 - 1, "k", Code.INVALID_ARGUMENT, "above the cap"),
    (10, "", Code.INVALID_ARGUMENT, "idempotency_key is required"),
    (10, "k" * 129, Code.INVALID_ARGUMENT, "idempotency_key is 129 characters"),
])
def test_bad_deposits_change_nothing(teller, amount, key, code, fragment):
    seq = teller.data.seq
    error = refusal(teller.deposit, "alice", amount, key)
    assert error.code == code and fragment in error.message
    assert teller.data.seq == seq


def test_deposit_to_an_unknown_account_is_not_found_and_its_key_stays_free(teller):
    error = refusal(teller.deposit, "carol", 10, "d1")
    assert error.code == Code.NOT_FOUND and "no account 'carol'" in error.message
    teller.open("carol")
    assert teller.deposit("carol", 10, "d1").balance_cents == 10


def test_deposit_beyond_the_balance_cap_is_refused():
    teller = Teller(limits=Limits(max_balance_cents=1000, max_audit_accounts=10))
    teller.open("a", 900)
    error = refusal(teller.deposit, "a", 101, "k")
    assert error.code == Code.INVALID_ARGUMENT
    assert "balance of 'a' after this deposit is above the cap of 1000" in error.message
    assert teller.balance("a") == 900
    assert teller.deposit("a", 100, "k").balance_cents == 1000


# -- Transfer --------------------------------------------------------------------------------

def test_transfer_moves_money_and_writes_both_histories(teller):
    reply = teller.transfer("alice", "bob", 300, "t1")
    assert (reply.from_balance_cents, reply.to_balance_cents, reply.replayed) == (700, 800, False)
    assert (teller.balance("alice"), teller.balance("bob")) == (700, 800)
    assert teller.lines("alice")[-1] == ("transfer_out", -300, "bob", 700)
    assert teller.lines("bob")[-1] == ("transfer_in", 300, "alice", 800)


def test_a_repeated_transfer_replays_its_first_reply_and_applies_once(teller):
    first = teller.transfer("alice", "bob", 300, "t1")
    teller.deposit("alice", 5, "d1")  # later changes do not alter the stored reply
    again = teller.transfer("alice", "bob", 300, "t1")
    assert again.replayed and (again.from_balance_cents, again.to_balance_cents) == \
        (first.from_balance_cents, first.to_balance_cents)
    assert (teller.balance("alice"), teller.balance("bob")) == (705, 800)
    assert len(teller.lines("bob")) == 2


@pytest.mark.parametrize("source, target, amount", [
    ("alice", "bob", 301), ("bob", "alice", 300), ("alice", "zed", 300)])
def test_a_transfer_key_reused_for_another_payload_changes_nothing(teller, source, target,
                                                                  amount):
    teller.open("zed")
    teller.transfer("alice", "bob", 300, "t1")
    seq = teller.data.seq
    error = refusal(teller.transfer, source, target, amount, "t1")
    assert error.code == Code.ALREADY_EXISTS
    assert "idempotency key 't1' was used for a different request" in error.message
    assert teller.data.seq == seq


def test_deposit_and_transfer_keys_share_one_namespace(teller):
    teller.deposit("alice", 10, "shared")
    assert refusal(teller.transfer, "alice", "bob", 10, "shared").code == Code.ALREADY_EXISTS


def test_overdraft_is_failed_precondition_with_both_numbers(teller):
    error = refusal(teller.transfer, "bob", "alice", 501, "t1")
    assert error.code == Code.FAILED_PRECONDITION
    assert error.message == "insufficient funds: balance 500 < amount 501"
    assert (teller.balance("alice"), teller.balance("bob")) == (1000, 500)
    assert teller.transfer("bob", "alice", 500, "t1").from_balance_cents == 0  # key still free


@pytest.mark.parametrize("source, target, amount, key, code, fragment", [
    ("alice", "alice", 10, "k", Code.INVALID_ARGUMENT, "a transfer needs two accounts"),
    ("alice", "bob", 0, "k", Code.INVALID_ARGUMENT, "amount_cents must be > 0"),
    ("alice", "bob", -1, "k", Code.INVALID_ARGUMENT, "amount_cents must be > 0"),
    ("alice", "bob", 2**63 - 1, "k", Code.INVALID_ARGUMENT, "above the cap"),
    ("alice", "bob", 10, "", Code.INVALID_ARGUMENT, "idempotency_key is required"),
    ("alice", "bob", 10, "x" * 129, Code.INVALID_ARGUMENT, "129 characters"),
    ("carol", "bob", 10, "k", Code.NOT_FOUND, "no account 'carol'"),
    ("alice", "carol", 10, "k", Code.NOT_FOUND, "no account 'carol'"),
    ("", "bob", 10, "k", Code.INVALID_ARGUMENT, "from_account ''"),
])
def test_bad_transfers_change_nothing(teller, source, target, amount, key, code, fragment):
    seq = teller.data.seq
    error = refusal(teller.transfer, source, target, amount, key)
    assert error.code == code and fragment in error.message
    assert teller.data.seq == seq


def test_transfer_that_would_push_a_balance_past_the_cap_is_refused():
    teller = Teller(limits=Limits(max_balance_cents=1000, max_audit_accounts=10))
    teller.open("a", 1000)
    teller.open("b", 1000)
    error = refusal(teller.transfer, "a", "b", 1, "k")
    assert error.code == Code.INVALID_ARGUMENT and "balance of 'b' after this transfer" in \
        error.message
    assert teller.audit().total_cents == 2000


# -- concurrency -----------------------------------------------------------------------------

def test_a_transfer_that_loses_a_race_re_reads_and_both_apply(teller):
    first = Stepper(teller.bank.transfer(teller.transfer_request("alice", "bob", 100, "t1")),
                    teller.data)
    first.step()  # its read: it now holds alice's and bob's versions
    teller.transfer("alice", "bob", 200, "t2")  # a concurrent transfer commits first
    while not first.done:
        first.step()
    assert (first.result.from_balance_cents, first.result.to_balance_cents) == (700, 800)
    assert teller.conflicts == ["transfer"]
    assert (teller.balance("alice"), teller.balance("bob")) == (700, 800)


def test_a_race_that_would_overdraw_is_caught_by_the_re_read(teller):
    first = Stepper(teller.bank.transfer(teller.transfer_request("bob", "alice", 400, "t1")),
                    teller.data)
    first.step()  # read bob = 500: enough for 400
    teller.transfer("bob", "alice", 400, "t2")
    with pytest.raises(BankError) as caught:
        while not first.done:
            first.step()
    assert caught.value.message == "insufficient funds: balance 100 < amount 400"
    assert teller.balance("bob") == 100


def test_same_key_racing_itself_applies_once(teller):
    racer = Stepper(teller.bank.transfer(teller.transfer_request("alice", "bob", 100, "t1")),
                    teller.data)
    racer.step()
    assert not teller.transfer("alice", "bob", 100, "t1").replayed
    while not racer.done:
        racer.step()
    assert racer.result.replayed and racer.result.from_balance_cents == 900
    assert teller.balance("alice") == 900


def test_endless_contention_gives_up_with_aborted_and_changes_nothing(teller):
    def competing_writer(data: MemoryData) -> None:
        value, _ = data.data[account_key("alice")]
        data.seq += 1
        data.data[account_key("alice")] = (value, data.seq)  # same value, new version

    teller.data.before_txn = competing_writer
    error = refusal(teller.transfer, "alice", "bob", 1, "t1")
    assert error.code == Code.ABORTED and "8 attempts" in error.message
    assert teller.conflicts == ["transfer"] * 8
    # Each conflict backs off a random time under a ceiling that doubles, capped at 0.1 s.
    ceilings = [min(0.1, 0.002 * 2 ** attempt) for attempt in range(8)]
    assert len(teller.data.pauses) == 8
    assert all(0 <= pause <= ceiling for pause, ceiling in zip(teller.data.pauses, ceilings,
                                                               strict=True))
    teller.data.before_txn = None
    assert (teller.balance("alice"), teller.balance("bob")) == (1000, 500)


# -- the data tier failing -------------------------------------------------------------------

def test_a_read_failure_is_unavailable_and_says_nothing_changed(teller):
    teller.data.read_outages = 1
    error = refusal(teller.transfer, "alice", "bob", 1, "t1")
    assert error.code == Code.UNAVAILABLE and not error.outcome_unknown
    assert "nothing was changed" in error.message


def test_a_txn_certainly_not_applied_is_unavailable_and_not_unknown(teller):
    teller.data.outages = ["refused"]
    error = refusal(teller.transfer, "alice", "bob", 1, "t1")
    assert error.code == Code.UNAVAILABLE and not error.outcome_unknown
    assert "was not applied" in error.message
    assert teller.balance("alice") == 1000


@pytest.mark.parametrize("outage", ["lost", "maybe"])
def test_an_unknown_txn_outcome_is_resolved_by_resending(teller, outage):
    teller.data.outages = [outage]
    reply = teller.transfer("alice", "bob", 100, "t1")
    # Whether the first Txn applied or not, the transfer happened once and this call
    # reports it as its own work, not as a replay.
    assert (reply.from_balance_cents, reply.to_balance_cents, reply.replayed) == (900, 600, False)
    assert (teller.balance("alice"), teller.balance("bob")) == (900, 600)
    assert len(teller.lines("alice")) == 2


def test_a_lost_deposit_answer_is_resolved_by_resending(teller):
    teller.data.outages = ["lost", "lost"]
    assert teller.deposit("alice", 10, "d1").balance_cents == 1010
    assert teller.balance("alice") == 1010


def test_a_lost_open_answer_is_resolved_by_its_own_nonce(teller):
    teller.data.outages = ["lost"]
    assert teller.open("carol", 42).balance_cents == 42
    assert teller.lines("carol") == [("open", 42, "", 42)]


def test_when_the_outcome_stays_unknown_the_caller_is_told_so(teller):
    teller.data.outages = ["lost", "maybe", "refused"]
    error = refusal(teller.transfer, "alice", "bob", 100, "t1")
    assert error.code == Code.UNAVAILABLE and error.outcome_unknown
    assert "outcome of this transfer is unknown" in error.message
    assert "same idempotency_key" in error.message
    # It had applied; the client's retry with the same key learns so.
    again = teller.transfer("alice", "bob", 100, "t1")
    assert again.replayed and again.from_balance_cents == 900
    assert teller.balance("alice") == 900


def test_a_certain_failure_after_an_unknown_one_keeps_resending(teller):
    teller.data.outages = ["maybe", "refused"]
    reply = teller.transfer("alice", "bob", 100, "t1")  # the third send applies
    assert not reply.replayed and teller.balance("alice") == 900


def test_a_failed_re_read_after_an_unknown_txn_is_still_unknown(teller):
    resend = teller.data.txns + 2

    def fail_the_read_after_the_resend(data: MemoryData) -> None:
        if data.txns == resend:
            data.read_outages = 1

    teller.data.outages = ["lost"]  # applied; the resend's compares then fail
    teller.data.before_txn = fail_the_read_after_the_resend
    error = refusal(teller.deposit, "alice", 1, "d1")
    assert error.code == Code.UNAVAILABLE and error.outcome_unknown
    assert "outcome of this deposit is unknown" in error.message


def test_contention_after_an_unknown_txn_is_unknown_not_aborted(teller):
    def competing_writer(data: MemoryData) -> None:
        value, _ = data.data[account_key("bob")]
        data.seq += 1
        data.data[account_key("bob")] = (value, data.seq)

    teller.data.outages = ["maybe"]
    teller.data.before_txn = competing_writer
    error = refusal(teller.transfer, "alice", "bob", 1, "t1")
    assert error.code == Code.UNAVAILABLE and error.outcome_unknown
    assert "gave up after 8 attempts" in error.message


# -- Balance and Audit -----------------------------------------------------------------------

def test_balance_of_an_unknown_account_is_not_found(teller):
    assert refusal(teller.balance, "carol").code == Code.NOT_FOUND


def test_audit_sums_every_balance_from_one_read(teller):
    teller.transfer("alice", "bob", 300, "t1")
    reads = teller.data.reads
    audit = teller.audit()
    assert teller.data.reads == reads + 1
    assert dict(audit.balances) == {"alice": 700, "bob": 800}
    assert audit.total_cents == 1500 and audit.as_of_seq == teller.data.seq


def test_audit_of_more_accounts_than_it_may_read_is_refused():
    teller = Teller(limits=Limits(max_audit_accounts=2))
    for name in ("a", "b", "c"):
        teller.open(name, 1)
    error = refusal(teller.audit)
    assert error.code == Code.FAILED_PRECONDITION and "more than 2 accounts" in error.message


def test_limits_that_could_overflow_an_audit_total_are_refused():
    assert Limits().complaint() is None
    limits = Limits(max_balance_cents=2**62, max_audit_accounts=2)
    assert "could overflow" in limits.complaint()
    with pytest.raises(ValueError, match="overflow"):
        Teller(limits=limits)


def test_a_corrupt_record_is_data_loss_not_a_crash(teller):
    teller.data.data[account_key("alice")] = (b"not json", 99)
    assert refusal(teller.balance, "alice").code == Code.DATA_LOSS
    teller.data.data[account_key("bob")] = (json.dumps({"balance": "x"}).encode(), 99)
    error = refusal(teller.audit)
    assert error.code == Code.DATA_LOSS and ACCOUNT_PREFIX in error.message


# -- Statement -------------------------------------------------------------------------------

@pytest.fixture
def busy(teller) -> Teller:
    """alice with 45 history lines: open and 44 deposits of 1..44 cents."""
    for n in range(1, 45):
        teller.deposit("alice", n, f"d{n}")
    return teller


def test_statement_pages_by_offset(busy):
    first = busy.statement("alice")
    assert [line.number for line in first.lines] == list(range(20))  # limit 0 means 20
    assert not first.done and first.served_by == "app-1" and first.cursor == ""
    last = busy.statement("alice", offset=40, limit=10)
    assert [line.number for line in last.lines] == [40, 41, 42, 43, 44] and last.done
    assert busy.statement("alice", offset=45).lines == [] and busy.statement("alice",
                                                                              offset=45).done
    assert busy.statement("alice", offset=4_000_000_000).done


def test_statement_amounts_add_up_to_each_balance_after(busy):
    lines = busy.statement("alice", limit=100).lines
    running = 0
    for line in lines:
        running += line.amount_cents
        assert line.balance_cents == running
    assert running == busy.balance("alice")


@pytest.mark.parametrize("page, code, fragment", [
    ({"limit": 101}, Code.INVALID_ARGUMENT, "limit 101 is out of range"),
    ({"cursor": "c" * 65}, Code.INVALID_ARGUMENT, "cursors are at most 64"),
])
def test_bad_statement_pages_are_invalid_argument(busy, page, code, fragment):
    error = refusal(busy.statement, "alice", **page)
    assert error.code == code and fragment in error.message


def test_statement_of_an_unknown_account_opens_no_cursor(teller):
    assert refusal(teller.statement, "carol", cursor="").code == Code.NOT_FOUND
    assert len(teller.bank.cursors) == 0


def test_a_cursor_pages_through_and_picks_up_new_lines(busy):
    page = busy.statement("alice", cursor="", limit=20)
    numbers = [line.number for line in page.lines]
    cursor = page.cursor
    assert cursor and not page.done
    while not page.done:
        page = busy.statement("alice", cursor=cursor, limit=20)
        assert page.cursor == cursor
        numbers += [line.number for line in page.lines]
    assert numbers == list(range(45))
    assert busy.statement("alice", cursor=cursor).lines == []
    busy.deposit("alice", 7, "late")
    page = busy.statement("alice", cursor=cursor)
    assert [(line.number, line.amount_cents) for line in page.lines] == [(45, 7)] and page.done


def test_a_cursor_of_another_account_is_refused(busy):
    cursor = busy.statement("alice", cursor="").cursor
    error = refusal(busy.statement, "bob", cursor=cursor)
    assert error.code == Code.INVALID_ARGUMENT and "pages account 'alice'" in error.message


def test_a_cursor_is_lost_with_its_server(busy):
    cursor = busy.statement("alice", cursor="").cursor
    restarted = Teller(busy.data, served_by="app-2")
    error = refusal(restarted.statement, "alice", cursor=cursor)
    assert error.code == Code.NOT_FOUND
    assert error.message.startswith(f"cursor {cursor!r} is unknown on app-2: it was lost "
                                    f"(server restarted or another server answered)")
    assert [line.number for line in restarted.statement("alice", offset=20).lines][0] == 20


def test_an_expired_cursor_is_not_found():
    now = [0.0]
    teller = Teller(cursors=CursorTable(capacity=10, idle_seconds=30, clock=lambda: now[0]))
    teller.open("a", 1)
    cursor = teller.statement("a", cursor="").cursor
    now[0] = 31.0
    assert refusal(teller.statement, "a", cursor=cursor).code == Code.NOT_FOUND


# -- statement retention ---------------------------------------------------------------------

KEEP = 5


@pytest.fixture
def kept() -> Teller:
    """A bank keeping KEEP lines an account: alice and bob opened, then 12 transfers of 1..12
    cents between them, so each has 13 lines (0-12) and keeps 8-12."""
    teller = Teller(limits=Limits(history_lines=KEEP))
    teller.open("alice", 1000)
    teller.open("bob", 500)
    for n in range(1, 13):
        source, target = ("alice", "bob") if n % 2 else ("bob", "alice")
        teller.transfer(source, target, n, f"t{n}")
    return teller


def history_numbers(teller: Teller, account: str) -> list[int]:
    prefix = f"{HISTORY_PREFIX}{account}/"
    return sorted(int(key[len(prefix):]) for key in teller.data.data if key.startswith(prefix))


def test_each_account_keeps_only_its_newest_lines_and_money_is_unaffected(kept):
    assert history_numbers(kept, "alice") == history_numbers(kept, "bob") == list(range(8, 13))
    kept.deposit("alice", 100, "d1")  # a deposit moves the window too
    assert history_numbers(kept, "alice") == list(range(9, 14))
    audit = kept.audit()
    assert audit.total_cents == 1600 and audit.balances["alice"] == kept.balance("alice")


def test_a_page_before_the_kept_lines_starts_at_the_oldest_kept_one(kept):
    page = kept.statement("alice", offset=0, limit=3)
    assert [line.number for line in page.lines] == [8, 9, 10] and not page.done
    rest = kept.statement("alice", offset=11)
    assert [line.number for line in rest.lines] == [11, 12] and rest.done
    # The kept lines still chain: each balance is the one before it plus its amount.
    lines = kept.statement("alice").lines
    assert all(after.balance_cents == before.balance_cents + after.amount_cents
               for before, after in itertools.pairwise(lines))
    assert lines[-1].balance_cents == kept.balance("alice")


def test_a_cursor_that_fell_behind_the_kept_lines_moves_up_to_them(kept):
    page = kept.statement("alice", cursor="", limit=2)
    assert [line.number for line in page.lines] == [8, 9]
    for n in range(4):
        kept.deposit("alice", 1, f"more{n}")  # lines 13-16: alice keeps 12-16
    page = kept.statement("alice", cursor=page.cursor, limit=20)
    assert [line.number for line in page.lines] == [12, 13, 14, 15, 16] and page.done


def test_a_page_whose_lines_are_dropped_while_it_reads_reads_again(kept):
    reading = Stepper(kept.bank.statement(bank_pb2.StatementRequest(account="alice", offset=9)),
                      kept.data)
    for n in range(3):
        kept.deposit("alice", 1, f"meanwhile{n}")  # lines 13-15: alice keeps 11-15
    while not reading.done:
        reading.step()
    assert [line.number for line in reading.result.lines] == [11, 12, 13, 14, 15]


def test_a_missing_line_inside_the_kept_window_is_still_data_loss(kept):
    del kept.data.data[history_key("alice", 10)]
    error = refusal(kept.statement, "alice", offset=0)
    assert error.code == Code.DATA_LOSS and "history line 10 of 'alice' is missing" in error.message


# -- properties ------------------------------------------------------------------------------

ACCOUNTS = ("a", "b", "c", "d")
OPENING = 500
transfer_plans = st.lists(
    st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS),
              st.integers(min_value=1, max_value=400), st.integers(min_value=0, max_value=9),
              st.sampled_from(["ok", "ok", "ok", "lost", "maybe", "refused"])),
    min_size=1, max_size=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=transfer_plans, schedule=st.lists(st.integers(min_value=0, max_value=24),
                                               max_size=300))
def test_random_interleaved_transfers_keep_the_total_and_never_go_negative(plans, schedule):
    """Transfers run interleaved (a random schedule picks who takes the next step), with
    reused idempotency keys and first Txns whose answers are lost or refused. Whatever
    happens: money is neither made nor lost, no balance goes negative, each key moves money
    at most once, and every reply for one key tells the same balances."""
    teller = Teller(limits=Limits(txn_attempts=50))
    for name in ACCOUNTS:
        teller.open(name, OPENING)
    racers = [[Stepper(teller.bank.transfer(teller.transfer_request(
        source, target, amount, f"k{key}")), teller.data), outage, f"k{key}"]
        for source, target, amount, key, outage in plans if source != target]
    replies: dict[str, set[tuple[int, int]]] = {}
    turns = iter(schedule)
    while live := [racer for racer in racers if not racer[0].done]:
        racer = live[next(turns, 0) % len(live)]
        stepper, outage, key = racer
        teller.data.outages = []
        if outage != "ok" and isinstance(stepper.pending, chain_pb2.TxnRequest):
            teller.data.outages, racer[1] = [outage], "ok"  # its first Txn only
        try:
            stepper.step()
        except BankError as error:
            assert error.code in (Code.FAILED_PRECONDITION, Code.ALREADY_EXISTS,
                                  Code.UNAVAILABLE), error.message
            event(f"refused: {error.code.name}")
            stepper.done = True
            continue
        if stepper.done:
            result = stepper.result
            replies.setdefault(key, set()).add((result.from_balance_cents,
                                                result.to_balance_cents))

    event(f"compare conflicts: {'some' if teller.conflicts else 'none'}")
    audit = teller.audit()
    assert audit.total_cents == OPENING * len(ACCOUNTS)
    assert all(balance >= 0 for balance in audit.balances.values())
    histories = {name: teller.statement(name, limit=100).lines for name in ACCOUNTS}
    for name, lines in histories.items():
        assert sum(line.amount_cents for line in lines) == audit.balances[name]
    applied = sum(line.kind == "transfer_out" for lines in histories.values() for line in lines)
    stored_keys = [k for k in teller.data.data if k.startswith("bank/idempotency/")]
    assert applied == len(stored_keys) <= len({plan[3] for plan in plans})
    assert all(len(balances) == 1 for balances in replies.values())


# -- the idempotency window ------------------------------------------------------------------

WINDOW = 300


def test_a_retry_within_the_window_replays_and_every_reply_states_the_window(teller):
    first = teller.transfer("alice", "bob", 10, "k1")
    assert first.idempotency_window_seconds == WINDOW
    issued = teller.now_ms()
    teller.clock.now += WINDOW - 1
    again = teller.transfer("alice", "bob", 10, "k1", issued=issued)
    assert again.replayed and again.idempotency_window_seconds == WINDOW
    assert teller.deposit("alice", 5, "d1").idempotency_window_seconds == WINDOW
    assert teller.balance("alice") == 995


@pytest.mark.parametrize("operation", ["transfer", "deposit"])
def test_a_request_first_issued_before_the_window_is_refused_and_never_applied(teller,
                                                                              operation):
    issued = teller.now_ms() - (WINDOW + 1) * 1000
    call = (lambda: teller.transfer("alice", "bob", 10, "late", issued=issued)) \
        if operation == "transfer" else (lambda: teller.deposit("alice", 10, "late", issued))
    error = refusal(call)
    assert error.code == Code.FAILED_PRECONDITION and not error.outcome_unknown
    assert error.message.startswith(IDEMPOTENCY_EXPIRED)
    assert f"longer than the {WINDOW} s" in error.message and "nothing was changed" in error.message
    assert (teller.balance("alice"), teller.balance("bob")) == (1000, 500)


@pytest.mark.parametrize("issued, fragment", [
    (0, "issued_at_unix_ms is required"),
    (-5, "issued_at_unix_ms is required"),
    ("future", "in the future"),
])
def test_a_missing_or_future_issue_time_is_invalid_argument(teller, issued, fragment):
    if issued == "future":
        issued = teller.now_ms() + int(IDEMPOTENCY_GRACE_SECONDS * 1000) + 1000
    error = refusal(teller.transfer, "alice", "bob", 10, "k", issued=issued)
    assert error.code == Code.INVALID_ARGUMENT and fragment in error.message
    assert teller.balance("alice") == 1000


def test_a_key_retried_with_another_issue_time_is_already_exists(teller):
    teller.transfer("alice", "bob", 10, "k1")
    error = refusal(teller.transfer, "alice", "bob", 10, "k1", issued=teller.now_ms() - 1000)
    assert error.code == Code.ALREADY_EXISTS
    assert teller.balance("alice") == 990


def test_the_sweep_deletes_records_only_after_window_and_grace_and_oldest_first(teller):
    for n in range(6):
        teller.transfer("alice", "bob", 1, f"old-{n}")
    teller.clock.now += 100
    teller.transfer("alice", "bob", 1, "young")
    assert teller.idempotency_keys() == 14  # a record and an index entry each

    teller.clock.now += WINDOW - 100 + 30  # the old ones' windows closed, grace not over
    assert teller.sweep() == 0
    teller.clock.now += IDEMPOTENCY_GRACE_SECONDS - 30 + 1
    assert teller.sweep(records=4, per_txn=3) == 4  # bounded per pass
    assert teller.sweep() == 2
    assert teller.idempotency_keys() == 2  # only "young" is left


def test_a_retry_after_its_record_was_swept_is_refused_not_applied_twice(teller):
    issued = teller.now_ms()
    teller.transfer("alice", "bob", 10, "k1")
    teller.clock.now += WINDOW + IDEMPOTENCY_GRACE_SECONDS + 1
    assert teller.sweep() == 1 and teller.idempotency_keys() == 0
    error = refusal(teller.transfer, "alice", "bob", 10, "k1", issued=issued)
    assert error.code == Code.FAILED_PRECONDITION and error.message.startswith(IDEMPOTENCY_EXPIRED)
    assert (teller.balance("alice"), teller.balance("bob")) == (990, 510)


def test_the_sweep_never_deletes_a_record_written_again_after_it_read_the_index(teller):
    """Two sweepers: one read the index, the other deleted the record, and the key was
    reused; the first one's deletion must not take the new record."""
    teller.transfer("alice", "bob", 10, "k1")
    teller.clock.now += WINDOW + IDEMPOTENCY_GRACE_SECONDS + 1
    stale = teller.data.read(chain_pb2.ReadRequest(prefix=IDEMPOTENCY_EXPIRY_PREFIX))
    assert teller.sweep() == 1
    teller.transfer("alice", "bob", 10, "k1")  # a new request: new issue time, new window
    (entry,) = stale.found
    record = IDEMPOTENCY_PREFIX + entry.key.rsplit("/", 1)[1]
    reply = teller.data.apply(chain_pb2.TxnRequest(
        compares=[chain_pb2.Compare(key=entry.key, target=chain_pb2.Compare.VERSION,
                                    version=entry.version),
                  chain_pb2.Compare(key=record, target=chain_pb2.Compare.VERSION,
                                    version=entry.version)],
        deletes=[entry.key, record]))
    assert not reply.succeeded  # what sweep_idempotency sends: it fails, the record stays
    assert teller.transfer("alice", "bob", 10, "k1").replayed


def test_a_resend_after_the_window_closed_is_unknown_not_retried(teller):
    issued = teller.now_ms()

    def late(data: MemoryData) -> None:
        teller.clock.now += WINDOW + 1  # the first Txn took the whole window

    txns = teller.data.txns
    teller.data.before_txn = late
    teller.data.outages = ["lost"]
    error = refusal(teller.transfer, "alice", "bob", 10, "k1", issued=issued)
    assert error.code == Code.UNAVAILABLE and error.outcome_unknown
    assert "idempotency window has passed" in error.message
    assert teller.data.txns == txns + 1  # not resent
