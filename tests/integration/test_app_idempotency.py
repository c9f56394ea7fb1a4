"""Idempotency records expire over a real data tier: the window is told to the client, the
sweep deletes expired records, and a retry that outlived its record is refused, never
applied twice.

What a user would notice: a data tier whose key count only grows under bank load, or a
late retry of a transfer moving the money a second time.
"""

from __future__ import annotations

import time

import grpc
import pytest

from distlab.history import INFO, Op
from distlab.tiers.bank import BankConfig, BankWorkload
from nodes.app import bank as bank_core
from nodes.rpc import bank_pb2, bank_pb2_grpc, chain_pb2, control_pb2
from tests.integration.app_support import AppTier

REPLICA_LIMITS = {"DATA_MAX_TXN_OPS": "16", "DATA_MAX_READ_LIMIT": "1000"}
APP_TIER = AppTier(REPLICA_LIMITS, APP_AUDIT_MAX_ACCOUNTS="1000",
                   APP_IDEMPOTENCY_WINDOW_SECONDS="1", APP_IDEMPOTENCY_SWEEP_SECONDS="0.2",
                   APP_IDEMPOTENCY_SWEEP_RECORDS="8",
                   APP_IDEMPOTENCY_SWEEP_TXN_RECORDS="4")


def idempotency_keys(tier) -> int:
    reply = tier.data("data-2").Read(chain_pb2.ReadRequest(prefix="bank/idempotency",
                                                           limit=1000), timeout=5)
    return len(reply.found)


@pytest.mark.parametrize("architecture", ["threaded", "async"])
def test_records_are_swept_after_their_window_and_a_late_retry_is_refused(lab, monkeypatch,
                                                                         architecture):
    # The grace a record outlives its window by (60 s in production), short for the test;
    # the nodes run in this process, so they read this value.
    monkeypatch.setattr(bank_core, "IDEMPOTENCY_GRACE_SECONDS", 0.5)
    tier = APP_TIER.start_tier(lab, ("data-1", "data-2"))
    app = APP_TIER.start_app(lab, tier, "app-1", architecture)
    stub = bank_pb2_grpc.BankStub(lab.channel(app))
    for name in ("a", "b"):
        stub.OpenAccount(bank_pb2.OpenAccountRequest(account=name, initial_cents=1000),
                         timeout=10)
    status = lab.control(app).Status(control_pb2.StatusRequest(), timeout=5)
    assert status.state["idempotency_window_seconds"] == "1"

    first = None
    for n in range(20):
        request = bank_pb2.TransferRequest(from_account="a", to_account="b", amount_cents=1,
                                           idempotency_key=f"t{n}",
                                           issued_at_unix_ms=int(time.time() * 1000))
        reply = stub.Transfer(request, timeout=10)
        assert reply.idempotency_window_seconds == 1
        first = first or request

    # Each pass deletes at most 8 records; 20 records (40 keys with their index) all go.
    lab.wait_until(lambda: idempotency_keys(tier) == 0, timeout=20,
                   what="every idempotency record swept")
    assert lab.scrape(app).get("distlab_bank_idempotency_swept_total") == 20

    with pytest.raises(grpc.RpcError) as caught:
        stub.Transfer(first, timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details().startswith(bank_core.IDEMPOTENCY_EXPIRED)
    balances = stub.Audit(bank_pb2.AuditRequest(), timeout=10).balances
    assert (balances["a"], balances["b"]) == (980, 1020)  # applied once each, never again


def test_the_bank_workload_leaves_a_transfer_past_its_window_unresolved(lab, monkeypatch):
    """An indefinite transfer whose window passed before the settle replayed it: the bank
    can no longer say whether it applied, so the checker must say unknown, not count it
    as not applied (which could call a correct bank invalid, or miss a lost transfer)."""
    monkeypatch.setattr(bank_core, "IDEMPOTENCY_GRACE_SECONDS", 0.5)
    tier = APP_TIER.start_tier(lab, ("data-1",))
    app = APP_TIER.start_app(lab, tier, "app-1")
    workload = BankWorkload(lab.channel(app), BankConfig(accounts=2, max_ops=1, seconds=5))
    workload.setup()
    source, target = workload.accounts
    args = {"from": source, "to": target, "amount": 5, "key": "timed-out-long-ago",
            "issued_at_ms": int(time.time() * 1000) - 10_000}
    workload.history.add(Op(0, "transfer", args, 0.0, 1.0, INFO, error="DEADLINE_EXCEEDED"))

    outcome = workload.settle(deadline_seconds=10)
    assert outcome.unresolved == [args] and outcome.applied == []
    assert workload.check().valid is None
