"""A data replica migrated live into a spare (MigrateOut/MigrateIn, Master.Replace) while
bank-style transfers and reads run: the middle, then the head, then the tail, each into a
fresh spare. What a user would notice: a lost acknowledged write, money created or lost, a
read older than a write acknowledged before it began, or a moved replica still serving.
"""

from __future__ import annotations

import random
import threading
import time

import grpc
import pytest

from nodes.data.client import DataUnavailable
from nodes.rpc import chain_pb2
from tests.integration.chain_support import start_tier
from tests.integration.conftest import address_of

ACCOUNTS = [f"acct-{n}" for n in range(6)]
START = 100


class Bank:
    """Transfers (compare-and-set on both accounts' versions) and whole-bank reads, in
    threads; records acknowledged seqs with their completion times and every read."""

    def __init__(self, tier, workers: int = 2) -> None:
        self.tier = tier
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: list[tuple[float, int, dict[str, bytes]]] = []  # (completed, seq, puts)
        self.reads: list[tuple[float, int, dict[str, int]]] = []    # (invoked, seq, balances)
        self.problems: list[str] = []
        self.threads = [threading.Thread(target=self._transfers, args=(n,))
                        for n in range(workers)]
        self.threads.append(threading.Thread(target=self._reader))

    def __enter__(self) -> Bank:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _transfers(self, seed: int) -> None:
        client = self.tier.client(timeout=5.0, attempts=12)
        rng = random.Random(seed)
        while not self.stop.is_set():
            a, b = rng.sample(ACCOUNTS, 2)
            try:
                found = {e.key: e for e in client.read(chain_pb2.ReadRequest(keys=[a, b])).found}
                amount = rng.randint(1, 5)
                puts = {a: b"%d" % (int(found[a].value) - amount),
                        b: b"%d" % (int(found[b].value) + amount)}
                reply = client.txn(chain_pb2.TxnRequest(
                    compares=[chain_pb2.Compare(key=k, target=chain_pb2.Compare.VERSION,
                                                version=found[k].version) for k in (a, b)],
                    puts=[chain_pb2.KeyValue(key=k, value=v) for k, v in puts.items()]))
            except DataUnavailable:
                continue
            if reply.succeeded:
                with self.lock:
                    self.acked.append((time.monotonic(), reply.seq, puts))

    def _reader(self) -> None:
        client = self.tier.client(timeout=5.0, attempts=12)
        while not self.stop.is_set():
            invoked = time.monotonic()
            try:
                reply = client.read(chain_pb2.ReadRequest(keys=ACCOUNTS))
            except DataUnavailable as exc:
                self.problems.append(f"read failed: {exc}")
                continue
            balances = {e.key: int(e.value) for e in reply.found}
            with self.lock:
                self.reads.append((invoked, reply.seq, balances))

    def wait_for_more(self, lab, count: int = 5) -> None:
        target = len(self.acked) + count
        lab.wait_until(lambda: len(self.acked) >= target, timeout=20,
                       what=f"{count} more acknowledged transfers")

    def check(self) -> None:
        """No acknowledged write lost, money conserved in every read, no stale read."""
        final = self.tier.client().read(chain_pb2.ReadRequest(keys=ACCOUNTS))
        balances = {e.key: int(e.value) for e in final.found}
        assert sum(balances.values()) == START * len(ACCOUNTS)
        versions = {e.key: e.version for e in final.found}
        for _, seq, puts in self.acked:
            for key in puts:
                assert versions[key] >= seq, f"acknowledged write {seq} of {key} lost"
        for invoked, seq, read in self.reads:
            assert sum(read.values()) == START * len(ACCOUNTS), f"read at {seq}: {read}"
            before = [s for completed, s, _ in self.acked if completed < invoked]
            assert seq >= max(before, default=0), (
                f"stale read: seq {seq} after write {max(before)} was acknowledged")
        assert len(self.acked) > 0 and len(self.reads) > 0


def migrate(tier, source: str, spare: str, strategy: str, **limits):
    stream = tier.replica(source).MigrateOut(chain_pb2.MigrateReplicaRequest(
        destination=address_of(tier.replicas[spare]), destination_name=spare,
        strategy=strategy, **limits), timeout=60)
    messages = list(stream)
    return messages


