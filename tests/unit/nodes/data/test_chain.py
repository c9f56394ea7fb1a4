"""nodes/data/chain.py: positions, seq order, epochs, and who may act as a member."""

import pytest

from nodes.data.chain import Adoption, ForwardKind, NotReady, ReplicaCore, StaleEpoch
from nodes.rpc import chain_pb2


def config(epoch: int, *names: str) -> chain_pb2.ChainConfig:
    return chain_pb2.ChainConfig(epoch=epoch, chain=[
        chain_pb2.ChainMember(name=name, address=f"127.0.0.1:{5000 + n}")
        for n, name in enumerate(names)])


def update(seq: int, key: str = "k") -> chain_pb2.Update:
    return chain_pb2.Update(seq=seq, puts=[chain_pb2.KeyValue(key=key, value=b"%d" % seq)])


def member(name: str = "b", epoch: int = 1, names=("a", "b", "c")) -> ReplicaCore:
    core = ReplicaCore(name, recent_capacity=3)
    assert core.adopt(config(epoch, *names), granted=True) is Adoption.MEMBER
    return core


@pytest.mark.parametrize("name, names, position, successor", [
    ("a", ("a", "b", "c"), "head", "b"),
    ("b", ("a", "b", "c"), "middle", "c"),
    ("c", ("a", "b", "c"), "tail", None),
    ("a", ("a",), "single", None),
])
def test_position_and_successor_follow_the_configuration(name, names, position, successor):
    core = member(name, names=names)
    assert core.position == position
    assert (core.successor().name if core.successor() else None) == successor
    assert core.serves_txn() == (position in ("head", "single"))
    assert core.serves_read() == (position in ("tail", "single"))


def test_a_replica_that_is_not_a_member_is_standby_and_serves_nothing():
    core = ReplicaCore("b", recent_capacity=3)
    assert core.position == "standby" and core.successor() is None
    assert not core.serves_txn() and not core.serves_read()


def test_forwards_are_applied_in_seq_order_duplicates_and_gaps_recognized():
    core = member()
    assert core.classify(1) is ForwardKind.APPLY
    core.record(update(1))
    assert core.classify(1) is ForwardKind.DUPLICATE
    assert core.classify(3) is ForwardKind.GAP
    assert core.classify(2) is ForwardKind.APPLY


def test_an_older_epoch_is_refused_and_a_newer_one_taken():
    core = member(epoch=5)
    core.check_epoch(5)
    core.check_epoch(6)  # the master pushes head first: a successor briefly lags
    with pytest.raises(StaleEpoch, match="this replica is at epoch 5, the sender at 4"):
        core.check_epoch(4)


def test_recent_updates_cover_only_the_last_few():
    core = member()
    for seq in range(1, 6):
        core.record(update(seq))
    assert [core.recent_update(seq) is not None for seq in range(1, 7)] == [
        False, False, True, True, True, False]
    assert core.recent_update(4).seq == 4
    core.install([], 9)
    assert core.recent_update(5) is None and core.last_seq == 9


def test_restore_replays_a_snapshot_then_the_updates_after_it():
    core = ReplicaCore("b", recent_capacity=10)
    snapshot = [chain_pb2.KeyValue(key="old", value=b"o", version=2)]
    applied = core.restore(snapshot, 2, [update(1), update(3, "x"), update(4, "y"),
                                         update(6, "gap")])
    assert applied == 2 and core.last_seq == 4
    assert core.store.get("old") == (b"o", 2) and core.store.get("gap") is None
    assert core.recent_update(4).seq == 4


def test_a_polled_configuration_never_makes_a_replica_a_member():
    core = ReplicaCore("d", recent_capacity=3)
    assert core.adopt(config(7, "a", "d")) is Adoption.WAITING
    assert core.position == "standby" and core.epoch == 7  # but it knows the epoch


def test_a_push_makes_a_member_only_of_a_replica_with_state_to_serve():
    joiner = ReplicaCore("d", recent_capacity=3)
    with pytest.raises(NotReady):
        joiner.adopt(config(7, "a", "d"), pushed=True)  # e.g. a new, empty disk
    assert joiner.position == "standby"
    joiner.ready = True  # synced from the tail in this run
    assert joiner.adopt(config(7, "a", "d"), pushed=True) is Adoption.MEMBER
    assert (joiner.position, joiner.member_epoch) == ("tail", 7)

    returning = ReplicaCore("d", recent_capacity=3, member_epoch=3)  # its disk says member
    assert returning.adopt(config(7, "a", "d"), pushed=True) is Adoption.MEMBER
    assert returning.member_epoch == 3  # a member since then, without a break


def test_leaving_the_chain_forgets_membership_and_readiness():
    core = member("c")
    core.ready = True
    assert core.adopt(config(2, "a", "b")) is Adoption.LEFT
    assert (core.position, core.active, core.member_epoch, core.ready) == (
        "standby", False, 0, False)


def test_an_older_configuration_is_ignored():
    core = member(epoch=5)
    assert core.adopt(config(4, "x"), pushed=True) is Adoption.STALE
    assert core.names() == ["a", "b", "c"]


def test_the_head_has_pending_updates_until_the_chain_confirms_them():
    core = member("a")
    core.record(update(1))
    assert core.has_pending()
    core.confirmed(1)
    assert not core.has_pending()
    core.adopt(config(2, "a", "c"))  # a new successor: nothing is known about it
    assert core.has_pending()
    assert not member("a", names=("a",)).has_pending()
