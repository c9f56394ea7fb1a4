"""The Bank over a real chain-replicated data tier on loopback, in every server architecture:
the same calls get the same answers, audits are consistent snapshots, a transfer whose outcome
was unknown is applied once, and a stateful cursor dies with the server that held it."""

from __future__ import annotations

import re
import threading
import time

import grpc
import pytest

from nodes.rpc import bank_pb2, bank_pb2_grpc, chain_pb2, control_pb2
from tests.integration.app_support import AppTier

TXN = "/distlab.chain.Data/Txn"
Rule = control_pb2.FaultRule
# The chain_support replicas' defaults are small; the bank's Transfer needs 8 ops and a
# Statement page reads up to 101 keys.
REPLICA_LIMITS = {"DATA_MAX_TXN_OPS": "16", "DATA_MAX_READ_LIMIT": "1000"}


APP_TIER = AppTier(REPLICA_LIMITS, APP_AUDIT_MAX_ACCOUNTS=1000)
start_tier, start_app = APP_TIER.start_tier, APP_TIER.start_app
tier, apps = APP_TIER.fixtures()


def bank(lab, node) -> bank_pb2_grpc.BankStub:
    return bank_pb2_grpc.BankStub(lab.channel(node))


def outcome(call, request, prefix: str) -> tuple:
    """What a client sees of one call, with the architecture's account prefix taken out and
    the parts that name the server (served_by, cursor ids, seq) reduced to their shape."""
    try:
        reply = call(request, timeout=10)
    except grpc.RpcError as error:
        return error.code().name, error.details().replace(prefix, "P")
    fields = {}
    for descriptor, value in reply.ListFields():
        if descriptor.name in ("served_by", "cursor"):
            value = bool(value)
        elif descriptor.name == "lines":
            value = [(line.number, line.kind, line.amount_cents,
                      line.counterparty.replace(prefix, "P"), line.balance_cents)
                     for line in value]
        elif isinstance(value, str):
            value = value.replace(prefix, "P")
        fields[descriptor.name] = value
    return "OK", fields


def transcript(stub: bank_pb2_grpc.BankStub, prefix: str) -> list[tuple]:
    """One session of calls covering every method, good and bad input."""
    alice, bob = f"{prefix}alice", f"{prefix}bob"
    issued = int(time.time() * 1000)  # one first-issue time: repeats of a key are retries

    def transfer(source, target, amount, key):
        return outcome(stub.Transfer, bank_pb2.TransferRequest(
            from_account=source, to_account=target, amount_cents=amount,
            idempotency_key=prefix + key, issued_at_unix_ms=issued), prefix)

    def deposit(account, amount, key):
        return outcome(stub.Deposit, bank_pb2.DepositRequest(
            account=account, amount_cents=amount, idempotency_key=prefix + key,
            issued_at_unix_ms=issued), prefix)

    def statement(**page):
        return outcome(stub.Statement, bank_pb2.StatementRequest(account=alice, **page), prefix)

    seen = [
        outcome(stub.OpenAccount, bank_pb2.OpenAccountRequest(account=alice, initial_cents=1000),
                prefix),
        outcome(stub.OpenAccount, bank_pb2.OpenAccountRequest(account=bob), prefix),
        outcome(stub.OpenAccount, bank_pb2.OpenAccountRequest(account=alice, initial_cents=5),
                prefix),
        outcome(stub.OpenAccount, bank_pb2.OpenAccountRequest(account=bob + "x",
                                                              initial_cents=-1), prefix),
        deposit(bob, 250, "d1"), deposit(bob, 250, "d1"), deposit(bob, 251, "d1"),
        deposit(bob + "x", 1, "d2"),
        transfer(alice, bob, 300, "t1"), transfer(alice, bob, 300, "t1"),
        transfer(alice, bob, 301, "t1"), transfer(bob, alice, 10_000, "t2"),
        transfer(alice, alice, 1, "t3"), transfer(alice, bob, 0, "t4"),
        transfer(alice, "nobody", 1, "t5"),
        outcome(stub.Balance, bank_pb2.BalanceRequest(account=alice), prefix),
        outcome(stub.Balance, bank_pb2.BalanceRequest(account=bob + "x"), prefix),
        statement(offset=0), statement(offset=1, limit=5), statement(limit=101),
    ]
    opened = stub.Statement(bank_pb2.StatementRequest(account=alice, cursor="", limit=1),
                            timeout=10)
    following = stub.Statement(bank_pb2.StatementRequest(account=alice, cursor=opened.cursor,
                                                         limit=1), timeout=10)
    seen.append([(line.number, opened.done, following.done) for line in
                 (*opened.lines, *following.lines)])
    seen.append(outcome(stub.Work, bank_pb2.WorkRequest(cpu_millis=1, io_millis=1), prefix))
    return seen