def assert_fenced(tier, name: str, moved_to: str) -> None:
    status = tier.status(tier.replicas[name])
    assert status["moved_to"] == moved_to and status["moved"] == "moved"
    with pytest.raises(grpc.RpcError) as caught:
        tier.data(name).Read(chain_pb2.ReadRequest(keys=ACCOUNTS), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"moved to {moved_to}" in caught.value.details()
    assert name not in [m.name for m in tier.master_config().chain]


def seeded_tier(lab, spares=("data-spare-1",)):
    tier = start_tier(lab)
    for spare in spares:
        tier.start_replica(spare, DATA_SPARE="true")
    tier.client().txn(chain_pb2.TxnRequest(puts=[
        chain_pb2.KeyValue(key=k, value=b"%d" % START) for k in ACCOUNTS]))
    for n in range(200):  # enough slots for more than one pre-copy round
        tier.client().txn(chain_pb2.TxnRequest(puts=[
            chain_pb2.KeyValue(key=f"filler-{n}", value=b"x" * 200)]))
    return tier


def test_middle_head_and_tail_move_live_under_transfers_and_nothing_is_lost_or_stale(lab):
    spares = ("data-spare-1", "data-spare-2", "data-spare-3")
    tier = seeded_tier(lab, spares)
    status = tier.status(tier.replicas["data-spare-1"])
    assert status["spare"] == "true" and status["position"] == "standby"
    with pytest.raises(grpc.RpcError) as caught:
        tier.data("data-spare-1").Read(chain_pb2.ReadRequest(keys=ACCOUNTS), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "a spare waiting for a migration" in caught.value.details()
    with Bank(tier) as bank:
        bank.wait_for_more(lab)
        messages = migrate(tier, "data-2", "data-spare-1", "pre-copy", min_rate=20000)
        assert messages[-1].phase == "done" and messages[-1].last_seq > 0
        assert any(m.phase == "live" for m in messages)
        tier.wait_for_chain(["data-1", "data-spare-1", "data-3"])
        assert_fenced(tier, "data-2", "data-spare-1")
        bank.wait_for_more(lab)
        done = migrate(tier, "data-1", "data-spare-2", "stop-and-copy")[-1]
        assert done.phase == "done" and done.epoch == tier.master_config().epoch
        tier.wait_for_chain(["data-spare-2", "data-spare-1", "data-3"])
        assert_fenced(tier, "data-1", "data-spare-2")
        bank.wait_for_more(lab)
        migrate(tier, "data-3", "data-spare-3", "pre-copy")
        tier.wait_for_chain(["data-spare-2", "data-spare-1", "data-spare-3"])
        assert_fenced(tier, "data-3", "data-spare-3")
        bank.wait_for_more(lab)
    bank.check()


def test_bad_requests_are_refused_with_why_and_change_nothing(lab):
    tier = seeded_tier(lab)
    epoch = tier.master_config().epoch
    source = tier.replica("data-2")
    spare = address_of(tier.replicas["data-spare-1"])
    cases = [
        (dict(destination=address_of(tier.replicas["data-2"]), destination_name="data-2"),
         grpc.StatusCode.INVALID_ARGUMENT, "cannot migrate to itself"),
        (dict(destination=address_of(tier.replicas["data-3"]), destination_name="data-3"),
         grpc.StatusCode.FAILED_PRECONDITION, "not a spare"),
        (dict(destination="127.0.0.1:1", destination_name="data-spare-9"),
         grpc.StatusCode.UNAVAILABLE, ""),
        (dict(destination=spare, destination_name="data-spare-1", strategy="post-copy"),
         grpc.StatusCode.INVALID_ARGUMENT, "post-copy"),
        (dict(destination=spare, destination_name="someone-else"),
         grpc.StatusCode.INVALID_ARGUMENT, "not 'someone-else'"),
        (dict(destination="nowhere", destination_name="data-spare-1"),
         grpc.StatusCode.INVALID_ARGUMENT, "host:port"),
    ]
    for fields, code, why in cases:
        with pytest.raises(grpc.RpcError) as caught:
            list(source.MigrateOut(chain_pb2.MigrateReplicaRequest(**fields), timeout=30))
        assert caught.value.code() == code, (fields, caught.value.details())
        assert why in caught.value.details()
    # The spare is no member: it cannot move.
    with pytest.raises(grpc.RpcError) as caught:
        list(tier.replica("data-spare-1").MigrateOut(chain_pb2.MigrateReplicaRequest(
            destination=address_of(tier.replicas["data-2"]), destination_name="data-2"),
            timeout=30))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    config = tier.wait_for_chain(["data-1", "data-2", "data-3"])
    assert config.epoch == epoch
    assert tier.status(tier.replicas["data-spare-1"])["spare"] == "true"
    assert "moved_to" not in tier.status(tier.replicas["data-2"])


def test_a_second_migration_at_once_is_refused_and_a_killed_destination_aborts_cleanly(lab):
    tier = seeded_tier(lab)
    epoch = tier.master_config().epoch
    first = tier.replica("data-2").MigrateOut(chain_pb2.MigrateReplicaRequest(
        destination=address_of(tier.replicas["data-spare-1"]), destination_name="data-spare-1",
        strategy="pre-copy", min_rate=2000, max_rate=2000), timeout=60)
    assert next(first).phase in ("starting", "live")
    lab.wait_until(lambda: tier.status(tier.replicas["data-2"]).get("migration") == "live",
                   what="the first migration running")
    with pytest.raises(grpc.RpcError) as caught:
        list(tier.replica("data-2").MigrateOut(chain_pb2.MigrateReplicaRequest(
            destination=address_of(tier.replicas["data-spare-1"]),
            destination_name="data-spare-1"), timeout=30))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already running" in caught.value.details()
    tier.kill("data-spare-1")
    with pytest.raises(grpc.RpcError) as caught:
        list(first)
    assert caught.value.code() != grpc.StatusCode.UNKNOWN  # aborted, not "outcome unknown"
    assert tier.status(tier.replicas["data-2"])["migration"] == "failed"
    assert "moved_to" not in tier.status(tier.replicas["data-2"])
    config = tier.wait_for_chain(["data-1", "data-2", "data-3"])
    assert config.epoch == epoch
    reply = tier.client().txn(chain_pb2.TxnRequest(puts=[
        chain_pb2.KeyValue(key="after", value=b"1")]))
    assert reply.succeeded
    assert tier.client().read(chain_pb2.ReadRequest(keys=["after"])).found[0].value == b"1"
