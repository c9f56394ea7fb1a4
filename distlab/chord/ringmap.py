"""The host's picture of a running Chord ring: gather each peer's state, check that together
they form one ordered ring, and draw it.

`fetch_states` asks every running chord machine for `Chord.State` over gRPC
(through `Machine.channel`, 2 s deadline each). The rest is pure and tested
without Docker: `PeerState.from_reply` reads a reply, `check_ring` says
whether a set of states is one consistent ring (one ring id, distinct ids,
each peer's predecessor, successor and successor list exactly the next peers
in id order), `ring_rows` makes the table `distlab chord ring` prints, and
`draw_ring` writes a PNG of the ring with each peer's fingers. Called by
`distlab.chord.cli`; `draw_ring` writes only the file it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from nodes.chord.ring import MAX_BITS, NodeRef, RingError, parse_id, short_id
from nodes.rpc import chord_pb2, chord_pb2_grpc

DEFAULT_PNG = Path("reports/chord/ring.png")
STATE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class PeerState:
    """One peer's answer to Chord.State, with ids as integers."""

    node: NodeRef
    bits: int
    ring: str
    predecessor: NodeRef | None
    successors: tuple[NodeRef, ...]
    fingers: tuple[tuple[int, NodeRef], ...]  # (finger index, node) for the fingers set
    keys: int = 0
    replicas: int = 0
    join_error: str = ""
    machine: str = ""

    @classmethod
    def from_reply(cls, reply: chord_pb2.StateReply, machine: str = "") -> PeerState:
        bits = reply.bits or MAX_BITS

        def ref(message: chord_pb2.Node) -> NodeRef:
            return NodeRef(parse_id(message.id, bits), message.address)

        return cls(node=ref(reply.self), bits=bits, ring=reply.ring,
                   predecessor=ref(reply.predecessor) if reply.predecessor.address else None,
                   successors=tuple(ref(n) for n in reply.successors),
                   fingers=tuple((f.index, ref(f.node)) for f in reply.fingers),
                   keys=reply.keys, replicas=reply.replicas, join_error=reply.join_error,
                   machine=machine)

    @property
    def label(self) -> str:
        return self.machine or self.node.address


@dataclass
class RingCheck:
    ordered: list[PeerState]  # the members, by id
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_ring(states: Sequence[PeerState]) -> RingCheck:
    """Do `states` form one ordered ring? Every problem found is listed, in plain words."""
    problems: list[str] = []
    if not states:
        return RingCheck([], ["no chord peer answered"])
    members = [s for s in states if s.ring]
    for state in states:
        if not state.ring:
            problems.append(f"{state.label} is not in a ring"
                            + (f": {state.join_error}" if state.join_error else ""))
    rings = sorted({s.ring for s in members})
    if len(rings) > 1:
        sizes = ", ".join(f"{sum(s.ring == r for s in members)} in {r}" for r in rings)
        problems.append(f"{len(rings)} rings, not one ({sizes})")
    ordered = sorted(members, key=lambda s: s.node.id)
    seen: dict[int, PeerState] = {}
    for state in ordered:
        if state.node.id in seen:
            problems.append(f"{state.label} and {seen[state.node.id].label} share id "
                            f"{short_id(state.node.id, state.bits)}")
        seen[state.node.id] = state
    count = len(ordered)
    for index, state in enumerate(ordered):
        following = [ordered[(index + step) % count].node for step in range(1, count)]
        expected_pred = ordered[index - 1].node if count > 1 else None
        if state.predecessor != expected_pred:
            problems.append(f"{state.label}: predecessor is "
                            f"{_name(state.predecessor, ordered)}, "
                            f"not {_name(expected_pred, ordered)}")
        if count > 1 and not state.successors:
            problems.append(f"{state.label}: no successor, expected {_name(following[0], ordered)}")
        elif list(state.successors) != following[:len(state.successors)]:
            problems.append(f"{state.label}: successor list "
                            f"{', '.join(_name(s, ordered) for s in state.successors)} is not "
                            f"the next peers by id "
                            f"({', '.join(_name(s, ordered) for s in following[:3])}, ...)")
    return RingCheck(ordered, problems)


def _name(node: NodeRef | None, states: Sequence[PeerState]) -> str:
    if node is None:
        return "none"
    for state in states:
        if state.node == node:
            return state.label
    return node.address


def ring_rows(check: RingCheck) -> list[tuple[str, ...]]:
    """id, machine, address, predecessor, successor list, keys: one row per member by id."""
    rows = []
    for state in check.ordered:
        rows.append((short_id(state.node.id, state.bits), state.machine or "-", state.node.address,
                     _name(state.predecessor, check.ordered),
                     ", ".join(_name(s, check.ordered) for s in state.successors) or "itself",
                     f"{state.keys} (+{state.replicas})"))
    return rows


def draw_ring(states: Sequence[PeerState], path: Path, *, title: str = "") -> Path:
    """A PNG of the ring: each peer at its id's angle (0 at the top, clockwise), an arrow to
    its successor, a thin chord to each distinct finger; peers of a broken ring in red."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    check = check_ring(states)
    bits = states[0].bits if states else MAX_BITS
    size = 1 << bits

    def point(ident: int, radius: float = 1.0) -> tuple[float, float]:
        angle = math.pi / 2 - 2 * math.pi * ident / size
        return radius * math.cos(angle), radius * math.sin(angle)

    figure, axes = pyplot.subplots(figsize=(8, 8))
    axes.add_patch(pyplot.Circle((0, 0), 1.0, fill=False, color="0.8"))
    colour = "tab:blue" if check.ok else "tab:red"
    for state in check.ordered:
        here = point(state.node.id)
        for target in sorted({n for _, n in state.fingers} - {state.node, *state.successors[:1]}):
            there = point(target.id)
            axes.plot([here[0], there[0]], [here[1], there[1]], color="0.6", linewidth=0.5,
                      alpha=0.6)
        if state.successors:
            there = point(state.successors[0].id)
            axes.annotate("", xy=there, xytext=here,
                          arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 1.2,
                                      "connectionstyle": "arc3,rad=-0.15"})
        axes.plot(*here, "o", color=colour, markersize=7)
        lx, ly = point(state.node.id, 1.12)
        axes.text(lx, ly, f"{state.label}\n{short_id(state.node.id, bits)}", fontsize=7,
                  ha="center", va="center")
    verdict = "one consistent ring" if check.ok else f"{len(check.problems)} problem(s)"
    axes.set_title(title or f"Chord ring: {len(check.ordered)} peers, 2^{bits} ids — {verdict}")
    axes.set_xlim(-1.35, 1.35)
    axes.set_ylim(-1.35, 1.35)
    axes.set_aspect("equal")
    axes.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path


def fetch_states(machines) -> tuple[list[PeerState], list[str]]:
    """Chord.State of every running chord machine, and a line for each that did not answer."""
    states, silent = [], []
    for machine in machines:
        if machine.info.role != "chord" or machine.info.grpc_endpoint is None:
            continue
        channel = machine.channel()
        try:
            reply = chord_pb2_grpc.ChordStub(channel).State(chord_pb2.StateRequest(),
                                                           timeout=STATE_TIMEOUT_SECONDS)
            states.append(PeerState.from_reply(reply, machine.name))
        except grpc.RpcError as exc:
            silent.append(f"{machine.name}: no answer ({exc.code().name})")
        except RingError as exc:
            silent.append(f"{machine.name}: unreadable state ({exc})")
        finally:
            channel.close()
    return states, silent
