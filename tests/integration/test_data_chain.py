"""The data tier over real gRPC, all replicas up: writes, compares, consistent reads, bad input."""

import threading

import grpc
import pytest

from nodes.data.client import DataUnavailable
from nodes.rpc import chain_pb2
from tests.integration.chain_support import put, start_tier

VERSION, VALUE = chain_pb2.Compare.VERSION, chain_pb2.Compare.VALUE


@pytest.fixture(scope="module")
def tier(shared_lab):
    """One chain data-1 -> data-2 -> data-3 for this module's tests (each uses its own keys)."""
    tier = start_tier(shared_lab)
    yield tier
    tier.close()


@pytest.fixture(scope="module")
def client(tier):
    return tier.client()


def read(client, *keys, prefix=""):
    reply = client.read(chain_pb2.ReadRequest(keys=keys, prefix=prefix))
    return {entry.key: (entry.value, entry.version) for entry in reply.found}


def test_acknowledged_writes_are_on_every_replica_and_readable_at_the_tail(tier, client):
    seqs = [client.txn(put((f"basic/{i}", b"v%d" % i))).seq for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert read(client, prefix="basic/") == {f"basic/{i}": (b"v%d" % i, seqs[i])
                                             for i in range(5)}
    # The head answered only after the tail applied: every replica already holds it.
    for node in tier.replicas.values():
        assert int(tier.status(node)["last_seq"]) >= seqs[-1]


def test_a_txn_applies_only_when_every_compare_holds(client):
    first = client.txn(put(("cas/a", b"1")))
    assert first.succeeded
    absent = chain_pb2.Compare(key="cas/new", target=VERSION, version=0)
    stale = chain_pb2.Compare(key="cas/a", target=VERSION, version=first.seq - 1)
    current = chain_pb2.Compare(key="cas/a", target=VERSION, version=first.seq)
    same_value = chain_pb2.Compare(key="cas/a", target=VALUE, value=b"1")
    other_value = chain_pb2.Compare(key="cas/a", target=VALUE, value=b"2")

    failed = client.txn(put(("cas/a", b"lost"), ("cas/new", b"lost"), compares=[absent, stale]))
    assert (failed.succeeded, failed.seq) == (False, 0)
    assert client.txn(put(("cas/b", b"x"), compares=[other_value])).succeeded is False
    assert read(client, "cas/a", "cas/new", "cas/b") == {"cas/a": (b"1", first.seq)}

    done = client.txn(put(("cas/a", b"2"), ("cas/new", b"n"),
                          compares=[absent, current, same_value]))
    assert done.succeeded
    assert done.seq == first.seq + 1  # a failed compare consumed no seq
    assert read(client, "cas/a", "cas/new") == {"cas/a": (b"2", done.seq),
                                                 "cas/new": (b"n", done.seq)}

    deleted = client.txn(chain_pb2.TxnRequest(deletes=["cas/new"], compares=[
        chain_pb2.Compare(key="cas/new", target=VERSION, version=done.seq)]))
    assert deleted.succeeded
    assert read(client, "cas/new") == {}
    assert client.txn(chain_pb2.TxnRequest(compares=[absent])).succeeded  # compare only


def test_a_prefix_read_sees_one_state_while_transfers_run(client):
    """The bank's audit: money moves between accounts, every read must sum to the total."""
    accounts = [f"bank/{i}" for i in range(6)]
    client.txn(put(*[(account, b"100") for account in accounts]))
    stop = threading.Event()
    errors = []

    def transfer(worker: int):
        step = 0
        while not stop.is_set() and step < 200:
            step += 1
            source, target = accounts[(worker + step) % 6], accounts[(worker + 2 * step + 1) % 6]
            if source == target:
                continue
            state = read(client, source, target)
            (source_value, source_version), (target_value, target_version) = \
                state[source], state[target]
            compares = [chain_pb2.Compare(key=source, target=VERSION, version=source_version),
                        chain_pb2.Compare(key=target, target=VERSION, version=target_version)]
            try:
                client.txn(put((source, b"%d" % (int(source_value) - 1)),
                               (target, b"%d" % (int(target_value) + 1)), compares=compares))
            except DataUnavailable as exc:  # nothing fails here, but record it if it does
                errors.append(exc)

    workers = [threading.Thread(target=transfer, args=(n,)) for n in range(3)]
    for worker in workers:
        worker.start()
    audits = []
    try:
        for _ in range(60):
            reply = client.read(chain_pb2.ReadRequest(prefix="bank/"))
            audits.append((sum(int(entry.value) for entry in reply.found), len(reply.found)))
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert not errors
    assert set(audits) == {(600, 6)}


def test_only_the_head_takes_txns_and_only_the_tail_reads(tier):
    with pytest.raises(grpc.RpcError) as caught:
        tier.data("data-2").Txn(put(("k", b"v")), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not the head" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        tier.data("data-1").Read(chain_pb2.ReadRequest(keys=["k"]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not the tail" in caught.value.details()


@pytest.mark.parametrize("request_, fragment", [
    (put(("", b"v")), "put key must not be empty"),
    (put(("k" * 257, b"v")), "the limit is 256"),
    (put(("k", b"x" * 1025)), "the limit is 1024"),
    (put(*[(f"k{i}", b"") for i in range(9)]), "the limit is 8"),
    (put(("k", b"1"), ("k", b"2")), "written twice"),
    (chain_pb2.TxnRequest(compares=[chain_pb2.Compare(key="k")]), "needs a target"),
    (chain_pb2.TxnRequest(deletes=["a\nb"]), "printable"),
])
def test_bad_txns_are_refused_and_change_nothing(tier, client, request_, fragment):
    before = tier.status(tier.replicas["data-3"])["last_seq"]
    with pytest.raises(grpc.RpcError) as caught:
        client.txn(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()
    assert tier.status(tier.replicas["data-3"])["last_seq"] == before


@pytest.mark.parametrize("request_, code, fragment", [
    (chain_pb2.ReadRequest(keys=[""]), "INVALID_ARGUMENT", "must not be empty"),
    (chain_pb2.ReadRequest(prefix="p", limit=101), "INVALID_ARGUMENT", "above the cap of 100"),
    (chain_pb2.ReadRequest(keys=[f"k{i}" for i in range(101)]), "INVALID_ARGUMENT",
     "the limit is 100"),
])
def test_bad_reads_are_refused(client, request_, code, fragment):
    with pytest.raises(grpc.RpcError) as caught:
        client.read(request_)
    assert caught.value.code().name == code
    assert fragment in caught.value.details()


def test_a_large_prefix_read_is_truncated_to_fit_one_message(client):
    for batch in range(10):
        client.txn(put(*[(f"big/{batch}-{i}", b"x" * 1000) for i in range(8)]))
    reply = client.read(chain_pb2.ReadRequest(prefix="big/"))
    assert reply.truncated and 0 < len(reply.found) < 80  # 80 KB do not fit in 64 KiB
    assert client.read(chain_pb2.ReadRequest(prefix="big/", limit=5)).truncated


def test_status_and_metrics_show_the_chain(tier, client):
    client.txn(put(("metrics/k", b"v")))
    head = tier.lab.scrape(tier.replicas["data-1"])
    tail = tier.lab.scrape(tier.replicas["data-3"])
    master = tier.lab.scrape(tier.master)
    assert head.value("distlab_chain_position", position="head") == 1
    assert head.value("distlab_chain_position", position="tail") == 0
    assert tail.value("distlab_chain_position", position="tail") == 1
    assert head.get("distlab_chain_txn_total", result="committed") >= 1
    assert head.get("distlab_chain_forward_seconds_count") >= 1
    assert head.value("distlab_chain_applied_seq") == tail.value("distlab_chain_applied_seq")
    assert master.value("distlab_chain_length") == 3
    assert master.value("distlab_chain_config_epoch") == tier.master_config().epoch
    assert master.get("distlab_chain_reconfigurations_total", reason="join") == 2
    status = tier.status(tier.replicas["data-2"])
    assert status["position"] == "middle"
    assert status["chain"] == "data-1,data-2,data-3"
    assert set(status) == {"position", "epoch", "last_seq", "keys", "chain"}
    assert tier.status(tier.master) == {"epoch": str(tier.master_config().epoch),
                                        "chain": "data-1,data-2,data-3", "members_up": "3"}
