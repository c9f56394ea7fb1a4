"""One node's view of a Chord ring, and the protocol steps that keep it right. Sans-I/O.

The protocol is Chord as corrected by Zave ("Reasoning about identifier spaces:
how to make Chord correct", 2017), not the original pseudocode:

- a joining node looks up its own id, then copies its successor's successor
  list at once, so it has r fallbacks from its first moment in the ring;
- `stabilize` asks the first successor that answers (dead ones are skipped and
  dropped) for its predecessor and successor list, adopts that predecessor as
  new successor only if it lies between and answers, and then tells the
  successor about itself;
- `rectify` replaces Chord's notify: a node adopts a would-be predecessor only
  if it has none, the candidate lies between, or the current one is dead;
- `check_predecessor` forgets a dead predecessor; `fix_fingers` refreshes
  fingers with one lookup that fills every finger owned by the same node;
- routing (`route`, `lookup`) picks the closest preceding node among fingers
  AND successors, and a lookup that meets a dead node takes the next-best one;
- beyond the paper: `weave` stitches back a ring that a healed partition left
  as two cycles, which stabilization alone never merges.

Every step that needs another node is a generator: it yields a request
(`GetView`, `AskRoute`, `SendRectify`) and is sent back the answer, or None
when that node is dead (or belongs to another ring). A `GetView` may also be
answered `SILENT`: no answer this time, but the failure detector does not
suspect the node yet (phi accrual, nodes.common.phi: a timeout is evidence,
not a verdict). Steps that only route (lookups, joins, weaving) go around a
silent node as around a dead one; steps that change who our neighbours are
keep it: stabilize keeps a silent successor until the next round,
check_predecessor and rectify keep a silent predecessor. `drive` runs a step
against any `answer` function: the gRPC peer answers with RPCs, the
simulator with other `ChordNode` objects in the same process.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nodes.chord.ring import (
    NodeRef,
    between,
    between_right,
    check_bits,
    distance,
    finger_start,
    format_id,
)

#: Nodes a route answer offers, best first: fallbacks when the best one is dead.
ROUTE_CANDIDATES = 8
#: How often a lookup may step back toward the key through an owner's newer predecessor.
MAX_REDIRECTS = 8

T = TypeVar("T")


class ChordError(Exception):
    """A protocol step that cannot succeed; the message says why."""


class DuplicateId(ChordError):
    """Another member already has this node's identifier."""


class JoinFailed(ChordError):
    """The ring could not place this node (no live owner of its id answered)."""


@dataclass(frozen=True)
class NodeView:
    """What a node tells others about itself: the stabilize and liveness answer."""

    node: NodeRef
    predecessor: NodeRef | None
    successors: tuple[NodeRef, ...]
    ring: str  # the ring it is a member of; "" when it is in none


class Silent:
    """The type of `SILENT`."""

    def __repr__(self) -> str:
        return "SILENT"


#: A GetView answer: the node did not answer in time, and is not suspected yet.
SILENT = Silent()


@dataclass(frozen=True)
class RouteAnswer:
    """One routing step. owner_found: the target lies in (asked node, its successor] and
    `nodes` are the owner candidates (its successor list); else `nodes` are closer nodes
    preceding the target, best first, and `successors` the asked node's successor list."""

    owner_found: bool
    nodes: tuple[NodeRef, ...]
    successors: tuple[NodeRef, ...] = ()


@dataclass(frozen=True)
class GetView:
    node: NodeRef
    ring: str | None  # None: any ring (a joining node's first contact)


@dataclass(frozen=True)
class AskRoute:
    node: NodeRef
    target: int
    ring: str


@dataclass(frozen=True)
class SendRectify:
    node: NodeRef
    candidate: NodeRef
    ring: str


Request = GetView | AskRoute | SendRectify
Step = Generator[Request, Any, T]