def test_every_architecture_answers_the_same_calls_identically(shared_lab, apps):
    transcripts = {architecture: transcript(bank(shared_lab, node), f"{architecture}-")
                   for architecture, node in apps.items()}
    expected = transcripts["threaded"]
    for architecture, seen in transcripts.items():
        assert seen == expected, architecture
    # ... and those answers are the right ones.
    assert expected[8] == ("OK", {"from_balance_cents": 700, "to_balance_cents": 550,
                                  "idempotency_window_seconds": 300})
    assert expected[9] == ("OK", {"from_balance_cents": 700, "to_balance_cents": 550,
                                  "replayed": True, "idempotency_window_seconds": 300})
    codes = [entry[0] for entry in expected[:17]]
    assert codes == ["OK", "OK", "ALREADY_EXISTS", "INVALID_ARGUMENT", "OK", "OK",
                     "ALREADY_EXISTS", "NOT_FOUND", "OK", "OK", "ALREADY_EXISTS",
                     "FAILED_PRECONDITION", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "NOT_FOUND",
                     "OK", "NOT_FOUND"]
    assert expected[11][1] == "insufficient funds: balance 550 < amount 10000"
    assert expected[17][1]["lines"] == [(0, "open", 1000, "", 1000),
                                        (1, "transfer_out", -300, "Pbob", 700)]
    assert expected[-2] == [(0, False, True), (1, False, True)]

    for architecture, node in apps.items():
        metrics = shared_lab.scrape(node)
        results = {result: metrics.get("distlab_bank_transfers_total", result=result)
                   for result in ("committed", "replayed", "rejected", "failed", "unknown")}
        assert results == {"committed": 1, "replayed": 1, "rejected": 5, "failed": 0,
                           "unknown": 0}, architecture
        assert metrics.value("distlab_bank_cursors_open") == 1


def test_status_names_the_chain_head_first(shared_lab, apps):
    for architecture, node in apps.items():
        state = shared_lab.control(node).Status(control_pb2.StatusRequest(), timeout=5).state
        assert state["chain"] == "data-1 -> data-2", architecture
        assert state["architecture"] == architecture and state["served_by"] == node.name


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_audits_during_concurrent_transfers_always_see_the_same_total(shared_lab, apps,
                                                                     architecture):
    stub = bank(shared_lab, apps[architecture])
    names = [f"audit-{architecture}-{n}" for n in range(4)]
    for name in names:
        stub.OpenAccount(bank_pb2.OpenAccountRequest(account=name, initial_cents=1000),
                         timeout=10)
    total = stub.Audit(bank_pb2.AuditRequest(), timeout=10).total_cents
    errors: list[str] = []

    def move(worker: int) -> None:
        for n in range(15):
            try:
                stub.Transfer(bank_pb2.TransferRequest(
                    from_account=names[(worker + n) % 4], to_account=names[(worker + n + 1) % 4],
                    amount_cents=7, idempotency_key=f"{architecture}-w{worker}-{n}",
                    issued_at_unix_ms=int(time.time() * 1000)), timeout=10)
            except grpc.RpcError as error:
                # Acceptable: an overdraft, or ABORTED when the optimistic retries ran out under
                # this deliberate contention (a definite failure: nothing was applied).
                if error.code() not in (grpc.StatusCode.FAILED_PRECONDITION,
                                        grpc.StatusCode.ABORTED):
                    errors.append(f"{error.code().name}: {error.details()}")

    movers = [threading.Thread(target=move, args=(worker,)) for worker in range(3)]
    for mover in movers:
        mover.start()
    audits = []
    while any(mover.is_alive() for mover in movers):
        audits.append(stub.Audit(bank_pb2.AuditRequest(), timeout=10))
    for mover in movers:
        mover.join()
    assert errors == []
    assert len(audits) > 1
    assert {audit.total_cents for audit in audits} == {total}
    assert [audit.as_of_seq for audit in audits] == sorted(audit.as_of_seq for audit in audits)
    final = stub.Audit(bank_pb2.AuditRequest(), timeout=10)
    assert sum(final.balances[name] for name in names) == 4000
    assert all(final.balances[name] >= 0 for name in names)


