"""distlab/chord/ringmap.py: deciding whether peer states form one ordered ring, the table
and the PNG, without Docker (states come from the simulator's rings)."""

import random
import socket
from dataclasses import replace
from types import SimpleNamespace

import grpc

from distlab.chord import sim
from distlab.chord.ringmap import (
    PeerState,
    Silent,
    Verdict,
    assess_ring,
    check_ring,
    draw_ring,
    fetch_states,
    ring_rows,
)
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
    assert [str(quiet) for quiet in silent] == ["chord-1: no answer (UNAVAILABLE)"]


def test_peers_that_never_answer_are_marked_within_the_overall_deadline():
    # A socket that listens but never accepts: a peer frozen before its gRPC handshake.
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(0)
        endpoint = f"127.0.0.1:{frozen.getsockname()[1]}"
        machines = [SimpleNamespace(name=f"chord-{i}",
                                    info=SimpleNamespace(role="chord", grpc_endpoint=endpoint),
                                    channel=lambda: grpc.insecure_channel(endpoint))
                    for i in range(1, 41)]
        states, silent = fetch_states(machines, per_peer=0.3, overall=0.5, workers=8)
    assert states == []
    assert [quiet.machine for quiet in silent] == [m.name for m in machines]
    # 40 peers, 8 at a time, 0.3 s each: the first round times out, the rest are not asked.
    reasons = {quiet.reason for quiet in silent}
    assert reasons <= {"no answer (DEADLINE_EXCEEDED)", "not asked: the 0 s deadline had "
                       "passed", "no answer within 0 s"}
    assert "no answer (DEADLINE_EXCEEDED)" in reasons


def silent_as(state: PeerState) -> Silent:
    return Silent(state.machine, "no answer (DEADLINE_EXCEEDED)", (state.node.address,))


def test_a_ring_that_every_peer_reads_back_is_one():
    view = assess_ring(ring(6))
    assert view.verdict is Verdict.ONE
    assert view.headline() == "one consistent ring of 6 peers (6 of 6 peers answered)"


def test_two_ring_ids_or_two_successor_cycles_are_several_rings():
    first = ring(4)
    younger = [replace(s, ring="younger") for s in ring(3)]
    view = assess_ring(first + younger)
    assert view.verdict is Verdict.SEVERAL
    assert view.reasons == [f"4 peers in ring {first[0].ring}, 3 peers in ring younger"]
    # A healed partition: one ring id, but two cycles that never meet.
    refs = [NodeRef(r.id, f"10.9.0.{i}:50051")
            for i, r in enumerate(sim.random_refs(3, bits=BITS, rng=random.Random(99)))]
    other = [replace(s, machine=f"other-{i}")
             for i, s in enumerate(states_of(sim.build_ring(refs, bits=BITS, successors=3)))]
    view = assess_ring(first + other)
    assert view.verdict is Verdict.SEVERAL
    assert view.reasons[0].startswith("2 separate successor cycles (")


def test_a_peer_whose_successor_died_is_a_ring_still_mending():
    states = ring(6)
    dead = states.pop(2)  # its container is gone: not listed, not asked
    view = assess_ring(states)
    assert view.verdict is Verdict.MENDING
    assert f"{states[1].machine}'s successor {dead.node.address} is not a running chord " \
           f"machine (dead?)" in view.reasons
    assert any(p.startswith(f"{states[1].machine}: successor list ")
               for p in view.check.problems)
    assert view.headline() == "one ring, still mending: 5 of 5 peers answered"


def test_a_frozen_peer_that_the_others_name_keeps_its_place_unread():
    states = ring(6)
    frozen = states.pop(3)
    view = assess_ring(states, [silent_as(frozen)])
    assert view.verdict is Verdict.ONE, view.check.problems
    assert view.unread == {frozen.machine}
    rows = ring_rows(view.check, view.unread)
    assert [r[1] for r in rows] == [s.machine for s in sorted(ring(6), key=lambda s: s.node.id)]
    assert rows[[r[1] for r in rows].index(frozen.machine)][3:5] == ("?", "no answer")
    assert view.headline() == "one consistent ring of 6 peers (5 of 6 peers answered)"


def test_the_ring_is_not_known_when_too_few_peers_answer():
    states = ring(6)
    view = assess_ring(states[:3], [silent_as(s) for s in states[3:]])
    assert view.verdict is Verdict.UNKNOWN
    assert view.headline() == "ring not yet known: 3 of 6 peers answered"
    assert assess_ring([], []).verdict is Verdict.UNKNOWN