@dataclass
class LookupResult:
    target: int
    owner: NodeRef | None
    path: list[NodeRef] = field(default_factory=list)  # who answered, in order; then the owner
    hops: int = 0  # routing steps after the first node (the owner's own check is no hop)
    timeouts: int = 0  # nodes that did not answer on the way
    unreachable: list[NodeRef] = field(default_factory=list)  # those nodes

    @property
    def ok(self) -> bool:
        return self.owner is not None


def drive(step: Step[T], answer: Callable[[Request], Any],
          lock: AbstractContextManager | None = None) -> T:
    """Run a protocol step to its end: `answer` each request it yields.

    `lock` is held while the step computes and released while a request is
    answered, so a node can serve others while it waits on the network.
    """
    guard = lock if lock is not None else nullcontext()
    try:
        with guard:
            request = next(step)
        while True:
            reply = answer(request)
            with guard:
                request = step.send(reply)
    except StopIteration as done:
        return done.value


def _covering_successors(router: NodeRef, successors: Sequence[NodeRef],
                         target: int) -> list[tuple[tuple[NodeRef, ...], tuple[NodeRef, ...]]]:
    """If `target` falls within the router's successor list, split the list there: the
    successors before the target, and those from the target's owner on."""
    before = router
    for index, successor in enumerate(successors):
        if between_right(before.id, target, successor.id):
            return [(tuple(successors[:index]), tuple(successors[index:]))] if index else []
        before = successor
    return []


def _uncovered_owners(covering: list[tuple[tuple[NodeRef, ...], tuple[NodeRef, ...]]],
                      dead: set[NodeRef]) -> tuple[NodeRef, ...] | None:
    """Owner candidates of the latest router whose successors before the target all died."""
    for index in range(len(covering) - 1, -1, -1):
        preceding, owners = covering[index]
        if all(node in dead for node in preceding):
            del covering[index]
            return owners
    return None


