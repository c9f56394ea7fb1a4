"""The data tier when one replica's disk fails (injected ENOSPC and EIO), at every position.

What a user would notice: a Txn acknowledged and then missing (after the
replica is restarted in place and replays its log), one answered "not
applied" that is there anyway, or a head that acknowledges what some replica
does not hold durably.
"""

import errno
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

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
    versions, while the middle's disk fills up and then the head's fsync fails."""
    tier = start_tier(lab, master_env=NEVER_REMOVE)
    client = tier.client(timeout=2, attempts=4)
    client.txn(put(("a", b"100"), ("b", b"0")))
    acked = maybe = acked_after_restart = 0
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
            try:
                now = balances(client)
                (a, a_version), (b, b_version) = now["a"], now["b"]
                reply = client.txn(chain_pb2.TxnRequest(
                    compares=[chain_pb2.Compare(key="a", target=chain_pb2.Compare.VERSION,
                                                version=a_version),
                              chain_pb2.Compare(key="b", target=chain_pb2.Compare.VERSION,
                                                version=b_version)],
                    puts=[chain_pb2.KeyValue(key="a", value=b"%d" % (a - 1)),
                          chain_pb2.KeyValue(key="b", value=b"%d" % (b + 1))]))
            except DataUnavailable as exc:
                maybe += not exc.definite
                continue
            acked += reply.succeeded
            acked_after_restart += reply.succeeded and n >= 25
    assert middle.failed_calls == ["write ENOSPC"] and head.failed_calls == ["fsync EIO"]
    final = balances(tier.client())
    assert final["a"][0] + final["b"][0] == 100
    assert acked <= final["b"][0] <= acked + maybe
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
