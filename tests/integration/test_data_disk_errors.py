"""The data tier when one replica's disk fails (injected ENOSPC and EIO), at every position.

What a user would notice: a Txn acknowledged and then missing (after the
replica is restarted in place and replays its log), one answered "not
applied" that is there anyway, or a head that acknowledges what some replica
does not hold durably. The histories are judged by the register checker
(chain_support.Writer) and the bank checker, as a scenario's would be.
"""

import errno
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from distlab.history import FAIL, INFO, OK, History, Op
from distlab.tiers.bank_checker import BankOutcome, check_bank
from nodes.data.client import DataUnavailable
from nodes.rpc import chain_pb2
from tests.integration.chain_support import Writer, put, start_tier
from tests.support.disk import FailingDisk

NEVER_REMOVE = {"CHAIN_CHECK_FALL": "100000"}  # the stopped replica is restarted in place
SERVING, NOT_SERVING = HealthCheckResponse.SERVING, HealthCheckResponse.NOT_SERVING


def wal_directory(tier, name: str) -> Path:
    return Path(tier.data_dirs[name]) / name


@pytest.mark.parametrize("victim", ["data-1", "data-2", "data-3"],
                         ids=["head", "middle", "tail"])
def test_no_acknowledged_txn_is_lost_to_a_failing_disk(lab, victim):
    tier = start_tier(lab, master_env=NEVER_REMOVE)
    with Writer(tier.client(timeout=2, attempts=4), "w/") as writer, \
            FailingDisk(wal_directory(tier, victim), "chain.wal") as disk:
        writer.wait_for_more(10, lab)
        disk.fail_next_write(errno.ENOSPC, after_bytes=6)
        lab.wait_until(lambda: disk.failed_calls, what="the injected ENOSPC")
        writer.wait_for_more(10, lab)  # the log was cut back: the chain goes on

        disk.fail_next_fsync(errno.EIO)
        lab.wait_until(lambda: "wal_stopped" in tier.status(tier.replicas[victim]),
                       what="the victim's log stopped")
        tier.kill(victim)
        tier.start_replica(victim)  # in place: it replays its log and keeps its position
        tier.wait_for_chain(["data-1", "data-2", "data-3"])
        writer.wait_for_more(10, lab)
    writer.check(tier.client())
    assert disk.failed_calls == ["write ENOSPC", "fsync EIO"]

    # Every replica holds the same history: none came back with a shorter log.
    final = tier.client().txn(put(("final", b"1")))
    lab.wait_until(lambda: {tier.status(node)["last_seq"] for node in tier.replicas.values()}
                   == {str(final.seq)}, what="every replica at the last seq")


def test_the_head_answers_a_txn_its_log_could_not_take_as_not_applied(lab):
    tier = start_tier(lab, ("data-1", "data-2"))
    client = tier.client(attempts=1)
    client.txn(put(("k", b"before")))
    with FailingDisk(wal_directory(tier, "data-1"), "chain.wal") as disk:
        disk.fail_next_write(errno.EIO, after_bytes=3)
        with pytest.raises(grpc.RpcError) as caught:
            tier.data("data-1").Txn(put(("k", b"lost")), timeout=5)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert caught.value.details().startswith("not applied") and "EIO" in caught.value.details()
    reply = tier.data("data-2").Read(chain_pb2.ReadRequest(keys=["k"]), timeout=5)
    assert [entry.value for entry in reply.found] == [b"before"]
    assert client.txn(put(("k", b"after"))).succeeded


def balances(client) -> dict[str, tuple[int, int]]:
    reply = client.read(chain_pb2.ReadRequest(keys=["a", "b"]))
    return {entry.key: (int(entry.value), entry.version) for entry in reply.found}


