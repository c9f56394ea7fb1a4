"""The data tier under failures: killed and restarted replicas, a restarted master, fencing.

Every test checks what a user of the tier would notice: an acknowledged write
missing, a write reported "not applied" that is there anyway, or a tier that
does not serve again without someone acting.
"""

import shutil

import grpc
import pytest

from nodes.data.client import DataUnavailable
from nodes.rpc import chain_pb2, control_pb2
from tests.integration.chain_support import Writer, put, start_tier

NEVER_REMOVE = {"CHAIN_CHECK_FALL": "100000"}  # replicas restarted in place keep their place


def keys_at(tier, name, *keys):
    reply = tier.data(name).Read(chain_pb2.ReadRequest(keys=keys), timeout=5)
    return {entry.key: entry.value for entry in reply.found}


@pytest.mark.parametrize("victim, survivors", [
    ("data-1", ["data-2", "data-3"]),
    ("data-2", ["data-1", "data-3"]),
    ("data-3", ["data-1", "data-2"]),
], ids=["head", "middle", "tail"])
def test_killing_a_replica_loses_no_acknowledged_write(lab, victim, survivors):
    tier = start_tier(lab)
    with Writer(tier.client(timeout=2, attempts=4), "w/") as writer:
        writer.wait_for_more(20, lab)
        tier.kill(victim)
        tier.wait_for_chain(survivors)
        writer.wait_for_more(20, lab)  # the tier takes writes again, nobody acting
    writer.check(tier.client())
    reconfigured = lab.scrape(tier.master)
    assert reconfigured.get("distlab_chain_reconfigurations_total", reason="failure") == 1


def test_a_restarted_replica_syncs_and_rejoins_at_the_tail(lab):
    tier = start_tier(lab)
    client = tier.client()
    for n in range(10):
        client.txn(put((f"k{n}", b"before")))
    tier.kill("data-2")
    tier.wait_for_chain(["data-1", "data-3"])
    for n in range(10, 20):
        client.txn(put((f"k{n}", b"while-away")))

    tier.start_replica("data-2")
    tier.wait_for_chain(["data-1", "data-3", "data-2"])
    held = keys_at(tier, "data-2", *[f"k{n}" for n in range(20)])
    assert held == {f"k{n}": b"before" if n < 10 else b"while-away" for n in range(20)}
    assert lab.scrape(tier.replicas["data-2"]).value("distlab_chain_syncs_total") == 1
    assert client.txn(put(("k-after", b"1"))).succeeded
    assert keys_at(tier, "data-2", "k-after") == {"k-after": b"1"}


def test_a_replica_back_with_an_empty_disk_is_taken_out_and_syncs_again(lab):
    tier = start_tier(lab, master_env=NEVER_REMOVE)
    client = tier.client()
    for n in range(5):
        client.txn(put((f"k{n}", b"v")))
    tier.kill("data-2")
    shutil.rmtree(tier.data_dirs["data-2"])  # a new disk: it holds no member's state
    tier.start_replica("data-2")
    tier.wait_for_chain(["data-1", "data-3", "data-2"])
    assert keys_at(tier, "data-2", *[f"k{n}" for n in range(5)]) == {
        f"k{n}": b"v" for n in range(5)}
    assert lab.scrape(tier.master).get("distlab_chain_reconfigurations_total",
                                       reason="rejoin") == 1


@pytest.mark.parametrize("victim", ["data-1", "data-3"], ids=["head", "tail"])
def test_a_replica_restarted_in_place_recovers_its_log(lab, victim):
    tier = start_tier(lab, master_env=NEVER_REMOVE)
    client = tier.client()
    last = 0
    for n in range(10):
        last = client.txn(put((f"k{n}", b"%d" % n))).seq
    tier.kill(victim)
    restarted = tier.start_replica(victim)
    tier.wait_for_chain(["data-1", "data-2", "data-3"])  # same place, new address
    assert tier.status(restarted)["last_seq"] == str(last)  # from its own log, no sync
    assert lab.scrape(restarted).value("distlab_chain_syncs_total") == 0
    assert client.txn(put(("k-after", b"1"))).succeeded
    found = client.read(chain_pb2.ReadRequest(prefix="k"))
    assert {entry.key: entry.value for entry in found.found} == {
        **{f"k{n}": b"%d" % n for n in range(10)}, "k-after": b"1"}


