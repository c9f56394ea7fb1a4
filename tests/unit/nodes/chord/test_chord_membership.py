"""nodes/chord/membership.py: Zave's join, stabilize, rectify and check_predecessor, finger
filing, and lookups that route around dead nodes, on an in-memory network of ChordNodes."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nodes.chord.membership import (
    SILENT,
    AskRoute,
    ChordNode,
    DuplicateId,
    GetView,
    JoinFailed,
    SendRectify,
    drive,
)
from nodes.chord.ring import NodeRef, finger_start, successor_index

BITS = 8
RING = "r1"


class Network:
    """ChordNodes by address; a node that is down, or in another ring, does not answer. One
    that is silent (late, not suspected by the failure detector) answers GetView SILENT."""

    def __init__(self) -> None:
        self.nodes: dict[str, ChordNode] = {}
        self.down: set[str] = set()
        self.silent: set[str] = set()
        self.asked: list[str] = []

    def answer(self, request):
        self.asked.append(request.node.address)
        if request.node.address in self.silent:
            return SILENT if isinstance(request, GetView) else None
        node = self.nodes.get(request.node.address)
        if node is None or request.node.address in self.down or \
                (request.ring is not None and node.ring != request.ring):
            return None
        if isinstance(request, GetView):
            return node.view()
        if isinstance(request, AskRoute):
            return node.route(request.target)
        assert isinstance(request, SendRectify)
        return self.run(node.rectify(request.candidate))

    def run(self, step):
        return drive(step, self.answer)

    def __getitem__(self, ident: int) -> ChordNode:
        return self.nodes[address(ident)]


def address(ident: int) -> str:
    return f"n{ident}"


def ref(ident: int) -> NodeRef:
    return NodeRef(ident, address(ident))


def stable_ring(ids, *, r: int = 3, fingers: bool = True) -> Network:
    """The state a stabilized ring has: next r successors, predecessor, every finger."""
    ids = sorted(ids)
    network = Network()
    for index, ident in enumerate(ids):
        node = ChordNode(ref(ident), bits=BITS, successors=r)
        node.install(RING, [ref(ids[(index + k) % len(ids)]) for k in range(1, r + 1)],
                     ref(ids[index - 1]) if len(ids) > 1 else None,
                     [ref(ids[successor_index(ids, finger_start(ident, i, BITS))]) if fingers
                      else None for i in range(BITS)])
        network.nodes[node.me.address] = node
    return network


def owner(ids, target: int) -> NodeRef:
    ids = sorted(ids)
    return ref(ids[successor_index(ids, target)])


def test_successor_lists_stop_at_r_and_where_they_come_back_around():
    network = stable_ring([10, 20, 30], r=5)
    assert network[10].successors == (ref(20), ref(30))
    assert stable_ring([10, 20, 30, 40, 50, 60], r=2)[50].successors == (ref(60), ref(10))
    alone = stable_ring([10])[10]
    assert alone.successors == (ref(10),) and alone.predecessor is None


def test_route_answers_the_owner_or_the_closest_preceding_nodes():
    network = stable_ring([10, 40, 80, 120, 160, 200, 240])
    node = network[10]
    assert node.route(25).owner_found and node.route(25).nodes[0] == ref(40)
    answer = node.route(210)  # 10 knows 40, 80, 120 (successors) and 160 (a finger)
    assert not answer.owner_found
    assert answer.nodes == (ref(160), ref(120), ref(80), ref(40))  # closest to 210 first
    assert answer.successors == (ref(40), ref(80), ref(120))
    assert node.route(10).nodes == answer.nodes  # our own id: the whole ring precedes it


def test_a_lookup_finds_every_owner_in_a_stable_ring():
    ids = [3, 40, 41, 90, 130, 131, 200, 254]
    network = stable_ring(ids)
    for start in ids:
        for target in range(1 << BITS):
            found = network.run(network[start].lookup(target))
            assert found.owner == owner(ids, target)
            assert found.path[0] == ref(start) and found.path[-1] == found.owner
            assert found.timeouts == 0


def test_join_takes_the_owner_as_successor_and_copies_its_list_at_once():
    network = stable_ring([10, 50, 90, 130, 170])
    joiner = ChordNode(ref(60), bits=BITS, successors=3)
    network.nodes[joiner.me.address] = joiner
    network.run(joiner.join(network[170].view()))
    assert joiner.member and joiner.ring == RING
    assert joiner.successors == (ref(90), ref(130), ref(170))
    assert joiner.predecessor is None


def test_a_duplicate_id_is_refused_at_join():
    network = stable_ring([10, 50, 90])
    twin = ChordNode(NodeRef(50, "elsewhere"), bits=BITS, successors=3)
    with pytest.raises(DuplicateId, match="id 32 is already used by n50"):
        network.run(twin.join(network[10].view()))
    assert not twin.member


def test_join_fails_when_no_owner_answers():
    network = stable_ring([10, 50, 90])
    network.down.update({"n50", "n90"})
    joiner = ChordNode(ref(60), bits=BITS, successors=3)
    with pytest.raises(JoinFailed):
        network.run(joiner.join(network[10].view()))


def test_stabilize_adopts_the_successors_predecessor_only_if_it_answers():
    network = stable_ring([10, 50, 90])
    joiner = ChordNode(ref(30), bits=BITS, successors=3)
    network.nodes[joiner.me.address] = joiner
    network.run(joiner.join(network[10].view()))
    network.run(joiner.stabilize())  # rectify: 50 now has 30 as predecessor
    assert network[50].predecessor == ref(30)

    network.down.add("n30")
    assert network.run(network[10].stabilize()) == "none"
    assert network[10].successor == ref(50)  # a dead candidate is not adopted
    assert network[50].predecessor == ref(10)  # rectify: 30 was dead, 10 replaced it

    network.down.clear()
    network.run(joiner.stabilize())  # 30 is back and between 10 and 50: rectify adopts it
    assert network[50].predecessor == ref(30)
    assert network.run(network[10].stabilize()) == "successor_changed"
    assert network[10].successors == (ref(30), ref(50), ref(90))
    assert joiner.predecessor == ref(10)  # 10 rectified its new successor


def test_stabilize_skips_dead_successors_and_refills_the_list():
    network = stable_ring([10, 50, 90, 130, 170])
    network.down.update({"n50", "n90"})
    assert network.run(network[10].stabilize()) == "successor_changed"
    assert network[10].successors == (ref(130), ref(170))  # then the list reaches back to 10
    assert ref(50) not in network[10].fingers


def test_losing_every_successor_leaves_the_ring():
    network = stable_ring([10, 50, 90, 130], r=2)
    network.down.update({"n50", "n90"})
    assert network.run(network[10].stabilize()) == "lost"
    assert not network[10].member and network[10].successors == (ref(10),)


def test_rectify_adopts_only_a_closer_candidate_unless_the_predecessor_is_dead():
    network = stable_ring([10, 50, 90])
    node = network[90]
    assert not network.run(node.rectify(ref(20)))  # 50 is alive and closer
    assert node.predecessor == ref(50)
    assert network.run(node.rectify(ref(70)))  # between 50 and 90
    assert node.predecessor == ref(70)
    network.down.add("n70")
    assert network.run(node.rectify(ref(20)))  # the current one is dead
    assert node.predecessor == ref(20)
    assert not network.run(node.rectify(NodeRef(90, "twin")))  # our own id: never
    assert not network.run(node.rectify(ref(90)))


def test_a_rectify_from_another_ring_is_not_delivered():
    network = stable_ring([10, 50, 90])
    assert network.answer(SendRectify(ref(90), ref(70), "other-ring")) is None
    assert network[90].predecessor == ref(50)


def test_check_predecessor_forgets_a_dead_predecessor():
    network = stable_ring([10, 50, 90])
    assert not network.run(network[90].check_predecessor())
    network.down.add("n50")
    assert network.run(network[90].check_predecessor())
    assert network[90].predecessor is None


def test_a_silent_successor_is_kept_until_it_is_suspected():
    network = stable_ring([10, 50, 90, 130])
    network.silent.add("n50")
    assert network.run(network[10].stabilize()) == "none"
    assert network[10].successors == (ref(50), ref(90), ref(130))
    network.silent.clear()
    network.down.add("n50")  # phi reached the threshold: now it is dead
    assert network.run(network[10].stabilize()) == "successor_changed"
    assert network[10].successor == ref(90)


def test_a_silent_predecessor_is_kept_by_check_predecessor_and_rectify():
    network = stable_ring([10, 50, 90])
    network.silent.add("n50")
    assert not network.run(network[90].check_predecessor())
    assert not network.run(network[90].rectify(ref(20)))
    assert network[90].predecessor == ref(50)


def test_a_lookup_goes_around_a_silent_owner_like_a_dead_one():
    network = stable_ring([10, 40, 70, 100, 130], r=3)
    network.silent.add("n70")
    found = network.run(network[10].lookup(65))
    assert found.owner == ref(100)
    assert ref(70) in found.unreachable


def test_one_lookup_fills_every_finger_the_same_node_owns():
    ids = [10, 30, 200]
    network = stable_ring(ids, fingers=False)
    node = network[10]
    assert network.run(node.fix_fingers())
    # finger starts 11, 12, 14, 18, 26 all belong to 30; the next start (42) does not
    assert node.fingers[:5] == (ref(30),) * 5 and node.fingers[5] is None
    assert node.next_finger == 5
    while network.run(node.fix_fingers()):
        pass
    expected = stable_ring(ids)[10].fingers
    for _ in range(BITS):
        network.run(node.fix_fingers())
    assert node.fingers == expected


def test_a_lookup_routes_around_dead_nodes():
    ids = [10, 40, 70, 100, 130, 160, 190, 220, 250]
    network = stable_ring(ids, r=4)
    plain = network.run(network[10].lookup(215))
    middle = plain.path[1]
    network.down.add(middle.address)
    found = network.run(network[10].lookup(215))
    assert found.owner == ref(220)
    assert middle not in found.path and found.timeouts >= 1
    assert middle in found.unreachable


def test_a_dead_owner_hands_the_key_to_the_next_live_successor():
    network = stable_ring([10, 40, 70, 100, 130], r=3)
    network.down.update({"n70", "n100"})
    found = network.run(network[10].lookup(65))
    assert found.owner == ref(130)
    assert found.timeouts == 2


def test_a_lookup_steps_back_to_a_newer_predecessor_of_the_owner():
    network = stable_ring([10, 50, 90])
    late = ChordNode(ref(30), bits=BITS, successors=3)
    network.nodes[late.me.address] = late
    network.run(late.join(network[10].view()))
    network.run(late.stabilize())  # 50 knows 30 as predecessor; 10 does not know 30 yet
    assert network[10].successor == ref(50)
    found = network.run(network[10].lookup(25))
    assert found.owner == ref(30)


def test_a_lookup_with_nobody_answering_fails_without_an_owner():
    network = stable_ring([10, 50, 90])
    network.down.update({"n50", "n90"})
    found = network.run(network[10].lookup(70))
    assert not found.ok and found.owner is None


def test_a_graceful_leave_hands_over_both_neighbours():
    network = stable_ring([10, 50, 90, 130])
    assert network[90].on_leave(ref(50), ref(10), ())
    assert network[90].predecessor == ref(10)
    assert network[10].on_leave(ref(50), None, (ref(90), ref(130), ref(10)))
    assert network[10].successors == (ref(90), ref(130))
    assert ref(50) not in network[10].fingers


def test_ring_size_is_exact_when_the_list_wraps_and_estimated_otherwise():
    assert stable_ring([10, 50, 90], r=8)[10].ring_size_estimate() == 3
    evenly = [i * 8 for i in range(32)]  # 32 nodes, 8 ids apart
    assert stable_ring(evenly, r=4)[0].ring_size_estimate() == 32


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(0, (1 << BITS) - 1), min_size=6, max_size=40), st.data())
def test_lookups_find_the_live_owner_while_no_r_successors_in_a_row_fail(ids, data):
    """ToN's assumption: fewer than r consecutive failures keep every lookup correct."""
    r = 3
    ordered = sorted(ids)
    failed = {i for i in ordered if data.draw(st.booleans(), label=f"fail {i}")}
    assume(not any(all(ordered[(start + k) % len(ordered)] in failed for k in range(r))
                   for start in range(len(ordered))))
    live = [i for i in ordered if i not in failed]
    network = stable_ring(ordered, r=r)
    network.down.update(address(i) for i in failed)
    start = data.draw(st.sampled_from(live), label="start")
    target = data.draw(st.integers(0, (1 << BITS) - 1), label="target")
    assert network.run(network[start].lookup(target)).owner == owner(live, target)


def test_weave_links_a_cycle_that_a_partition_split_off():
    evens, odds = stable_ring([20, 60, 100, 140]), stable_ring([40, 80, 120, 160])
    network = Network()
    network.nodes = {**evens.nodes, **odds.nodes}  # one ring id, two cycles
    assert network.run(network[20].weave(network[80].view()))
    assert network[20].successors == (ref(40), ref(80), ref(120))
    assert not network.run(network[20].weave(network[60].view()))  # same cycle: nothing
    assert not network.run(network[100].weave(network[100].view()))
