"""distlab/chord/ringmap.py: deciding whether peer states form one ordered ring, the table
and the PNG, without Docker (states come from the simulator's rings)."""

import random
import socket
from dataclasses import replace
from types import SimpleNamespace

import grpc

from distlab.chord import sim
from distlab.chord.ringmap import PeerState, check_ring, draw_ring, fetch_states, ring_rows
from nodes.chord.ring import NodeRef
from nodes.rpc import chord_pb2

BITS = 16


def states_of(network: sim.SimNetwork) -> list[PeerState]:
    return [PeerState(node=n.me, bits=n.bits, ring=n.ring, predecessor=n.predecessor,
                      successors=tuple(s for s in n.successors if s != n.me),
                      fingers=tuple((i, f) for i, f in enumerate(n.fingers) if f),
                      machine=f"chord-{i + 1}")
            for i, n in enumerate(network.live())]


def ring(count: int = 6, successors: int = 3) -> list[PeerState]:
    refs = sim.random_refs(count, bits=BITS, rng=random.Random(count))
    return states_of(sim.build_ring(refs, bits=BITS, successors=successors))


def test_a_stabilized_ring_is_one_consistent_ring_in_id_order():
    states = ring()
    shuffled = list(reversed(states))
    check = check_ring(shuffled)
    assert check.ok and check.problems == []
    assert [s.node.id for s in check.ordered] == sorted(s.node.id for s in states)
    rows = ring_rows(check)
    assert [r[1] for r in rows] == [s.machine for s in check.ordered]
    first = check.ordered[0]
    assert rows[0][3] == check.ordered[-1].machine  # predecessor, by machine name
    assert rows[0][4] == ", ".join(s.machine for s in check.ordered[1:4])
    assert rows[0][0] == f"{first.node.id:04x}"


def test_a_lone_peer_is_a_ring_of_one():
    (alone,) = ring(1)
    assert check_ring([alone]).ok
    assert ring_rows(check_ring([alone]))[0][4] == "itself"


def test_every_problem_is_named():
    states = ring()
    broken = list(states)
    broken[1] = replace(states[1], successors=states[1].successors[1:])  # skips one
    broken[2] = replace(states[2], predecessor=None)
    broken[3] = replace(states[3], ring="", join_error="cannot reach any peer to join")
    problems = check_ring(broken).problems
    assert f"{states[3].machine} is not in a ring: cannot reach any peer to join" in problems
    assert any(p.startswith(f"{states[1].machine}: successor list ") for p in problems)
    assert f"{states[2].machine}: predecessor is none, not {states[1].machine}" in problems


def test_two_rings_and_shared_ids_are_problems():
    states = ring(4)
    other = [replace(s, ring="younger") for s in ring(3)]
    assert "2 rings, not one" in " ".join(check_ring(states + other).problems)
    twin = replace(states[0], machine="twin", node=NodeRef(states[0].node.id, "elsewhere"))
    assert any("share id" in p for p in check_ring(states + [twin]).problems)
    assert check_ring([]).problems == ["no chord peer answered"]


def test_the_ring_is_drawn(tmp_path):
    good = draw_ring(ring(8), tmp_path / "deep" / "ring.png")
    assert good.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    broken = ring(5)
    broken[0] = replace(broken[0], successors=())
    assert draw_ring(broken, tmp_path / "broken.png").stat().st_size > 1000


def test_a_state_reply_reads_back():
    reply = chord_pb2.StateReply(
        self=chord_pb2.Node(id="0010", address="a:1"), bits=16, ring="r",
        successors=[chord_pb2.Node(id="0020", address="b:1")],
        fingers=[chord_pb2.Finger(index=3, start="0018", node=chord_pb2.Node(id="0020",
                                                                             address="b:1"))],
        keys=4, replicas=2)
    state = PeerState.from_reply(reply, "chord-1")
    assert state.node == NodeRef(0x10, "a:1") and state.predecessor is None
    assert state.successors == (NodeRef(0x20, "b:1"),)
    assert state.fingers == ((3, NodeRef(0x20, "b:1")),)
    assert (state.keys, state.replicas, state.label) == (4, 2, "chord-1")


def test_machines_that_do_not_answer_are_listed_and_others_skipped():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def machine(name, role, endpoint):
        return SimpleNamespace(name=name, info=SimpleNamespace(role=role, grpc_endpoint=endpoint),
                               channel=lambda: grpc.insecure_channel(endpoint))

    states, silent = fetch_states([machine("kv-1", "kv", f"127.0.0.1:{port}"),
                                   machine("chord-2", "chord", None),
                                   machine("chord-1", "chord", f"127.0.0.1:{port}")])
    assert states == []
    assert silent == ["chord-1: no answer (UNAVAILABLE)"]