def test_transfers_keep_the_total_and_every_acknowledged_one_through_disk_errors(lab):
    """The bank invariant: transfers move 1 from a to b, each guarded by compares on both
    versions, while the middle's disk fills up and then the head's fsync fails. The bank
    checker judges the history: every read sums to 100, none is negative, and the final
    balances are the opening ones plus every applied transfer."""
    tier = start_tier(lab, master_env=NEVER_REMOVE)
    client = tier.client(timeout=2, attempts=4)
    client.txn(put(("a", b"100"), ("b", b"0")))
    history, transfer = History(), {"from": "a", "to": "b", "amount": 1}
    acked, maybe, acked_after_restart = [], [], 0

    def record(name: str, invoked: float, kind: str, **fields) -> None:
        history.add(Op(0, name, fields.pop("args", {}), invoked, history.now(), kind,
                       **fields))

    with FailingDisk(wal_directory(tier, "data-2"), "chain.wal") as middle, \
            FailingDisk(wal_directory(tier, "data-1"), "chain.wal") as head:
        for n in range(40):
            if n == 10:
                middle.fail_next_write(errno.ENOSPC, after_bytes=4)
            if n == 20:
                head.fail_next_fsync(errno.EIO)
            if n == 25:  # the head stopped acknowledging: restart it in place
                tier.kill("data-1")
                tier.start_replica("data-1")
                tier.wait_for_chain(["data-1", "data-2", "data-3"])
            invoked = history.now()
            try:
                now = balances(client)
            except DataUnavailable as exc:
                record("audit", invoked, FAIL, error=str(exc))
                continue
            record("audit", invoked, OK, result={key: now[key][0] for key in now})
            (a, a_version), (b, b_version) = now["a"], now["b"]
            invoked = history.now()
            try:
                reply = client.txn(chain_pb2.TxnRequest(
                    compares=[chain_pb2.Compare(key="a", target=chain_pb2.Compare.VERSION,
                                                version=a_version),
                              chain_pb2.Compare(key="b", target=chain_pb2.Compare.VERSION,
                                                version=b_version)],
                    puts=[chain_pb2.KeyValue(key="a", value=b"%d" % (a - 1)),
                          chain_pb2.KeyValue(key="b", value=b"%d" % (b + 1))]))
            except DataUnavailable as exc:
                record("transfer", invoked, FAIL if exc.definite else INFO, args=transfer,
                       error=str(exc))
                if not exc.definite:
                    maybe.append(transfer)
                continue
            # A failed compare applied nothing: a definite failure.
            record("transfer", invoked, OK if reply.succeeded else FAIL, args=transfer)
            if reply.succeeded:
                acked.append(transfer)
                acked_after_restart += n >= 25
    assert middle.failed_calls == ["write ENOSPC"] and head.failed_calls == ["fsync EIO"]
    final = {key: value for key, (value, _) in balances(tier.client()).items()}
    # Every transfer moves the same 1 cent, so how many of the indefinite ones were applied
    # is all there is to know of them: the final balance of b says it.
    applied_maybe = final["b"] - len(acked)
    assert 0 <= applied_maybe <= len(maybe), (final, len(acked), len(maybe))
    verdict = check_bank(history, BankOutcome(
        accounts=["a", "b"], initial={"a": 100, "b": 0}, final=final,
        applied=acked + maybe[:applied_maybe], unresolved=[]))
    assert verdict.valid is True, verdict.problems
    assert verdict.figures["audits_checked"] >= 30
    assert acked_after_restart > 0  # the restarted head took transfers again


def test_a_replica_whose_log_stopped_is_not_serving_and_the_chain_goes_on_without_it(lab):
    tier = start_tier(lab)  # the master's usual failure detection: 2 failed checks
    victim = tier.replicas["data-2"]
    with Writer(tier.client(timeout=2, attempts=4), "w/") as writer, \
            FailingDisk(wal_directory(tier, "data-2"), "chain.wal") as disk:
        writer.wait_for_more(10, lab)
        assert lab.health(victim).Check(HealthCheckRequest(), timeout=5).status == SERVING
        disk.fail_next_fsync(errno.EIO)
        lab.wait_until(lambda: lab.health(victim).Check(HealthCheckRequest(),
                                                        timeout=5).status == NOT_SERVING,
                       what="the stopped replica reporting NOT_SERVING")
        assert "wal_stopped" in tier.status(victim)
        tier.wait_for_chain(["data-1", "data-3"])  # routed around, not stalled behind it
        writer.wait_for_more(20, lab)
    writer.check(tier.client())
    assert disk.failed_calls == ["fsync EIO"]
