"""The data tier's deliberately broken mode, ack_at=head: the checkers must catch it.

With ack_at=head the head answers a Txn before the rest of the chain holds it.
These tests show what a user would then see (a read at the tail missing a write
just acknowledged; an acknowledged write gone after the head dies), that the
correct mode, ack_at=tail, shows neither under the same fault, and that the
mode is switched at run time through Control's Reconfigure and refused when bad.
"""

import grpc
import pytest

from nodes.data.client import DataUnavailable
from nodes.rpc import chain_pb2, control_pb2
from tests.integration.chain_support import start_tier

Rule = control_pb2.FaultRule
FORWARD = "/distlab.chain.Replica/Forward"
PAIRS = 200
# The middle replica holds each Forward this long: a read at the tail inside that window
# sees whether the head answered before the chain held the write.
FORWARD_DELAY_SECONDS = 0.3
TRIES = 10


@pytest.fixture
def tier(lab):
    tier = start_tier(lab)
    yield tier
    tier.close()


def reconfigure(tier, name, **settings):
    reply = tier.lab.control(tier.replicas[name]).Reconfigure(
        control_pb2.ReconfigureRequest(settings=settings), timeout=5)
    return dict(reply.settings)


def slow_forward_into(tier, name):
    tier.lab.control(tier.replicas[name]).AddFaultRule(
        Rule(method=FORWARD, action=Rule.DELAY, delay_seconds=FORWARD_DELAY_SECONDS), timeout=5)


def write_then_read(client, key, value):
    """Write `value`, read `key` back at once; the value read (None when absent)."""
    assert client.txn(chain_pb2.TxnRequest(
        puts=[chain_pb2.KeyValue(key=key, value=value)])).succeeded
    found = client.read(chain_pb2.ReadRequest(keys=[key])).found
    return found[0].value if found else None


def stale_reads(client, key, tries):
    """How many of `tries` write-then-read pairs on `key` returned something but the write."""
    return sum(write_then_read(client, key, b"%d" % n) != b"%d" % n for n in range(tries))


def test_acknowledged_at_the_tail_a_read_right_after_never_misses_the_write(tier):
    client = tier.client()
    assert stale_reads(client, "fresh", PAIRS) == 0
    assert tier.lab.scrape(tier.replicas["data-1"]).get("distlab_data_early_acks_total") == 0


def test_acknowledged_at_the_head_a_read_right_after_can_miss_the_write(tier):
    assert reconfigure(tier, "data-1", ack_at="head") == {"ack_at": "head"}
    assert tier.status(tier.replicas["data-1"])["ack_at"] == "head"
    slow_forward_into(tier, "data-2")
    client = tier.client()
    assert stale_reads(client, "stale", TRIES) > 0
    head = tier.lab.scrape(tier.replicas["data-1"])
    assert head.get("distlab_data_early_acks_total") == TRIES


def test_the_committer_passes_an_early_acknowledged_write_on_by_itself(lab):
    """No later Txn and no membership check (an hour apart here) push it along."""
    tier = start_tier(lab, replica_env={"DATA_MEMBERSHIP_CHECK_SECONDS": "3600"})
    try:
        reconfigure(tier, "data-1", ack_at="head")
        slow_forward_into(tier, "data-2")
        client = tier.client()
        assert write_then_read(client, "later", b"1") is None
        tier.lab.wait_until(lambda: client.read(chain_pb2.ReadRequest(keys=["later"])).found,
                            what="the tail holding the early-acknowledged write")
        tail = tier.lab.scrape(tier.replicas["data-3"])
        assert tail.value("distlab_chain_applied_seq") == 1
    finally:
        tier.close()


def test_back_at_the_tail_the_same_fault_shows_no_stale_read(tier):
    reconfigure(tier, "data-1", ack_at="head")
    slow_forward_into(tier, "data-2")
    client = tier.client()
    assert stale_reads(client, "switch", TRIES) > 0

    assert reconfigure(tier, "data-1", ack_at="tail") == {"ack_at": "tail"}
    assert "ack_at" not in tier.status(tier.replicas["data-1"])
    early = tier.lab.scrape(tier.replicas["data-1"]).get("distlab_data_early_acks_total")
    assert stale_reads(client, "switch", TRIES) == 0
    assert tier.lab.scrape(tier.replicas["data-1"]).get("distlab_data_early_acks_total") == early


def test_killing_the_head_loses_a_write_it_acknowledged_early(tier):
    """data-2 refuses every Forward, so nothing gets past the head; the head acknowledges
    anyway, then dies: the write a user was told is done is not there."""
    client = tier.client(timeout=2, attempts=2)
    client.txn(chain_pb2.TxnRequest(puts=[chain_pb2.KeyValue(key="k", value=b"old")]))
    reconfigure(tier, "data-1", ack_at="head")
    tier.lab.control(tier.replicas["data-2"]).AddFaultRule(
        Rule(method=FORWARD, action=Rule.ERROR, status_code=grpc.StatusCode.UNAVAILABLE.value[0]),
        timeout=5)
    assert client.txn(chain_pb2.TxnRequest(
        puts=[chain_pb2.KeyValue(key="k", value=b"new")])).succeeded
    tier.kill("data-1")
    tier.wait_for_chain(["data-2", "data-3"])
    found = tier.client().read(chain_pb2.ReadRequest(keys=["k"])).found
    assert [entry.value for entry in found] == [b"old"]  # the acknowledged b"new" is lost


def test_acknowledged_at_the_tail_the_same_fault_never_reports_success(tier):
    client = tier.client(timeout=2, attempts=2)
    tier.lab.control(tier.replicas["data-2"]).AddFaultRule(
        Rule(method=FORWARD, action=Rule.ERROR, status_code=grpc.StatusCode.UNAVAILABLE.value[0]),
        timeout=5)
    with pytest.raises(DataUnavailable) as caught:
        client.txn(chain_pb2.TxnRequest(puts=[chain_pb2.KeyValue(key="k", value=b"new")]))
    assert not caught.value.definite  # "may have been applied", never "done"


@pytest.mark.parametrize("settings, fragment", [
    ({"ack_at": "middle"}, "ack_at 'middle' is not one of tail"),
    ({"ack_at": ""}, "ack_at '' is not one of tail"),
    ({"ack_at": "head", "speed": "fast"}, "unknown setting 'speed'"),
])
def test_a_bad_reconfigure_is_refused_and_changes_nothing(tier, settings, fragment):
    with pytest.raises(grpc.RpcError) as caught:
        reconfigure(tier, "data-1", **settings)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()
    assert reconfigure(tier, "data-1") == {"ack_at": "tail"}
    assert "ack_at" not in tier.status(tier.replicas["data-1"])


def test_the_broken_mode_can_be_set_at_start(lab):
    tier = start_tier(lab, ("data-1",), replica_env={"DATA_ACK_AT": "head"})
    try:
        assert tier.status(tier.replicas["data-1"])["ack_at"] == "head"
        assert reconfigure(tier, "data-1") == {"ack_at": "head"}
    finally:
        tier.close()