def test_a_cursor_is_lost_when_its_server_stops_or_another_server_answers(shared_lab, tier):
    first = start_app(shared_lab, tier, "app-c1")
    stub = bank(shared_lab, first)
    stub.OpenAccount(bank_pb2.OpenAccountRequest(account="paged", initial_cents=10), timeout=10)
    for n in range(4):
        stub.Deposit(bank_pb2.DepositRequest(account="paged", amount_cents=1,
                                             idempotency_key=f"paged-{n}",
                                             issued_at_unix_ms=int(time.time() * 1000)),
                     timeout=10)
    page = stub.Statement(bank_pb2.StatementRequest(account="paged", cursor="", limit=2),
                          timeout=10)
    assert [line.number for line in page.lines] == [0, 1] and page.served_by == "app-c1"

    other = bank(shared_lab, start_app(shared_lab, tier, "app-c2", "async"))
    with pytest.raises(grpc.RpcError) as caught:
        other.Statement(bank_pb2.StatementRequest(account="paged", cursor=page.cursor),
                        timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert re.match(rf"cursor '{re.escape(page.cursor)}' is unknown on app-c2: it was lost "
                    r"\(server restarted or another server answered\)", caught.value.details())

    shared_lab.stop(first)
    restarted = bank(shared_lab, start_app(shared_lab, tier, "app-c1"))
    with pytest.raises(grpc.RpcError) as caught:
        restarted.Statement(bank_pb2.StatementRequest(account="paged", cursor=page.cursor),
                            timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown on app-c1" in caught.value.details()
    # Paging by offset needs no server memory: it goes on where the lost cursor was.
    rest = restarted.Statement(bank_pb2.StatementRequest(account="paged", offset=2), timeout=10)
    assert [line.number for line in rest.lines] == [2, 3, 4] and rest.done


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_a_transfer_whose_outcome_was_unknown_is_applied_once(lab, architecture):
    """The head applies each Txn only after a delay longer than the app's data-tier deadline,
    so the app cannot know whether its transfer happened: it says so, and the client's retry
    with the same key learns the outcome instead of moving the money twice."""
    tier = start_tier(lab, ("data-1",))
    app = start_app(lab, tier, "app-u", architecture, RPC_TIMEOUT_SECONDS=0.5,
                    APP_UNKNOWN_RESENDS=1)
    stub = bank(lab, app)
    for name in ("payer", "payee"):
        stub.OpenAccount(bank_pb2.OpenAccountRequest(account=name, initial_cents=100), timeout=10)
    head = lab.control(tier.replicas["data-1"])
    head.AddFaultRule(Rule(method=TXN, action=Rule.DELAY, delay_seconds=0.8), timeout=5)
    request = bank_pb2.TransferRequest(from_account="payer", to_account="payee", amount_cents=30,
                                       idempotency_key="unknown-1",
                                       issued_at_unix_ms=int(time.time() * 1000))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Transfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "outcome of this transfer is unknown" in caught.value.details()
    assert lab.scrape(app).get("distlab_bank_transfers_total", result="unknown") == 1

    head.ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5)
    retried = stub.Transfer(request, timeout=10)
    assert (retried.from_balance_cents, retried.to_balance_cents) == (70, 130)
    balances = stub.Audit(bank_pb2.AuditRequest(), timeout=10).balances
    assert (balances["payer"], balances["payee"]) == (70, 130)


def test_a_data_tier_that_is_down_gets_unavailable_and_changes_nothing(lab):
    tier = start_tier(lab, ("data-1",))
    app = start_app(lab, tier, "app-d", RPC_TIMEOUT_SECONDS=0.5)
    stub = bank(lab, app)
    stub.OpenAccount(bank_pb2.OpenAccountRequest(account="x", initial_cents=5), timeout=10)
    stub.OpenAccount(bank_pb2.OpenAccountRequest(account="y"), timeout=10)
    tier.kill("data-1")
    for call, request in ((stub.Balance, bank_pb2.BalanceRequest(account="x")),
                          (stub.Transfer, bank_pb2.TransferRequest(
                              from_account="x", to_account="y", amount_cents=1,
                              idempotency_key="down-1",
                              issued_at_unix_ms=int(time.time() * 1000)))):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "data tier unavailable" in caught.value.details()
        assert "nothing was changed" in caught.value.details()
    assert lab.scrape(app).get("distlab_bank_transfers_total", result="failed") == 1


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_each_replica_keeps_only_the_newest_statement_lines(shared_lab, tier, architecture):
    """With APP_BANK_HISTORY_LINES=3 the Txn adding a line drops the oldest kept one, all down
    the chain; a Statement from offset 0 starts at the oldest kept line, and money is intact."""
    app = start_app(shared_lab, tier, f"app-keep-{architecture}", architecture,
                    APP_BANK_HISTORY_LINES=3)
    stub = bank(shared_lab, app)
    payer, payee = f"keep-{architecture}-payer", f"keep-{architecture}-payee"
    for name in (payer, payee):
        stub.OpenAccount(bank_pb2.OpenAccountRequest(account=name, initial_cents=100), timeout=10)
    for n in range(6):
        stub.Transfer(bank_pb2.TransferRequest(
            from_account=payer, to_account=payee, amount_cents=n + 1,
            idempotency_key=f"keep-{architecture}-{n}",
            issued_at_unix_ms=int(time.time() * 1000)), timeout=10)
    reply = tier.data("data-2").Read(chain_pb2.ReadRequest(  # the tail: reads go there
        prefix=f"bank/history/{payer}/", limit=100), timeout=10)
    assert [found.key[-2:] for found in reply.found] == ["04", "05", "06"]
    # The deletes travel down the chain with the puts: the head holds as many keys.
    head, tail = (tier.status(tier.replicas[name])["keys"] for name in ("data-1", "data-2"))
    assert head == tail
    page = stub.Statement(bank_pb2.StatementRequest(account=payer, offset=0), timeout=10)
    assert [(line.number, line.amount_cents, line.balance_cents) for line in page.lines] == \
        [(4, -4, 90), (5, -5, 85), (6, -6, 79)] and page.done
    balances = stub.Audit(bank_pb2.AuditRequest(), timeout=10).balances
    assert (balances[payer], balances[payee]) == (79, 121)
