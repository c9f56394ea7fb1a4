"""distlab/chord/sim.py: the simulator builds the rings the protocol builds, and reproduces
the papers' shapes: ½·log2 N hops, lookups surviving failures, virtual nodes evening load."""

import json
import math
import random

import pytest

from distlab.chord import sim
from nodes.chord.ring import NodeRef


def state(network: sim.SimNetwork) -> dict[str, tuple]:
    return {a: (n.successors, n.predecessor, n.fingers) for a, n in network.nodes.items()}


@pytest.mark.parametrize("count, successors, bits, seed", [
    (1, 3, 8, 0), (2, 3, 8, 1), (5, 8, 8, 2), (24, 4, 16, 3), (40, 6, 16, 4)])
def test_the_protocol_converges_to_the_bulk_construction(count, successors, bits, seed):
    refs = sim.random_refs(count, bits=bits, rng=random.Random(seed))
    joining = list(refs)
    random.Random(seed).shuffle(joining)
    grown, rounds = sim.grow_ring(joining, bits=bits, successors=successors, seed=seed)
    assert state(grown) == state(sim.build_ring(refs, bits=bits, successors=successors))
    assert rounds >= 1 and grown.now > 0


def test_a_peer_that_fails_is_routed_around_and_stabilization_mends_the_ring():
    refs = sim.random_refs(30, bits=16, rng=random.Random(7))
    network = sim.build_ring(refs, bits=16, successors=4)
    network.fail([refs[3].address, refs[4].address])
    while sim.maintenance_round(network):
        pass
    expected = sim.build_ring([r for i, r in enumerate(refs) if i not in (3, 4)], bits=16,
                              successors=4)
    live = {a: s for a, s in state(network).items() if a not in network.down}
    assert live == state(expected)


def test_mean_path_length_is_half_log2_n():
    rows = sim.path_lengths([8, 64, 256, 512], lookups=1500, seed=1)
    for row in rows:
        fingers = row["fingers"]
        assert fingers["p1"] <= fingers["mean"] <= fingers["p99"]
        if row["nodes"] >= 64:
            assert abs(fingers["mean"] - 0.5 * math.log2(row["nodes"])) <= \
                0.1 * 0.5 * math.log2(row["nodes"]), row
        # a successor list consulted by routing only shortens paths
        assert row["with_successors"]["mean"] < fingers["mean"]
    means = [row["fingers"]["mean"] for row in rows]
    assert means == sorted(means)


def test_lookups_right_after_failures_still_succeed_and_grow_slowly():
    rows = sim.lookups_after_failures(256, [0.0, 0.2, 0.5], lookups=1500, seed=2)
    none, fifth, half = rows
    assert none["failed_lookups"] == 0 and none["timeouts"]["mean"] == 0
    assert fifth["failed_fraction"] <= 0.01
    assert none["path_length"]["mean"] < fifth["path_length"]["mean"] <= \
        1.3 * none["path_length"]["mean"]
    assert 0 < fifth["timeouts"]["mean"] < half["timeouts"]["mean"]
    assert half["failed_fraction"] <= 0.01
    assert fifth["successors"] == 16


def test_virtual_nodes_shrink_the_spread_of_keys_per_node():
    rows = sim.keys_per_node(256, key_multiples=[50], virtual=[1, 8], seed=3)
    one, many = rows
    assert one["keys"] == many["keys"] == 50 * 256
    assert one["mean"] == many["mean"] == 50
    assert many["p99"] - many["p1"] < 0.5 * (one["p99"] - one["p1"])
    assert one["p99"] > 3 * one["mean"]  # one id per node: a few nodes get several times more


def test_run_writes_tables_json_and_plots(tmp_path):
    report = sim.run(32, lookups=100, seed=5)
    assert [row["nodes"] for row in report["path_lengths"]] == [8, 16, 32]
    assert {"path_lengths", "failures", "keys_per_node"} <= set(report["seconds"])
    written = sim.write_report(report, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["chord-sim.json", "chord-sim.txt", "failures.png", "keys_per_node.png",
                     "path_length.png"]
    assert json.loads((tmp_path / "out" / "chord-sim.json").read_text()) == report
    for png in written[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "out" / "chord-sim.txt").read_text()
    assert "Fig. 10" in text and "Table II" in text and "Figs. 8-9" in text
    assert any(line.split()[:2] == ["32", "2.50"] for line in text.splitlines())


def test_too_small_a_ring_is_refused():
    with pytest.raises(ValueError, match="at least 8 nodes"):
        sim.run(4, lookups=10)
    with pytest.raises(ValueError, match="do not fit"):
        sim.random_refs(300, bits=8, rng=random.Random(0))


def test_a_node_in_another_ring_does_not_answer():
    network = sim.build_ring([NodeRef(1, "a"), NodeRef(100, "b")], bits=8, successors=2)
    network.nodes["b"].ring = "elsewhere"
    found = network.run(network.nodes["a"].lookup(50))
    assert not found.ok and found.timeouts == 1


def test_a_ring_split_by_a_partition_is_woven_back_into_one():
    """During a partition each half stabilizes into a ring of its own with the same ring id;
    stabilization alone never merges them again. `weave` (asking a random member who owns
    our id) does, one link at a time."""
    rng = random.Random(11)
    refs = sim.random_refs(16, bits=16, rng=rng)
    network = sim.build_ring(refs, bits=16, successors=8)
    half = {r.address for r in rng.sample(refs, 8)}
    halves = [half, {r.address for r in refs} - half]
    for _ in range(10):
        for mine, theirs in (halves, halves[::-1]):
            network.down = set(theirs)
            for address in mine:
                node = network.nodes[address]
                network.run(node.stabilize())
                network.run(node.check_predecessor())
    network.down = set()
    assert all(n.member for n in network.nodes.values())
    for address in half:  # each half is a closed cycle now
        assert all(s.address in half for s in network.nodes[address].successors)

    expected = state(sim.build_ring(refs, bits=16, successors=8))
    for _ in range(40):
        for node in network.live():
            network.run(node.weave(rng.choice(network.live()).view()))
        sim.maintenance_round(network)
        if state(network) == expected:
            break
    assert state(network) == expected
