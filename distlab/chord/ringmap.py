"""The host's picture of a running Chord ring: gather each peer's state, check that together
they form one ordered ring, and draw it.

`fetch_states` asks every running chord machine for `Chord.State` over gRPC
(through `Machine.channel`), all at once on a bounded pool, each within a
per-peer deadline and all within an overall one (2 s and 5 s), so a ring of
any size with slow or dead peers answers in seconds; who did not answer comes
back as `Silent`. The rest is pure and tested without Docker:
`PeerState.from_reply` reads a reply, `check_ring` says whether a set of
states is one consistent ring (one ring id, distinct ids, each peer's
predecessor, successor and successor list exactly the next peers in id
order), `assess_ring` weighs what was read against who was silent (one
ring, several, one still mending, or not yet known), `ring_rows` makes the
table `distlab chord ring` prints, and `draw_ring` writes a PNG of the ring
with each peer's fingers. Called by `distlab.chord.cli`; `draw_ring` writes
only the file it is given.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import grpc

from nodes.chord.ring import MAX_BITS, NodeRef, RingError, parse_id, short_id
from nodes.rpc import chord_pb2, chord_pb2_grpc

DEFAULT_PNG = Path("reports/chord/ring.png")
# A live peer answers State in milliseconds; one that takes longer than this is starved or
# frozen, and waiting on it is what made `distlab chord ring` silent for a minute at 48.
STATE_TIMEOUT_SECONDS = 2.0
OVERALL_TIMEOUT_SECONDS = 5.0  # the whole fetch, however many peers: "a few seconds"
FETCH_WORKERS = 32  # calls in flight: 64 peers in two rounds; each thread only waits
GRPC_PORT = 50051


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


@dataclass(frozen=True)
class Silent:
    """A chord machine that did not answer State: who, where others may name it, and why."""

    machine: str
    reason: str  # "no answer (DEADLINE_EXCEEDED)"
    addresses: tuple[str, ...] = ()  # host:port its peers know it by

    def __str__(self) -> str:
        return f"{self.machine}: {self.reason}"


@dataclass
class RingCheck:
    ordered: list[PeerState]  # the members, by id (peers that did not answer included, when
    problems: list[str]       # others name them: see `assess_ring`)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_ring(states: Sequence[PeerState]) -> RingCheck:
    """Do `states` form one ordered ring? Every problem found is listed, in plain words."""
    return _check(states, ())


def _check(states: Sequence[PeerState], unread: Sequence[PeerState]) -> RingCheck:
    """check_ring, with `unread` members (placeholders for peers that did not answer but
    that answering peers name) taking their place in id order and never checked themselves."""
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
    ordered = sorted([*members, *unread], key=lambda s: s.node.id)
    seen: dict[int, PeerState] = {}
    for state in ordered:
        if state.node.id in seen:
            problems.append(f"{state.label} and {seen[state.node.id].label} share id "
                            f"{short_id(state.node.id, state.bits)}")
        seen[state.node.id] = state
    count = len(ordered)
    unchecked = {id(state) for state in unread}
    for index, state in enumerate(ordered):
        if id(state) in unchecked:
            continue
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


class Verdict(Enum):
    ONE = "one consistent ring"
    MENDING = "one ring, still mending"  # one ring id and no second cycle, pointers not right
    SEVERAL = "several rings"
    UNKNOWN = "not yet known"  # too few peers answered to tell


@dataclass
class RingView:
    """What `distlab chord ring` says: the verdict, why, and the check it rests on."""

    verdict: Verdict
    check: RingCheck
    answered: int
    silent: list[Silent] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why SEVERAL / MENDING / UNKNOWN
    unread: set[str] = field(default_factory=set)  # members named by others, not read

    @property
    def asked(self) -> int:
        return self.answered + len(self.silent)

    def headline(self) -> str:
        members = len(self.check.ordered)
        read = f"{self.answered} of {self.asked} peers answered"
        if self.verdict is Verdict.ONE:
            return f"one consistent ring of {members} peers ({read})"
        if self.verdict is Verdict.UNKNOWN:
            return f"ring not yet known: {read}"
        return f"{self.verdict.value}: {read}"


def assess_ring(states: Sequence[PeerState], silent: Sequence[Silent] = ()) -> RingView:
    """One ring, several, one still mending, or not yet known — from the states read and
    the peers that did not answer. Pure.

    A silent peer that answering peers name (by the address it answers on) is still a
    member: it takes its place in id order, unread, so a frozen peer does not make a
    consistent ring look broken. Fewer answers than a majority of the peers asked is too
    few to say anything about the whole ring."""
    silent = list(silent)
    asked = len(states) + len(silent)
    if not states or len(states) * 2 <= asked:
        return RingView(Verdict.UNKNOWN, RingCheck(sorted(states, key=lambda s: s.node.id), []),
                        len(states), silent,
                        [f"{len(states)} of {asked} chord peers answered: too few to tell"])
    unread = _unread_members(states, silent)
    check = _check(states, unread)
    view = RingView(Verdict.ONE, check, len(states), silent,
                    unread={s.machine for s in unread})
    members = [s for s in states if s.ring]
    rings = sorted({s.ring for s in members})
    cycles = _successor_cycles(members)
    if len(rings) > 1:
        view.verdict = Verdict.SEVERAL
        view.reasons.append(", ".join(f"{sum(s.ring == r for s in members)} peers in ring "
                                      f"{r}" for r in rings))
    elif len(cycles) > 1:
        view.verdict = Verdict.SEVERAL
        view.reasons.append(f"{len(cycles)} separate successor cycles ("
                            + "; ".join(f"{len(c)} peers from {c[0]}" for c in cycles) + ")")
    elif not check.ok:
        view.verdict = Verdict.MENDING
    known = {s.node.address for s in [*states, *unread]}
    for state in members:
        gone = [n for n in state.successors[:1] if n.address not in known]
        if gone:
            view.reasons.append(f"{state.label}'s successor {gone[0].address} is not a "
                                f"running chord machine (dead?)")
    return view


def _unread_members(states: Sequence[PeerState], silent: Sequence[Silent]) -> list[PeerState]:
    """Placeholders for silent machines that some answering peer names as a neighbour."""
    named: dict[str, NodeRef] = {}
    for state in states:
        for node in (state.predecessor, *state.successors):
            if node is not None:
                named.setdefault(node.address, node)
    unread = []
    bits = states[0].bits
    ring = next((s.ring for s in states if s.ring), "")
    for quiet in silent:
        node = next((named[a] for a in quiet.addresses if a in named), None)
        if node is not None:
            unread.append(PeerState(node=node, bits=bits, ring=ring, predecessor=None,
                                    successors=(), fingers=(), machine=quiet.machine))
    return unread


def _successor_cycles(members: Sequence[PeerState]) -> list[list[str]]:
    """The closed cycles of first successors among answering members, each as labels.

    A chain that runs into a peer that did not answer closes no cycle, so silence alone
    never looks like a second ring."""
    by_address = {s.node.address: s for s in members}
    cycles, placed = [], set()
    for start in members:
        path, seen, here = [], {}, start
        while here is not None and here.node.address not in seen and \
                here.node.address not in placed:
            seen[here.node.address] = len(path)
            path.append(here)
            nxt = here.successors[0] if here.successors else here.node  # alone: itself
            here = by_address.get(nxt.address)
        if here is not None and here.node.address in seen:
            cycle = path[seen[here.node.address]:]
            cycles.append(sorted(s.label for s in cycle))
        placed.update(s.node.address for s in path)
    return cycles


def ring_rows(check: RingCheck, unread: set[str] = frozenset()) -> list[tuple[str, ...]]:
    """id, machine, address, predecessor, successor list, keys: one row per member by id
    (a member named in `unread` did not answer: its own pointers are unknown)."""
    rows = []
    for state in check.ordered:
        if state.machine in unread:
            rows.append((short_id(state.node.id, state.bits), state.machine,
                         state.node.address, "?", "no answer", "?"))
            continue
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


def fetch_states(machines, *, per_peer: float = STATE_TIMEOUT_SECONDS,
                 overall: float = OVERALL_TIMEOUT_SECONDS, workers: int = FETCH_WORKERS,
                 clock: Callable[[], float] = time.monotonic
                 ) -> tuple[list[PeerState], list[Silent]]:
    """Chord.State of every running chord machine, asked in parallel, and a `Silent` for
    each that did not answer within `per_peer` seconds (or before `overall` ran out)."""
    peers = [m for m in machines
             if m.info.role == "chord" and m.info.grpc_endpoint is not None]
    if not peers:
        return [], []
    deadline = clock() + overall

    def ask(machine) -> PeerState | Silent:
        left = deadline - clock()
        if left <= 0:
            return Silent(machine.name, f"not asked: the {overall:.0f} s deadline had passed",
                          _addresses_of(machine))
        channel = machine.channel()
        try:
            reply = chord_pb2_grpc.ChordStub(channel).State(chord_pb2.StateRequest(),
                                                           timeout=min(per_peer, left))
            return PeerState.from_reply(reply, machine.name)
        except grpc.RpcError as exc:
            return Silent(machine.name, f"no answer ({exc.code().name})", _addresses_of(machine))
        except RingError as exc:
            return Silent(machine.name, f"unreadable state ({exc})", _addresses_of(machine))
        finally:
            channel.close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(peers)),
                                                 thread_name_prefix="chord-state")
    futures = [pool.submit(ask, machine) for machine in peers]
    # Every call carries a deadline inside `overall`: the margin covers thread scheduling.
    concurrent.futures.wait(futures, timeout=overall + 1.0)
    pool.shutdown(wait=False, cancel_futures=True)
    states, silent = [], []
    for machine, future in zip(peers, futures, strict=True):
        if not future.done() or future.cancelled():
            silent.append(Silent(machine.name, f"no answer within {overall:.0f} s",
                                 _addresses_of(machine)))
            continue
        result = future.result()
        (states if isinstance(result, PeerState) else silent).append(result)
    return states, silent


def _addresses_of(machine) -> tuple[str, ...]:
    """Where its peers may name this machine: on each lab network (what a peer advertises
    in a container), and its published endpoint (what it advertises on loopback)."""
    info = machine.info
    lab = tuple(f"{ip}:{GRPC_PORT}" for ip in getattr(info, "addresses", ()) or ())
    return (*lab, info.grpc_endpoint) if info.grpc_endpoint else lab