class ChordNode:
    """The membership state of one node: successor list, predecessor, fingers, ring."""

    def __init__(self, me: NodeRef, *, bits: int, successors: int) -> None:
        check_bits(bits)
        if successors < 1:
            raise ValueError("a successor list holds at least one node")
        self.me = me
        self.bits = bits
        self.r = successors
        self.ring = ""
        self.predecessor: NodeRef | None = None
        self.next_finger = 0
        self._successors: list[NodeRef] = [me]
        self._fingers: list[NodeRef | None] = [None] * bits
        self._table: tuple[list[int], list[NodeRef]] | None = None

    def __repr__(self) -> str:
        return f"ChordNode({format_id(self.me.id, self.bits)} @ {self.me.address})"

    # -- state ---------------------------------------------------------------------------

    @property
    def member(self) -> bool:
        return bool(self.ring)

    @property
    def successors(self) -> tuple[NodeRef, ...]:
        return tuple(self._successors)

    @property
    def successor(self) -> NodeRef:
        return self._successors[0]

    @property
    def fingers(self) -> tuple[NodeRef | None, ...]:
        return tuple(self._fingers)

    def view(self) -> NodeView:
        return NodeView(self.me, self.predecessor, self.successors, self.ring)

    def create(self, ring: str) -> None:
        """Start a ring of one: this node is its own successor."""
        self._reset(ring)

    def leave_ring(self) -> None:
        """Forget the ring (every successor died, or a ring merge): not a member any more."""
        self._reset("")

    def install(self, ring: str, successors: Sequence[NodeRef], predecessor: NodeRef | None,
                fingers: Sequence[NodeRef | None]) -> None:
        """Set the state a stabilized ring would have (the simulator's bulk construction)."""
        if len(fingers) != self.bits:
            raise ValueError(f"{len(fingers)} fingers for a {self.bits}-bit ring")
        self.ring = ring
        self.predecessor = predecessor
        self._successors = self._successor_list(successors)
        self._fingers = [None if f == self.me else f for f in fingers]
        self._table = None

    def ring_size_estimate(self) -> int:
        """Members of the ring, estimated from how much of it the successor list spans."""
        others = [s for s in self._successors if s != self.me]
        if not others:
            return 1
        if len(others) < self.r:  # the list reached back around to this node: it is complete
            return len(others) + 1
        span = distance(self.me.id, others[-1].id, self.bits) or 1
        return max(len(others) + 1, round(len(others) * (1 << self.bits) / span))

    def forget(self, node: NodeRef) -> None:
        """Drop `node` from the fingers (it did not answer); stabilize mends the successors."""
        if node in self._fingers:
            self._fingers = [None if f == node else f for f in self._fingers]
            self._table = None

    def _reset(self, ring: str) -> None:
        self.ring = ring
        self.predecessor = None
        self.next_finger = 0
        self._successors = [self.me]
        self._fingers = [None] * self.bits
        self._table = None

    def _set_successors(self, nodes: Iterable[NodeRef]) -> bool:
        successors = self._successor_list(nodes)
        if successors == self._successors:
            return False
        self._successors = successors
        self._table = None
        return True

    def _successor_list(self, nodes: Iterable[NodeRef]) -> list[NodeRef]:
        """At most r distinct nodes in ring order, cut where the list comes back to us."""
        result: list[NodeRef] = []
        for node in nodes:
            if node == self.me or node in result:
                break
            result.append(node)
            if len(result) == self.r:
                break
        return result or [self.me]

    # -- routing -------------------------------------------------------------------------

    def _routing_table(self) -> tuple[list[int], list[NodeRef]]:
        """Every node known (fingers and successors), sorted by clockwise distance from us."""
        if self._table is None:
            known = {n for n in self._fingers if n is not None}
            known.update(self._successors)
            known.discard(self.me)
            ordered = sorted(known, key=lambda n: distance(self.me.id, n.id, self.bits))
            self._table = ([distance(self.me.id, n.id, self.bits) for n in ordered], ordered)
        return self._table

    def closest_preceding_nodes(self, target: int,
                                limit: int = ROUTE_CANDIDATES) -> list[NodeRef]:
        """Known nodes strictly between us and `target`, the closest to `target` first."""
        distances, nodes = self._routing_table()
        # (me, me) is the whole ring: every known node precedes our own id.
        reach = distance(self.me.id, target, self.bits) or (1 << self.bits)
        end = bisect_left(distances, reach)
        return nodes[max(0, end - limit):end][::-1]

    def route(self, target: int, limit: int = ROUTE_CANDIDATES) -> RouteAnswer:
        successor = self._successors[0]
        if successor == self.me or between_right(self.me.id, target, successor.id):
            return RouteAnswer(True, tuple(self._successors))
        return RouteAnswer(False, tuple(self.closest_preceding_nodes(target, limit)),
                           tuple(self._successors))

    def lookup(self, target: int, *, via: NodeRef | None = None,
               ring: str | None = None) -> Step[LookupResult]:
        """Find the owner of `target` iteratively, starting here or at `via`.

        Every node that answers offers closer nodes; the closest one not yet
        tried is asked next, so a dead node costs one timeout and the lookup
        goes on through the next-best finger or successor. When every node a
        router knows between itself and the target is dead, the router's next
        live successor past them owns the target: its successor list says who.
        """
        ring = self.ring if ring is None else ring
        start = via or self.me
        frontier = [(distance(start.id, target, self.bits), start)]
        asked: list[NodeRef] = []
        dead: set[NodeRef] = set()
        covering: list[tuple[tuple[NodeRef, ...], tuple[NodeRef, ...]]] = []
        timeouts = redirects = 0
        contacts_left = 4 * self.bits + 4 * ROUTE_CANDIDATES
        while contacts_left > 0:
            owners = _uncovered_owners(covering, dead)
            if owners is None:
                if not frontier:
                    break
                _, node = heapq.heappop(frontier)
                if node in dead or node in asked:
                    continue
                contacts_left -= 1
                if node == self.me:  # our own table costs nothing to read: offer all of it
                    answer = self.route(target, self.bits + self.r) if self.ring == ring else None
                else:
                    answer = yield AskRoute(node, target, ring)
                if answer is None:
                    dead.add(node)
                    timeouts += 1
                    continue
                asked.append(node)
                if not answer.owner_found:
                    for candidate in answer.nodes:
                        if candidate not in dead and candidate not in asked:
                            heapq.heappush(frontier, (distance(candidate.id, target, self.bits),
                                                      candidate))
                    covering.extend(_covering_successors(node, answer.successors, target))
                    continue
                owners = answer.nodes
            owner, stepped, missed = yield from self._confirm_owner(target, owners, ring, dead)
            timeouts += missed
            redirects += stepped
            contacts_left -= 1 + missed + stepped
            if owner is not None:
                return LookupResult(target, owner, [*asked, owner], len(asked) - 1 + redirects,
                                    timeouts, sorted(dead))
        return LookupResult(target, None, asked, max(0, len(asked) - 1), timeouts, sorted(dead))

    def _confirm_owner(self, target: int, candidates: Sequence[NodeRef], ring: str,
                       dead: set[NodeRef]) -> Step[tuple[NodeRef | None, int, int]]:
        """The first candidate that answers owns `target` unless its own predecessor says a
        newer node, not yet known to the router, now sits between the target and it."""
        timeouts = redirects = 0
        for candidate in candidates:
            if candidate in dead:
                continue
            view = yield from self._view_of(candidate, ring)
            if not isinstance(view, NodeView):
                dead.add(candidate)
                timeouts += 1
                continue
            owner = candidate
            while redirects < MAX_REDIRECTS:
                before = view.predecessor
                if before is None or before in dead or between_right(before.id, target, owner.id):
                    break
                earlier = yield from self._view_of(before, ring)
                if not isinstance(earlier, NodeView):
                    dead.add(before)
                    timeouts += 1
                    break
                owner, view = before, earlier
                redirects += 1
            return owner, redirects, timeouts
        return None, redirects, timeouts

    def _view_of(self, node: NodeRef, ring: str | None) -> Step[NodeView | None]:
        if node == self.me:
            return self.view() if ring is None or self.ring == ring else None
        return (yield GetView(node, ring))

    # -- membership ----------------------------------------------------------------------

    def join(self, contact: NodeView) -> Step[None]:
        """Join the ring `contact` belongs to: look up our own id through it, then take the
        owner as successor and copy its successor list (Zave). Raises DuplicateId or
        JoinFailed; on success this node is a member with no predecessor yet."""
        found = yield from self.lookup(self.me.id, via=contact.node, ring=contact.ring)
        if found.owner is None:
            raise JoinFailed(f"no live member of ring {contact.ring} owns id "
                             f"{format_id(self.me.id, self.bits)}")
        if found.owner.id == self.me.id:
            raise DuplicateId(f"id {format_id(self.me.id, self.bits)} is already used by "
                              f"{found.owner.address}")
        view = yield GetView(found.owner, contact.ring)
        if not isinstance(view, NodeView):
            raise JoinFailed(f"our successor-to-be {found.owner.address} stopped answering")
        self._reset(contact.ring)
        self._set_successors([found.owner, *view.successors])

    def weave(self, contact: NodeView) -> Step[bool]:
        """Ask `contact`, a member of our ring, who owns our own id. Anyone but us means the
        ring has split into cycles that do not know each other (a healed partition: Chord's
        stabilization alone never merges them). If that owner lies between us and our
        successor, take it as successor; stabilize and rectify then stitch the cycles
        together, one such link at a time. True if the successor changed."""
        found = yield from self.lookup(self.me.id, via=contact.node, ring=contact.ring)
        owner = found.owner
        if owner is None or owner == self.me or contact.ring != self.ring:
            return False
        successor = self._successors[0]
        if successor != self.me and not between(self.me.id, owner.id, successor.id):
            return False
        view = yield GetView(owner, self.ring)
        if not isinstance(view, NodeView) or self.ring != contact.ring:
            return False
        return self._set_successors([owner, *view.successors])

    def stabilize(self) -> Step[str]:
        """One round of Zave's stabilize. Returns "successor_changed", "none", or "lost" when
        every successor is dead: the node is then out of the ring and must join again. A
        silent successor is kept and this round ends: the next one asks it again."""
        ring = self.ring
        before = self._successors[0]
        while True:
            successor = self._successors[0]
            view = yield from self._view_of(successor, ring)
            if self.ring != ring:  # left or re-joined meanwhile: this round is moot
                return "none"
            if view is SILENT:
                return "successor_changed" if successor != before else "none"
            if view is not None:
                break
            self.forget(successor)
            if len(self._successors) == 1:
                self.leave_ring()
                return "lost"
            self._successors = self._successors[1:]
            self._table = None
        self._set_successors([successor, *view.successors])
        candidate = view.predecessor
        if candidate is not None and candidate != self.me and \
                between(self.me.id, candidate.id, successor.id):
            closer = yield GetView(candidate, ring)
            if isinstance(closer, NodeView) and self.ring == ring:
                self._set_successors([candidate, *closer.successors])
        if self._successors[0] != self.me:
            yield SendRectify(self._successors[0], self.me, ring)
        return "successor_changed" if self._successors[0] != before else "none"

    def rectify(self, candidate: NodeRef) -> Step[bool]:
        """`candidate` believes it is our predecessor: adopt it if we have none, if it lies
        between the current one and us, or if the current one is dead. True if adopted."""
        if not self.member or candidate == self.me or candidate.id == self.me.id:
            return False
        current = self.predecessor
        if current == candidate:
            return False
        if current is not None and not between(current.id, candidate.id, self.me.id):
            if (yield from self._view_of(current, self.ring)) is not None:
                return False  # it answered, or it is silent but not suspected: kept
            if self.predecessor != current:
                return False
        self.predecessor = candidate
        return True

    def check_predecessor(self) -> Step[bool]:
        """Forget a predecessor that is dead (a silent one is kept). True if forgotten."""
        current = self.predecessor
        if current is None or current == self.me:
            return False
        if (yield GetView(current, self.ring)) is not None or self.predecessor != current:
            return False
        self.predecessor = None
        return True

    def fix_fingers(self) -> Step[bool]:
        """Refresh the next finger with one lookup (see `file_finger`). True if one changed."""
        found = yield from self.lookup(self.next_finger_target())
        return self.file_finger(found)

    def next_finger_target(self) -> int:
        return finger_start(self.me.id, self.next_finger, self.bits)

    def file_finger(self, found: LookupResult) -> bool:
        """Store the owner of the next finger's start, and in every later finger whose start
        falls before that owner: one lookup refreshes them all. True if a finger changed."""
        index = self.next_finger
        if found.target != self.next_finger_target():
            return False  # the table was reset (a re-join) while the lookup ran
        self.next_finger = (index + 1) % self.bits
        if found.owner is None:
            return False
        reach = distance(self.me.id, found.owner.id, self.bits) or (1 << self.bits)
        changed = False
        last = index
        while last < self.bits and (1 << last) <= reach:
            changed |= self._set_finger(last, found.owner)
            last += 1
        self.next_finger = max(last, index + 1) % self.bits
        return changed

    def _set_finger(self, index: int, node: NodeRef) -> bool:
        value = None if node == self.me else node
        if self._fingers[index] == value:
            return False
        self._fingers[index] = value
        self._table = None
        return True

    def on_leave(self, leaving: NodeRef, predecessor: NodeRef | None,
                 successors: Sequence[NodeRef]) -> bool:
        """A neighbour leaves gracefully and hands over its own neighbours. True if changed."""
        changed = False
        if self.predecessor == leaving:
            self.predecessor = None if predecessor in (None, self.me, leaving) else predecessor
            changed = True
        if self._successors[0] == leaving:
            changed |= self._set_successors(s for s in successors if s != leaving)
        elif leaving in self._successors:
            changed |= self._set_successors(s for s in self._successors if s != leaving)
        self.forget(leaving)
        return changed
