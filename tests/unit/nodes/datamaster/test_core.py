"""nodes/datamaster/core.py: how the chain configuration changes, and what it never does."""

import pytest

from nodes.datamaster.core import ChainMaster, ReplaceRefused
from nodes.rpc import chain_pb2


def replica(name: str, port: int = 1) -> chain_pb2.ChainMember:
    return chain_pb2.ChainMember(name=name, address=f"10.0.0.{name[-1]}:{port}")


def names(master: ChainMaster) -> list[str]:
    return master.names()


def running(*members: str) -> ChainMaster:
    """A master whose chain is `members`, all of them serving."""
    master = ChainMaster()
    for name in members:
        master.register(replica(name), member_epoch=0, ready=True)
        master.acknowledged(name, master.epoch)
    assert names(master) == list(members)
    return master


def test_the_first_replica_starts_the_chain_and_serves_at_once():
    master = ChainMaster()
    registration = master.register(replica("data-1"), member_epoch=0, ready=False)
    assert registration.member and registration.change.reason == "bootstrap"
    assert registration.config.epoch == 1 and names(master) == ["data-1"]


def test_a_new_replica_joins_at_the_tail_only_once_synced():
    master = running("data-1", "data-2")
    first = master.register(replica("data-3"), member_epoch=0, ready=False)
    assert (first.member, first.change) == (False, None)  # sync from the tail first
    assert first.config.chain[-1].name == "data-2"
    joined = master.register(replica("data-3"), member_epoch=0, ready=True)
    assert joined.change.reason == "join" and not joined.member  # it waits for the push
    assert names(master) == ["data-1", "data-2", "data-3"]
    assert joined.config.epoch == first.config.epoch + 1


def test_pushes_go_head_first_to_whoever_has_not_acknowledged():
    master = running("data-1", "data-2")
    master.register(replica("data-3"), member_epoch=0, ready=True)
    assert [m.name for m in master.push_targets()] == ["data-1", "data-2", "data-3"]
    master.acknowledged("data-1", master.epoch)
    assert [m.name for m in master.push_targets()] == ["data-2", "data-3"]
    master.acknowledged("data-2", master.epoch - 1)  # an older epoch does not count
    assert [m.name for m in master.push_targets()] == ["data-2", "data-3"]


def test_a_failed_member_is_removed_with_a_new_epoch():
    master = running("data-1", "data-2", "data-3")
    epoch = master.epoch
    change = master.remove_failed("data-2")
    assert change.reason == "failure" and change.config.epoch == epoch + 1
    assert names(master) == ["data-1", "data-3"]
    assert master.remove_failed("data-2") is None  # already out


def test_the_last_member_is_never_removed():
    master = running("data-1", "data-2")
    assert master.remove_failed("data-2") is not None
    assert master.remove_failed("data-1") is None
    assert names(master) == ["data-1"]


def test_a_joiner_still_waiting_for_its_push_does_not_count_as_serving():
    master = running("data-1")
    master.register(replica("data-2"), member_epoch=0, ready=True)
    assert master.remove_failed("data-1") is None  # data-2 may lack acknowledged writes
    master.acknowledged("data-2", master.epoch)  # caught up by data-1, now it serves
    assert master.remove_failed("data-1") is not None
    assert names(master) == ["data-2"]


def test_a_returning_member_with_its_disk_is_reused_in_place():
    master = running("data-1", "data-2", "data-3")
    epoch = master.epoch
    same = master.register(replica("data-2"), member_epoch=2, ready=False)
    assert same.member and same.change is None and master.epoch == epoch
    moved = master.register(replica("data-2", port=2), member_epoch=2, ready=False)
    assert moved.member and moved.change.reason == "address"
    assert names(master) == ["data-1", "data-2", "data-3"]
    assert moved.config.chain[1].address == "10.0.0.2:2"


def test_a_listed_replica_without_a_members_state_is_taken_out_to_sync_again():
    master = running("data-1", "data-2", "data-3")
    registration = master.register(replica("data-3"), member_epoch=0, ready=False)
    assert not registration.member and registration.change.reason == "rejoin"
    assert names(master) == ["data-1", "data-2"]


def test_the_only_copy_is_reused_whatever_its_disk_says():
    master = running("data-1")
    registration = master.register(replica("data-1"), member_epoch=0, ready=False)
    assert registration.member and names(master) == ["data-1"]


def test_a_reloaded_configuration_is_kept_and_presumed_serving():
    before = running("data-1", "data-2")
    reloaded = ChainMaster(before.config)
    assert reloaded.config == before.config
    assert [m.name for m in reloaded.push_targets()] == ["data-1", "data-2"]
    assert reloaded.remove_failed("data-1") is not None


def test_replace_puts_the_new_member_at_the_old_ones_position_in_a_new_epoch():
    master = running("data-1", "data-2", "data-3")
    epoch = master.epoch
    change = master.replace("data-2", replica("data-9"), epoch=epoch)
    assert change.reason == "replace" and change.config.epoch == epoch + 1
    assert names(master) == ["data-1", "data-9", "data-3"]
    assert [m.name for m in master.push_targets()] == ["data-1", "data-9", "data-3"]
    assert master.is_serving("data-9")
    # A retried Replace whose first answer was lost: already done, nothing changes.
    assert master.replace("data-2", replica("data-9"), epoch=epoch) is None
    assert master.epoch == epoch + 1


def test_replace_is_refused_for_a_non_member_a_member_or_another_epoch():
    master = running("data-1", "data-2")
    epoch = master.epoch
    for old, new, at, why in (("data-7", "data-9", epoch, "not a member"),
                              ("data-1", "data-2", epoch, "already a member"),
                              ("data-1", "data-9", epoch - 1, "committed at epoch")):
        with pytest.raises(ReplaceRefused, match=why):
            master.replace(old, replica(new), epoch=at)
    assert names(master) == ["data-1", "data-2"] and master.epoch == epoch