def test_a_successor_too_far_behind_gets_the_whole_state(lab):
    """data-3 misses an update while down; data-2, restarted since, no longer has it in
    its recent-updates log (with one key, its log is compacted after every update) and
    installs its whole state into data-3 instead."""
    tier = start_tier(lab, master_env=NEVER_REMOVE,
                      replica_env={"DATA_WAL_COMPACT_UPDATES": "1"})
    client = tier.client(timeout=2, attempts=2)
    client.txn(put(("a", b"1")))
    tier.kill("data-3")
    with pytest.raises(DataUnavailable) as caught:
        client.txn(put(("a", b"2")))  # held by data-1 and data-2 only
    assert not caught.value.definite
    tier.kill("data-2")
    tier.start_replica("data-2")
    tier.start_replica("data-3")
    tier.wait_for_chain(["data-1", "data-2", "data-3"])
    # "a"=2 was never acknowledged, so data-3 may serve without it for a moment; data-2
    # brings it over when the master's push reaches it, with no new write needed.
    lab.wait_until(lambda: keys_at(tier, "data-3", "a") == {"a": b"2"},
                   what="data-3 caught up")
    assert lab.scrape(tier.replicas["data-3"]).value("distlab_chain_syncs_total") == 1


def test_restarting_every_replica_at_once_serves_every_acknowledged_write(lab):
    tier = start_tier(lab)
    with Writer(tier.client(timeout=2, attempts=4), "w/", limit=40) as writer:
        writer.wait_for_more(40, lab)
    for name in ("data-1", "data-2", "data-3"):
        tier.kill(name)
    lab.wait_until(lambda: tier.status(tier.master)["members_up"] == "0",
                   what="the master sees every replica down")
    assert len(tier.master_config().chain) == 1  # the last member is never taken out

    for name in ("data-3", "data-2", "data-1"):
        tier.start_replica(name)
    tier.wait_for_chain({"data-1", "data-2", "data-3"})
    writer.check(tier.client())
    assert tier.client().txn(put(("after", b"1"))).succeeded


def test_a_restarted_master_keeps_the_configuration(lab):
    tier = start_tier(lab)
    client = tier.client()
    client.txn(put(("before", b"1")))
    before = tier.master_config()
    tier.kill_master()
    # The chain keeps serving with the configuration it has.
    assert client.txn(put(("master-down", b"1"))).succeeded

    tier.start_master()
    assert tier.master_config() == before
    lab.wait_until(lambda: tier.status(tier.master)["members_up"] == "3",
                   what="the restarted master sees the chain")
    tier.kill("data-3")  # and it still reconfigures
    tier.wait_for_chain(["data-1", "data-2"])
    assert client.txn(put(("after", b"1"))).succeeded
    found = client.read(chain_pb2.ReadRequest(keys=["before", "master-down", "after"]))
    assert len(found.found) == 3


def test_a_forward_from_an_older_epoch_is_refused(lab):
    tier = start_tier(lab)
    config = tier.wait_for_chain(["data-1", "data-2", "data-3"])
    seq = tier.client().txn(put(("k", b"v"))).seq
    old = chain_pb2.Update(seq=seq + 1, epoch=config.epoch - 1,
                           puts=[chain_pb2.KeyValue(key="rogue", value=b"x")])
    with pytest.raises(grpc.RpcError) as caught:
        tier.replica("data-2").Forward(old, timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stale epoch" in caught.value.details()
    assert keys_at(tier, "data-3", "rogue") == {}
    assert tier.status(tier.replicas["data-2"])["last_seq"] == str(seq)


def test_a_head_cut_off_from_the_master_cannot_get_a_write_acknowledged(lab):
    tier = start_tier(lab)
    tier.client().txn(put(("k", b"v")))
    control = lab.control(tier.replicas["data-1"])
    for direction in (control_pb2.FaultRule.INBOUND, control_pb2.FaultRule.OUTBOUND):
        control.AddFaultRule(control_pb2.FaultRule(
            method="*", peer="data-master", action=control_pb2.FaultRule.ERROR,
            direction=direction, status_code=grpc.StatusCode.UNAVAILABLE.value[0]), timeout=5)
    tier.wait_for_chain(["data-2", "data-3"])
    assert tier.status(tier.replicas["data-1"])["position"] == "head"  # it cannot know

    with pytest.raises(grpc.RpcError) as caught:
        tier.data("data-1").Txn(put(("rogue", b"x")), timeout=5)
    assert caught.value.code() != grpc.StatusCode.OK
    fresh = tier.client()
    assert fresh.read(chain_pb2.ReadRequest(keys=["rogue"])).found == []
    assert fresh.txn(put(("after", b"1"))).succeeded

    # Healed, it finds itself out of the chain, syncs, and joins at the tail: its own
    # unacknowledged write is gone with the state it replaced.
    control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(), timeout=5)
    tier.wait_for_chain(["data-2", "data-3", "data-1"])
    assert keys_at(tier, "data-1", "k", "rogue", "after") == {"k": b"v", "after": b"1"}
