"""The tiers lab, for real: a bank workload through the switch while machines are broken.

Every fault test runs the bounded bank workload, breaks something a few
seconds in, and then checks what the clients saw: the bank invariants (the
total never changes, no balance goes negative, every audit sums right), that
no acknowledged transfer is lost, and that the cluster served again by itself
before the workload ended. Failed writes are counted as definite or
indefinite; indefinite ones are resolved by replaying their idempotency key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from distlab.checkers import Verdict
from distlab.errors import DistlabError
from distlab.history import FAIL, OK
from distlab.tiers.bank import BankConfig, BankWorkload
from nodes.rpc import bank_pb2, bank_pb2_grpc
from tests.e2e.conftest import assert_dashboards_answer, eventually, lab_fixture

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
APPS = ("app-1", "app-2", "app-3")
DATA = ("data-1", "data-2", "data-3")

testbed = lab_fixture("tiers")


def state_of(testbed, name: str) -> dict[str, str]:
    """What a machine says of itself through Control.Status ({} when it cannot answer)."""
    try:
        with testbed.machine(name).control() as control:
            return dict(control.status().state)
    except DistlabError:  # stopped: no endpoint; or no answer
        return {}


def chain(testbed) -> dict[str, str]:
    """{position: machine} of the data replicas that answer."""
    return {state["position"]: name for name in DATA
            if (state := state_of(testbed, name)).get("position")}


def full_chain(testbed) -> dict[str, str] | None:
    positions = chain(testbed)
    return positions if {"head", "middle", "tail"} <= set(positions) else None


def switch_stub(testbed) -> bank_pb2_grpc.BankStub:
    return bank_pb2_grpc.BankStub(testbed.client("switch"))


def run_bank(testbed, fault: Callable[[], None] | None = None, *, seconds: float = 14.0,
             fault_at: float = 3.0, seed: int = 1) -> tuple[BankWorkload, Verdict]:
    """Run the bank workload, apply `fault` at `fault_at` s, check the invariants."""
    workload = BankWorkload(testbed.client("switch"), BankConfig(
        accounts=6, processes=4, seconds=seconds, max_ops=20_000, timeout=2.0, seed=seed))
    workload.setup()
    runner = threading.Thread(target=workload.run, daemon=True)
    runner.start()
    if fault is not None:
        while workload.history.now() < fault_at and runner.is_alive():
            time.sleep(0.05)
        fault()
    runner.join(seconds + 30)
    verdict = workload.check()
    print(verdict, verdict.figures)
    assert verdict.valid is True, str(verdict)
    return workload, verdict


def served_again(workload: BankWorkload, *, last_seconds: float = 3.0) -> None:
    """Transfers were acknowledged in the workload's last seconds: it recovered by itself."""
    ops = list(workload.history)
    end = max(op.complete for op in ops)
    late = [op for op in ops if op.op == "transfer" and op.type == OK
            and op.complete > end - last_seconds]
    counts = workload.history.counts()
    assert late, f"no transfer acknowledged in the last {last_seconds} s: {counts}"


def test_every_machine_is_up_and_the_chain_has_head_middle_tail(healed):
    names = {m.name for m in healed.machines() if m.info.state == "running"}
    assert {"switch-1", *APPS, *DATA, "data-master-1", "prometheus-1"} <= names
    positions = eventually(lambda: full_chain(healed), timeout=60, what="a chain of three")
    assert sorted(positions.values()) == sorted(DATA)
    assert state_of(healed, "switch-1").get("policy")


def test_bank_without_faults_keeps_every_invariant(healed):
    workload, verdict = run_bank(healed, seconds=6)
    assert verdict.figures["transfers_acknowledged"] > 0
    assert verdict.figures["transfers_failed_indefinite"] == 0


def test_killing_an_app_server_loses_no_read_and_no_acknowledged_transfer(healed):
    workload, verdict = run_bank(healed, lambda: healed.nemesis.kill("app-2"))
    for name in ("balance", "audit"):
        assert workload.history.of(name, FAIL) == [], f"idempotent {name} failed"
    served_again(workload)


def test_pausing_an_app_server_gives_timeouts_not_resets(healed):
    workload, verdict = run_bank(healed, lambda: healed.nemesis.pause("app-1"))
    served_again(workload)
    errors = [op.error for op in workload.history if op.error]
    assert not any("Connection reset" in error for error in errors), errors


@pytest.mark.parametrize("position", ["head", "tail", "middle"])
def test_killing_a_chain_replica_loses_no_acknowledged_transfer(healed, position):
    victim = eventually(lambda: full_chain(healed), timeout=90, what="a chain of three")[position]
    workload, verdict = run_bank(healed, lambda: healed.nemesis.kill(victim))
    served_again(workload)
    assert victim not in chain(healed).values()


def test_partitioning_the_head_away_loses_no_acknowledged_transfer(healed):
    head = eventually(lambda: full_chain(healed), timeout=90, what="a chain of three")["head"]
    others = [m.name for m in healed.machines()
              if m.info.lab == "tiers" and m.info.state == "running"]
    workload, verdict = run_bank(
        healed, lambda: healed.nemesis.partition("isolate", others, target=head), seconds=16)
    served_again(workload)


def test_restarting_every_data_node_at_once_recovers_from_their_logs(healed):
    eventually(lambda: full_chain(healed), timeout=90, what="a chain of three")

    def restart_all() -> None:
        threads = [threading.Thread(target=healed.nemesis.restart, args=(name,))
                   for name in DATA]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    workload, verdict = run_bank(healed, restart_all, seconds=25)
    served_again(workload)


def test_bad_input_through_the_switch_is_a_clear_error_and_changes_nothing(healed):
    stub = switch_stub(healed)
    for name in ("bad-a", "bad-b"):
        try:
            stub.OpenAccount(bank_pb2.OpenAccountRequest(account=name, initial_cents=1000),
                             timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
    before = stub.Audit(bank_pb2.AuditRequest(), timeout=5).total_cents

    def transfer(**fields):
        fields.setdefault("idempotency_key", f"bad-{time.monotonic_ns()}")
        fields.setdefault("issued_at_unix_ms", int(time.time() * 1000))
        return stub.Transfer(bank_pb2.TransferRequest(**fields), timeout=5)

    cases = [
        (dict(from_account="bad-a", to_account="bad-b", amount_cents=0),
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(from_account="bad-a", to_account="bad-b", amount_cents=-5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(from_account="bad-a", to_account="nobody", amount_cents=5),
         grpc.StatusCode.NOT_FOUND),
        (dict(from_account="bad-a", to_account="bad-a", amount_cents=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(from_account="bad-a", to_account="bad-b", amount_cents=10**9),
         grpc.StatusCode.FAILED_PRECONDITION),
        (dict(from_account="bad-a", to_account="bad-b", amount_cents=2**63 - 1),
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(from_account="bad-a" * 1000, to_account="bad-b", amount_cents=1),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for fields, code in cases:
        with pytest.raises(grpc.RpcError) as raised:
            transfer(**fields)
        assert raised.value.code() == code, (fields, raised.value.details())
        assert raised.value.details(), fields
    transfer(from_account="bad-a", to_account="bad-b", amount_cents=1, idempotency_key="reused")
    with pytest.raises(grpc.RpcError) as raised:
        transfer(from_account="bad-a", to_account="bad-b", amount_cents=2,
                 idempotency_key="reused")
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as raised:
        stub.Balance(bank_pb2.BalanceRequest(account="x" * (8 * 1024 * 1024)), timeout=5)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Audit(bank_pb2.AuditRequest(), timeout=5).total_cents == before
    balances = [stub.Balance(bank_pb2.BalanceRequest(account=n), timeout=5).balance_cents
                for n in ("bad-a", "bad-b")]
    assert sum(balances) == 2000 and balances[0] in (999, 1000)


def statement_pages(stub, account: str, session: str, pages: int):
    metadata = (("x-session-id", session),)
    cursor, served = "", []
    for _ in range(pages):
        reply = stub.Statement(bank_pb2.StatementRequest(account=account, limit=2, cursor=cursor),
                               timeout=5, metadata=metadata)
        cursor = reply.cursor
        served.append(reply.served_by)
    return cursor, served, metadata


def test_stateful_statement_works_with_affinity_until_its_server_dies(healed):
    switch = healed.machine("switch-1")
    with switch.control() as control:
        control.reconfigure({"policy": "consistent_hash"})
    try:
        stub = switch_stub(healed)
        try:
            stub.OpenAccount(bank_pb2.OpenAccountRequest(account="stmt", initial_cents=100),
                             timeout=5)
            for n in range(10):
                stub.Deposit(bank_pb2.DepositRequest(account="stmt", amount_cents=1,
                                                     idempotency_key=f"stmt-{n}",
                                                     issued_at_unix_ms=int(time.time() * 1000)),
                             timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
        cursor, served, metadata = statement_pages(stub, "stmt", "session-42", 3)
        assert len(set(served)) == 1, f"affinity kept the session on one server: {served}"
        healed.nemesis.kill(served[0])

        def cursor_answer() -> grpc.RpcError | None:
            """The error a live server gives for the cursor (None while the switch still
            sends the session to the dead server and the call times out)."""
            try:
                stub.Statement(bank_pb2.StatementRequest(account="stmt", limit=2, cursor=cursor),
                               timeout=3, metadata=metadata)
            except grpc.RpcError as exc:
                transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                return None if exc.code() in transient else exc
            raise AssertionError("a cursor from a dead server was still honoured")

        answer = eventually(cursor_answer, timeout=30, what="a live server answering the cursor")
        assert answer.code() == grpc.StatusCode.NOT_FOUND, answer
        assert "lost" in answer.details()
        # Stateless paging carries its position in the request: any server answers it.
        page = stub.Statement(bank_pb2.StatementRequest(account="stmt", limit=2, offset=4),
                              timeout=5, metadata=metadata)
        assert [line.number for line in page.lines] == [4, 5]
    finally:
        with switch.control() as control:
            control.reconfigure({"policy": "least_outstanding"})


def test_reflection_through_the_switch_lists_the_bank(healed):
    stub = reflection_pb2_grpc.ServerReflectionStub(healed.client("switch"))
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "distlab.bank.Bank" in names


def test_every_tiers_dashboard_query_returns_series(healed):
    run_bank(healed, seconds=5)
    assert_dashboards_answer("tiers")
