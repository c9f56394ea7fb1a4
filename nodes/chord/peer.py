"""The Chord peer: the gRPC service and the maintenance timers around the sans-I/O core.

`ChordPeer` serves `distlab.chord.Chord`. Protocol decisions are the
`ChordNode`'s (membership) and the `KeyStore`'s (keyspace); this module turns
their requests into RPCs (every one with a deadline: for routing and
maintenance, each peer's own, learned from its round trips as Bamboo does
(nodes.common.rtt, between CHORD_HOP_TIMEOUT_MIN_SECONDS and _MAX_SECONDS);
RPC_TIMEOUT_SECONDS for data) and runs one maintenance thread: join (or
create), stabilize, fix_fingers, check_predecessor, re-replication and the
ring-merge check, each on its own period with jitter; fix_fingers and the
merge check slow down (up to 8x) while rounds find nothing to change, which
is most of what an idle ring costs. Keys are held in memory only: replication on CHORD_REPLICAS
successors, not the disk, is what survives a failed peer.

Liveness of other peers is the node contract's phi accrual detector
(nodes.common.phi, the peer watcher's settings PEER_PHI_THRESHOLD and
PEER_ACCEPTABLE_PAUSE_SECONDS): every answer from a peer is a heartbeat;
a refused connection or an error status is definite and the peer is dead at
once, as Chord always had it; a timeout is only evidence, and until phi
reaches the threshold the peer is `SILENT`, not dead, so stabilize and
check_predecessor keep a slow neighbour instead of dropping it (and the
churn of dropping and re-finding it on a starved machine). Lookups route
around a silent peer as around a dead one.

Startup race (every replica of a Compose service starting at once, CHORD_JOIN
naming the service): a peer joins the oldest ring any CHORD_JOIN peer reports;
when none reports one, only the peer with the lowest address among those that
answer creates a ring (and only if it is itself one of the CHORD_JOIN
addresses, so a peer told to join a single unreachable address waits and says
so instead of founding a ring of its own). Two rings can still be born in the
same instant; every member keeps asking a random CHORD_JOIN peer which ring it
is in, and the members of the younger ring join the older one, taking their
keys with them. The same question, asked of a member of our own ring, finds a
ring that a healed partition left as two cycles (`ChordNode.weave`).
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from nodes.chord.keyspace import Entry, KeyStore
from nodes.chord.membership import (
    SILENT,
    AskRoute,
    ChordError,
    ChordNode,
    DuplicateId,
    GetView,
    LookupResult,
    NodeView,
    Request,
    RouteAnswer,
    SendRectify,
    Silent,
    drive,
)
from nodes.chord.ring import (
    NodeRef,
    RingError,
    between,
    between_right,
    finger_start,
    format_id,
    hash_id,
    key_id,
    parse_id,
    short_id,
)
from nodes.common.config import ConfigError, own_ip
from nodes.common.metrics import LATENCY_BUCKETS
from nodes.common.peers import SILENCE_CODES, phi_detector, resolve_ipv4
from nodes.common.role import NodeContext, RoleNode
from nodes.common.rtt import RttEstimator
from nodes.rpc import chord_pb2, chord_pb2_grpc

SERVICE_NAME = chord_pb2.DESCRIPTOR.services_by_name["Chord"].full_name
HOP_BUCKETS = tuple(range(17))
#: Lookups a Put/Get/Delete tries before giving up: ownership moves while a ring changes.
CLIENT_ATTEMPTS = 4
#: Every this many stabilize rounds, owned keys are pushed to the replicas even if nothing
#: changed: a replica restarted at the same address between two rounds lost its copies.
REPAIR_EVERY_ROUNDS = 30
# A tombstone's grace must cover this many repair periods (REPAIR_EVERY_ROUNDS stabilize
# rounds each), so one repair that failed to reach a replica is not the last chance.
TOMBSTONE_GRACE_REPAIRS = 2
#: Bytes of entries per Transfer message, well under the default message limit.
TRANSFER_BATCH_BYTES = 1024 * 1024
LOOKUP_PURPOSES = ("client", "finger", "rehome")
STABILIZE_CHANGES = ("successor_changed", "predecessor_changed", "none", "lost")
# Each periodic task runs at its period times a random factor in 1 ± this: peers started
# together would otherwise call each other in lock step, and a starved machine would see
# every peer's round land at once.
PERIOD_JITTER = 0.2
# A ring that has stopped changing needs its fingers refreshed and its merge checked less
# often: each quiet round (a full finger table with no change, a merge check that found
# one ring) doubles the task's period, up to this factor; any change brings it back to 1.
CALM_MAX_STRETCH = 8.0
CALMING_TASKS = ("fix_fingers", "merge_check")
TRANSFER_REASONS = ("join", "leave", "replicate", "rehome")


class NotOwner(ChordError):
    """This peer does not own the key (any more): the caller looks it up again."""


class ChordMetrics:
    def __init__(self, registry) -> None:
        self.lookups = Counter("distlab_chord_lookups_total",
                               "Lookups this peer started, by purpose and result.",
                               ["purpose", "result"], registry=registry)
        self.hops = Histogram("distlab_chord_lookup_hops",
                              "Routing steps of a successful lookup (path length).",
                              ["purpose"], buckets=HOP_BUCKETS, registry=registry)
        self.seconds = Histogram("distlab_chord_lookup_seconds",
                                 "Time from starting a lookup to knowing the owner.",
                                 ["purpose"], buckets=LATENCY_BUCKETS, registry=registry)
        self.timeouts = Counter("distlab_chord_lookup_timeouts_total",
                                "Dead or silent peers a lookup met and routed around.",
                                ["purpose"], registry=registry)
        self.stabilize = Counter("distlab_chord_stabilize_total",
                                 "Maintenance outcomes: successor_changed, predecessor_changed, "
                                 "none (a stabilize round changed nothing), lost (every "
                                 "successor dead).", ["change"], registry=registry)
        self.transfers = Counter("distlab_chord_key_transfers_total",
                                 "Entries this peer sent to another, by reason (join, leave, "
                                 "replicate, rehome).", ["reason"], registry=registry)
        self.keys = Gauge("distlab_chord_keys",
                          "Live keys held: owned, or replicas kept for predecessors.",
                          ["kind"], registry=registry)
        self.successors = Gauge("distlab_chord_successors", "Entries in the successor list.",
                                registry=registry)
        self.tombstones = Gauge("distlab_chord_tombstones",
                                "Deleted keys this peer still remembers (until every replica "
                                "holds the delete and CHORD_TOMBSTONE_GRACE_SECONDS passed).",
                                registry=registry)
        self.tombstones_expired = Counter("distlab_chord_tombstones_expired_total",
                                          "Tombstones this peer dropped after their grace.",
                                          registry=registry)
        self.ring_size = Gauge("distlab_chord_ring_size_estimate",
                               "Ring members, estimated from the successor list's span.",
                               registry=registry)
        self.member = Gauge("distlab_chord_member", "1 when this peer is a ring member.",
                            registry=registry)
        # Every series exists from the start (at 0), so a quiet ring still draws its panels.
        for purpose in LOOKUP_PURPOSES:
            for result in ("ok", "failed"):
                self.lookups.labels(purpose=purpose, result=result)
            self.hops.labels(purpose=purpose)
            self.seconds.labels(purpose=purpose)
            self.timeouts.labels(purpose=purpose)
        for change in STABILIZE_CHANGES:
            self.stabilize.labels(change=change)
        for reason in TRANSFER_REASONS:
            self.transfers.labels(reason=reason)


# -- wire conversions --------------------------------------------------------------------------


def node_message(node: NodeRef | None, bits: int) -> chord_pb2.Node | None:
    return None if node is None else chord_pb2.Node(id=format_id(node.id, bits),
                                                    address=node.address)


def node_from(message: chord_pb2.Node, bits: int) -> NodeRef:
    return NodeRef(parse_id(message.id, bits), message.address)


def optional_node(message: chord_pb2.Node, bits: int) -> NodeRef | None:
    return node_from(message, bits) if message.address else None


def entry_message(entry: Entry) -> chord_pb2.Entry:
    return chord_pb2.Entry(key=entry.key, value=entry.value, version=entry.version,
                           deleted=entry.deleted)


def entry_from(message: chord_pb2.Entry, bits: int) -> Entry:
    return Entry(message.key, key_id(message.key, bits), message.value, message.version,
                 message.deleted)


def batches(entries: Sequence[Entry]) -> Iterable[list[Entry]]:
    batch: list[Entry] = []
    size = 0
    for entry in entries:
        if batch and size + len(entry.value) + len(entry.key) > TRANSFER_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += len(entry.value) + len(entry.key)
    if batch:
        yield batch


def address_order(address: str) -> tuple:
    """Sort key of host:port addresses: numerically by IP where the host is one."""
    host, _, port = address.rpartition(":")
    try:
        return (0, int(ipaddress.ip_address(host)), int(port or 0))
    except ValueError:
        return (1, host, int(port) if port.isdigit() else 0)


# -- the peer ----------------------------------------------------------------------------------


class ChordPeer(RoleNode, chord_pb2_grpc.ChordServicer):
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        self._ctx = ctx
        self._log = ctx.log
        self.bits = config["CHORD_BITS"]
        self._successor_count = config["CHORD_SUCCESSORS"]
        self._replica_count = config["CHORD_REPLICAS"]
        if self._replica_count > self._successor_count:
            raise ConfigError(f"CHORD_REPLICAS={self._replica_count} must not exceed "
                              f"CHORD_SUCCESSORS={self._successor_count}: replicas live on "
                              f"the successors a peer knows")
        self._explicit_id: int | None = None
        if config["CHORD_ID"]:
            try:
                self._explicit_id = parse_id(config["CHORD_ID"], self.bits)
            except RingError as exc:
                raise ConfigError(f"CHORD_ID: {exc}") from None
        self._periods = {
            "stabilize": config["CHORD_STABILIZE_SECONDS"],
            "fix_fingers": config["CHORD_FIX_FINGERS_SECONDS"],
            "check_predecessor": config["CHORD_CHECK_PREDECESSOR_SECONDS"],
            "merge_check": config["CHORD_MERGE_CHECK_SECONDS"],
        }
        repair_seconds = REPAIR_EVERY_ROUNDS * config["CHORD_STABILIZE_SECONDS"]
        self._tombstone_grace = config["CHORD_TOMBSTONE_GRACE_SECONDS"]
        if self._tombstone_grace <= TOMBSTONE_GRACE_REPAIRS * repair_seconds:
            raise ConfigError(
                f"CHORD_TOMBSTONE_GRACE_SECONDS={self._tombstone_grace} must exceed "
                f"{TOMBSTONE_GRACE_REPAIRS} repair periods ({REPAIR_EVERY_ROUNDS} x "
                f"CHORD_STABILIZE_SECONDS = {repair_seconds:g} s each): a tombstone must "
                f"outlive the repairs that hand it to every replica")
        self._replicated_ns = 0  # when the last repair that reached every replica started
        self._hop_timeout = config["CHORD_HOP_TIMEOUT_SECONDS"]
        self._rtt = RttEstimator(initial=self._hop_timeout,
                                 minimum=config["CHORD_HOP_TIMEOUT_MIN_SECONDS"],
                                 maximum=config["CHORD_HOP_TIMEOUT_MAX_SECONDS"])
        self._stretch = dict.fromkeys(CALMING_TASKS, 1.0)
        self._fingers_changed = False  # in the finger round under way
        self._shown_neighbours: set[str] = set()  # peers with a distlab_peer_up series
        # Neighbours are heard from every stabilize round, the rhythm phi learns first.
        # fall=1: a refused connection is definite. rise=1: any answer is proof of life.
        self._liveness = phi_detector(
            interval=self._periods["stabilize"], threshold=config["PEER_PHI_THRESHOLD"],
            acceptable_pause=config["PEER_ACCEPTABLE_PAUSE_SECONDS"], rise=1, fall=1)
        self._liveness_lock = threading.Lock()
        self._data_timeout = config["RPC_TIMEOUT_SECONDS"]
        self._store = KeyStore(bits=self.bits, max_value_bytes=config["CHORD_MAX_VALUE_BYTES"])
        self._metrics = ChordMetrics(ctx.registry)
        self._lock = threading.Lock()  # guards the core; released while a step waits on I/O
        self._core: ChordNode | None = None
        self._join_error = ""
        self._refused = False  # our id is taken: joining keeps being retried, and refused
        self._replicated_for: tuple | None = None
        self._rounds = 0
        self._stubs: dict[str, chord_pb2_grpc.ChordStub] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._handoffs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chord-handoff")
        self._metrics.keys.labels(kind="owned").set_function(lambda: self._key_counts()[0])
        self._metrics.keys.labels(kind="replica").set_function(lambda: self._key_counts()[1])
        self._metrics.successors.set_function(lambda: len(self._others(self._core)))
        self._metrics.tombstones.set_function(self._store.tombstones)
        self._metrics.ring_size.set_function(
            lambda: self._core.ring_size_estimate() if self._core and self._core.member else 0)
        self._metrics.member.set_function(lambda: 1 if self._core and self._core.member else 0)

    # -- node contract -------------------------------------------------------------------------

    def register(self, server: grpc.Server) -> None:
        chord_pb2_grpc.add_ChordServicer_to_server(self, server)

    def serving(self, grpc_port: int) -> None:
        host = self._ctx.config["CHORD_ADVERTISE_HOST"] or own_ip() or "127.0.0.1"
        address = f"{host}:{grpc_port}"
        ident = self._explicit_id if self._explicit_id is not None else hash_id(address,
                                                                               self.bits)
        with self._lock:
            self._core = ChordNode(NodeRef(ident, address), bits=self.bits,
                                   successors=self._successor_count)
        self._log.info("chord_identity", id=format_id(ident, self.bits), address=address)
        self._thread = threading.Thread(target=self._maintain, name="chord-maintenance",
                                        daemon=True)
        self._thread.start()

    def status(self) -> dict[str, str]:
        core = self._core
        if core is None:
            return {"state": "starting"}
        with self._lock:
            member, me, pred = core.member, core.me, core.predecessor
            successors, size = self._others(core), core.ring_size_estimate()
        owned, replicas = self._key_counts()
        state = {"id": short_id(me.id, self.bits), "address": me.address,
                 "state": "member" if member else ("refused" if self._refused else "joining"),
                 "successor": successors[0].address if successors else (
                     "self" if member else "-"),
                 "predecessor": pred.address if pred else "-",
                 "successors": str(len(successors)), "keys": str(owned),
                 "replicas": str(replicas), "tombstones": str(self._store.tombstones()),
                 "ring_size": str(size if member else 0),
                 "ring_ok": "yes" if member and (not successors or pred) else "no"}
        if self._join_error:
            state["join_error"] = self._join_error
        return state

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self._hop_timeout + max(self._periods.values()))
        self._handoffs.shutdown(wait=True)
        if self._ctx.config["CHORD_GRACEFUL_LEAVE"]:
            self._leave()

    # -- talking to other peers ----------------------------------------------------------------

    def _stub(self, address: str) -> chord_pb2_grpc.ChordStub:
        stub = self._stubs.get(address)
        if stub is None:
            stub = chord_pb2_grpc.ChordStub(self._ctx.channels.get(address, address))
            self._stubs[address] = stub
        return stub

    def _heard(self, address: str, error: grpc.RpcError | None = None) -> None:
        """Tell the liveness detector how a call to `address` ended."""
        now = time.monotonic()
        with self._liveness_lock:
            if error is None:
                self._liveness.heartbeat(address, now)
            elif error.code() in SILENCE_CODES:
                self._liveness.silent(address, now)
            else:
                self._liveness.refused(address, now)

    def _hop(self, address: str, method: Callable, request: Any) -> Any:
        """One routing or maintenance call to `address`, within the deadline its measured
        round trips give (nodes.common.rtt); tells the liveness detector how it ended."""
        started = time.monotonic()
        try:
            reply = method(request, timeout=self._rtt.timeout(address))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self._rtt.timed_out(address)
            self._heard(address, exc)
            raise
        self._rtt.observe(address, time.monotonic() - started)
        self._heard(address)
        return reply

    def _suspected(self, address: str) -> bool:
        with self._liveness_lock:
            return not self._liveness.is_up(address)

    def _read_view(self, address: str) -> NodeView | Silent | None:
        """A peer's view of itself; SILENT when it did not answer but is not suspected;
        None when it is (or its answer made no sense)."""
        try:
            reply = self._hop(address, self._stub(address).Neighbours,
                              chord_pb2.NeighboursRequest())
        except grpc.RpcError:
            return None if self._suspected(address) else SILENT
        try:
            return NodeView(node_from(reply.self, self.bits),
                            optional_node(reply.predecessor, self.bits),
                            tuple(node_from(n, self.bits) for n in reply.successors), reply.ring)
        except RingError:
            return None

    def _probe(self, address: str, ring: str | None) -> NodeView | None:
        """A peer's view of itself; None if it did not answer or is in another ring than
        `ring`."""
        view = self._read_view(address)
        if not isinstance(view, NodeView):
            return None
        return view if ring is None or view.ring == ring else None

    def _answer(self, request: Request) -> Any:
        """Carry out one request of a protocol step; None stands for "no answer"."""
        if isinstance(request, GetView):
            view = self._read_view(request.node.address)
            if not isinstance(view, NodeView):
                return view
            if request.ring is not None and view.ring != request.ring:
                return None
            # Another id at that address is another node (restarted with a new CHORD_ID).
            return view if view.node == request.node else None
        stub = self._stub(request.node.address)
        try:
            if isinstance(request, AskRoute):
                reply = self._hop(request.node.address, stub.Route, chord_pb2.RouteRequest(
                    target=format_id(request.target, self.bits), ring=request.ring))
                if reply.ring != request.ring:
                    return None
                return RouteAnswer(reply.owner_found,
                                   tuple(node_from(n, self.bits) for n in reply.nodes),
                                   tuple(node_from(n, self.bits) for n in reply.successors))
            if isinstance(request, SendRectify):
                self._hop(request.node.address, stub.Rectify, chord_pb2.RectifyRequest(
                    candidate=node_message(request.candidate, self.bits), ring=request.ring))
        except grpc.RpcError:
            return None
        except RingError:
            return None
        return None

    def _run(self, step):
        return drive(step, self._answer, self._lock)

    def _lookup(self, target: int, purpose: str) -> LookupResult:
        started = time.perf_counter()
        core = self._core
        result = self._run(core.lookup(target))
        self._metrics.seconds.labels(purpose=purpose).observe(time.perf_counter() - started)
        self._metrics.lookups.labels(purpose=purpose, result="ok" if result.ok else
                                     "failed").inc()
        if result.timeouts:
            self._metrics.timeouts.labels(purpose=purpose).inc(result.timeouts)
        if result.ok:
            self._metrics.hops.labels(purpose=purpose).observe(result.hops)
        with self._lock:
            for node in result.unreachable:  # fix_fingers refills them with live nodes
                core.forget(node)
        return result

    def _transfer(self, target: NodeRef, entries: Sequence[Entry], reason: str,
                  timeout: float | None = None) -> bool:
        """Send copies of `entries` to `target`. True if every batch arrived."""
        for batch in batches(entries):
            try:
                self._stub(target.address).Transfer(chord_pb2.TransferRequest(
                    entries=[entry_message(e) for e in batch], reason=reason),
                    timeout=timeout or self._data_timeout)
            except grpc.RpcError as exc:
                self._log.warning("chord_transfer_failed", to=target.address, reason=reason,
                                  code=exc.code().name)
                return False
            self._metrics.transfers.labels(reason=reason).inc(len(batch))
        return True

    # -- state helpers ---------------------------------------------------------------------------

    @staticmethod
    def _others(core: ChordNode | None) -> list[NodeRef]:
        return [] if core is None else [s for s in core.successors if s != core.me]

    def _key_counts(self) -> tuple[int, int]:
        core = self._core
        if core is None:
            return len(self._store), 0
        with self._lock:
            pred, me = core.predecessor, core.me.id
        return self._store.count(pred.id if pred else None, me)

    def _member_core(self, context: grpc.ServicerContext) -> ChordNode:
        core = self._core
        if core is None or not core.member:
            reason = self._join_error or "still joining"
            context.abort(grpc.StatusCode.UNAVAILABLE, f"this peer is not in a ring yet: {reason}")
        return core

    def _replica_targets(self) -> list[NodeRef]:
        with self._lock:
            return self._others(self._core)[:self._replica_count]

    # -- maintenance ---------------------------------------------------------------------------

    def _maintain(self) -> None:
        due = dict.fromkeys(self._periods, 0.0)
        backoff = self._periods["stabilize"]
        while not self._stopping.is_set():
            if not self._core.member:
                if self._attempt("join", self._try_to_join):
                    backoff = self._periods["stabilize"]
                    due = dict.fromkeys(self._periods, 0.0)
                    due["merge_check"] = time.monotonic() + self._periods["merge_check"]
                    continue
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5 * self._periods["stabilize"])
                continue
            now = time.monotonic()
            for task, when in due.items():
                if now >= when and self._core.member and not self._stopping.is_set():
                    self._attempt(task, getattr(self, f"_{task}"))
                    period = self._periods[task] * self._stretch.get(task, 1.0)
                    due[task] = time.monotonic() + period * random.uniform(
                        1 - PERIOD_JITTER, 1 + PERIOD_JITTER)
            self._stopping.wait(max(0.0, min(due.values()) - time.monotonic()))

    def _attempt(self, task: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - one bad round must not end the upkeep
            self._log.error("chord_maintenance_failed", task=task, error=repr(exc))
            return None

    def _stabilize(self) -> None:
        core = self._core
        with self._lock:
            before = core.successor
        change = self._run(core.stabilize())
        self._metrics.stabilize.labels(change=change).inc()
        if change == "lost":
            self._log.warning("chord_ring_lost", reason="every successor is dead")
            return
        if change == "successor_changed":
            with self._lock:
                after = core.successor
            self._log.info("chord_successor_changed", old=before.address, new=after.address)
            self._stretch = dict.fromkeys(CALMING_TASKS, 1.0)  # the ring moves: look again
        self._rounds += 1
        self._show_neighbour_verdicts()
        self._replicate_owned(force=self._rounds % REPAIR_EVERY_ROUNDS == 0)
        self._expire_tombstones()

    def _show_neighbour_verdicts(self) -> None:
        """distlab_peer_up for the predecessor and successors: what the liveness detector
        believes of them (the overview's peer view). Chord peers do not run the node
        contract's peer watcher — checking every other peer costs N² — so the series are
        the neighbours of the moment, and a former neighbour's series is removed."""
        core = self._core
        with self._lock:
            pred = core.predecessor
            neighbours = {n.address for n in self._others(core)}
        if pred is not None and pred != core.me:
            neighbours.add(pred.address)
        gauge = self._ctx.metrics.peer_up
        for address in self._shown_neighbours - neighbours:
            try:
                gauge.remove(address)
            except KeyError:
                pass  # its label was bounded to `other`, shared with others
        for address in neighbours:
            gauge.labels(peer=address).set(0 if self._suspected(address) else 1)
        self._shown_neighbours = neighbours

    def _fix_fingers(self) -> None:
        core = self._core
        with self._lock:
            target, index = core.next_finger_target(), core.next_finger
        found = self._lookup(target, "finger")
        with self._lock:
            self._fingers_changed |= core.file_finger(found)
            wrapped = core.next_finger <= index  # the last lookup of a round filled the top
        if wrapped:
            self._settle("fix_fingers", changed=self._fingers_changed)
            self._fingers_changed = False

    def _settle(self, task: str, changed: bool) -> None:
        """A round of `task` ended: quiet rounds stretch its period, a change resets it."""
        self._stretch[task] = 1.0 if changed else min(self._stretch[task] * 2, CALM_MAX_STRETCH)

    def _check_predecessor(self) -> None:
        core = self._core
        with self._lock:
            before = core.predecessor
        if self._run(core.check_predecessor()):
            self._metrics.stabilize.labels(change="predecessor_changed").inc()
            self._log.info("chord_predecessor_changed", old=before.address if before else "-",
                           new="-")

    def _merge_check(self) -> None:
        """Ask one random CHORD_JOIN peer which ring it is in: move to its ring if that one
        is older; if it is ours, check we are on the same cycle of it (weave)."""
        core = self._core
        others = [a for a in self._join_addresses()[0] if a != core.me.address]
        if not others:
            return
        view = self._probe(random.choice(others), None)
        if view is None or not view.ring or view.ring > core.ring:
            self._settle("merge_check", changed=view is None)
            return
        if view.ring == core.ring:
            woven = self._run(core.weave(view))
            if woven:
                self._log.warning("chord_ring_woven", via=view.node.address,
                                  successor=core.successor.address)
            self._settle("merge_check", changed=woven)
            return
        self._settle("merge_check", changed=True)
        self._log.warning("chord_ring_merge", old_ring=core.ring, new_ring=view.ring,
                          via=view.node.address)
        with self._lock:
            core.leave_ring()
        self._join_through(view)

    def _replicate_owned(self, force: bool) -> None:
        """Push owned keys to the replicas when the replica set or the owned range changed."""
        core = self._core
        with self._lock:
            pred, me = core.predecessor, core.me
        targets = self._replica_targets()
        if pred is None:
            return
        wanted = (pred, tuple(targets))
        if wanted == self._replicated_for and not force:
            return
        started_ns = time.time_ns()
        owned = self._store.entries_in(pred.id, me.id)
        if all(self._transfer(t, owned, "replicate") for t in targets if owned):
            self._replicated_for = wanted
            self._replicated_ns = started_ns

    def _expire_tombstones(self) -> None:
        """Drop the tombstones every replica holds by now (the rule: nodes.chord.keyspace)."""
        with self._lock:
            pred, me = self._core.predecessor, self._core.me
        expired = self._store.expire_tombstones(
            now_ns=time.time_ns(), grace_ns=int(self._tombstone_grace * 1e9),
            owned=(pred.id, me.id) if pred is not None else None,
            replicated_ns=self._replicated_ns)
        if expired:
            self._metrics.tombstones_expired.inc(expired)

    # -- joining -------------------------------------------------------------------------------

    def _join_addresses(self) -> tuple[list[str], bool]:
        """Every address CHORD_JOIN resolves to, and whether this peer is one of them."""
        port = self._ctx.config["GRPC_PORT"]
        found: list[str] = []
        for entry in self._ctx.config["CHORD_JOIN"]:
            host, _, port_text = entry.rpartition(":") if ":" in entry else (entry, "", "")
            for ip in resolve_ipv4(host):
                found.append(f"{ip}:{port_text or port}")
        me = self._core.me.address
        return sorted(set(found), key=address_order), me in found

    def _try_to_join(self) -> bool:
        """One attempt to become a member: join the oldest ring in sight, or found one."""
        core = self._core
        if not self._ctx.config["CHORD_JOIN"]:
            return self._create()
        addresses, listed = self._join_addresses()
        others = [a for a in addresses if a != core.me.address]
        views = {a: self._probe(a, None) for a in others}
        members = [v for v in views.values() if v is not None and v.ring]
        if members:
            oldest = min(v.ring for v in members)
            return self._join_through(random.choice([v for v in members if v.ring == oldest]))
        answering = [a for a, v in views.items() if v is not None]
        if listed and min([core.me.address, *answering], key=address_order) == core.me.address:
            return self._create()
        if answering:
            lowest = min(answering, key=address_order)
            self._set_join_error(f"no ring yet: waiting for {lowest} to create one")
        elif others:
            self._set_join_error(f"cannot reach any peer to join: {', '.join(others)}")
        else:
            self._set_join_error(f"CHORD_JOIN={','.join(self._ctx.config['CHORD_JOIN'])} "
                                 f"resolves to no peer")
        return False

    def _create(self) -> bool:
        core = self._core
        with self._lock:
            core.create(f"{time.time_ns():020d}-{core.me.address}")
        self._join_error = ""
        self._log.info("chord_ring_created", ring=core.ring)
        return True

    def _join_through(self, contact: NodeView) -> bool:
        core = self._core
        try:
            self._run(core.join(contact))
        except ChordError as exc:
            self._refused = isinstance(exc, DuplicateId)
            self._set_join_error(str(exc))
            return False
        self._join_error, self._refused = "", False
        self._log.info("chord_joined", ring=contact.ring, via=contact.node.address,
                       successor=core.successor.address)
        if self._store.entries():
            self._handoffs.submit(self._rehome)
        return True

    def _set_join_error(self, message: str) -> None:
        if message != self._join_error:
            self._log.warning("chord_join_failed", error=message)
        self._join_error = message

    def _rehome(self) -> None:
        """After a re-join, send every entry held to whoever owns it in the new ring."""
        by_owner: dict[NodeRef, list[Entry]] = {}
        for entry in self._store.entries():
            found = self._lookup(entry.ident, "rehome")
            if found.ok and found.owner != self._core.me:
                by_owner.setdefault(found.owner, []).append(entry)
        for owner, entries in by_owner.items():
            self._transfer(owner, entries, "rehome")

    def _handoff(self, old: NodeRef | None, new: NodeRef) -> None:
        """Our new predecessor `new` now owns part of what we owned: send it those keys."""
        me = self._core.me
        if old is None:
            entries = [e for e in self._store.entries()
                       if not between_right(new.id, e.ident, me.id)]
        elif between(old.id, new.id, me.id):
            entries = self._store.entries_in(old.id, new.id)
        else:
            return
        if entries:
            self._transfer(new, entries, "join")

    def _leave(self) -> None:
        """Graceful leave: owned keys to the successor, then tell both neighbours."""
        core = self._core
        if core is None or not core.member:
            return
        with self._lock:
            me, pred, successors = core.me, core.predecessor, self._others(core)
        owned = (self._store.entries_in(pred.id, me.id) if pred else self._store.entries())
        ring = core.ring
        heir = next((s for s in successors if self._transfer(s, owned, "leave")), None)
        notice = dict(leaving=node_message(me, self.bits), ring=ring)
        if heir is not None:
            self._notify_leave(heir, chord_pb2.LeaveRequest(
                predecessor=node_message(pred, self.bits), **notice))
        if pred is not None:
            self._notify_leave(pred, chord_pb2.LeaveRequest(
                successors=[node_message(s, self.bits) for s in successors], **notice))
        self._log.info("chord_left", heir=heir.address if heir else "-", keys=len(owned))

    def _notify_leave(self, target: NodeRef, request: chord_pb2.LeaveRequest) -> None:
        try:
            self._stub(target.address).Leave(request, timeout=self._hop_timeout)
        except grpc.RpcError as exc:
            self._log.warning("chord_leave_notice_failed", to=target.address,
                              code=exc.code().name)

    # -- client RPCs ---------------------------------------------------------------------------

    def _target(self, request, context: grpc.ServicerContext) -> int:
        if bool(request.key) == bool(request.id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "give exactly one of key (a string) or id (hex)")
        try:
            return key_id(request.key, self.bits) if request.key else parse_id(request.id,
                                                                               self.bits)
        except RingError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def _checked_key(self, key: str, context: grpc.ServicerContext) -> int:
        try:
            return key_id(key, self.bits)
        except RingError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def Lookup(self, request, context):
        core = self._member_core(context)
        target = self._target(request, context)
        result = self._lookup(target, "client")
        if not result.ok:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"no live owner of {format_id(target, self.bits)} answered "
                          f"({result.timeouts} peers did not); retry after stabilization")
        return chord_pb2.LookupReply(
            id=format_id(target, self.bits), owner=node_message(result.owner, core.bits),
            path=[node_message(n, self.bits) for n in result.path], hops=result.hops,
            timeouts=result.timeouts)

    def _at_owner(self, ident: int, local: Callable[[], Any], remote: Callable[[Any], Any],
                  context: grpc.ServicerContext) -> tuple[Any, LookupResult]:
        """Look the owner of `ident` up and run the operation there, again while ownership
        moves (a join or failure between the lookup and the call)."""
        last = "no lookup finished"
        for attempt in range(CLIENT_ATTEMPTS):
            if attempt:
                self._stopping.wait(self._periods["stabilize"] / 2 * attempt)
            found = self._lookup(ident, "client")
            if not found.ok:
                last = f"lookup failed after {found.timeouts} timeouts"
                continue
            try:
                if found.owner == self._core.me:
                    return local(), found
                return remote(self._stub(found.owner.address)), found
            except NotOwner as exc:
                last = str(exc)
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION,
                                      grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                    context.abort(exc.code(), exc.details())
                last = f"{found.owner.address}: {exc.code().name}: {exc.details()}"
        context.abort(grpc.StatusCode.UNAVAILABLE,
                      f"no owner of {format_id(ident, self.bits)} took the request after "
                      f"{CLIENT_ATTEMPTS} lookups; last: {last}")

    def Put(self, request, context):
        return self._write(request.key, request.value, False, context)

    def Delete(self, request, context):
        return self._write(request.key, b"", True, context)

    def _write(self, key: str, value: bytes, deleted: bool, context):
        core = self._member_core(context)
        ident = self._checked_key(key, context)
        if len(value) > self._store.max_value_bytes:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"value is {len(value)} bytes; the limit is "
                          f"{self._store.max_value_bytes}")
        request = chord_pb2.StoreRequest(entry=chord_pb2.Entry(key=key, value=value,
                                                               deleted=deleted))
        (version, existed), found = self._at_owner(
            ident, lambda: self._store_as_owner(key, value, deleted),
            lambda stub: self._unpack_store(stub.Store(request, timeout=self._data_timeout)),
            context)
        owner = node_message(found.owner, core.bits)
        if deleted:
            return chord_pb2.DeleteReply(existed=existed, owner=owner)
        return chord_pb2.PutReply(version=version, owner=owner, hops=found.hops)

    @staticmethod
    def _unpack_store(reply: chord_pb2.StoreReply) -> tuple[int, bool]:
        return reply.version, reply.existed

    def Get(self, request, context):
        core = self._member_core(context)
        ident = self._checked_key(request.key, context)
        fetch = chord_pb2.FetchRequest(key=request.key)

        def remote(stub) -> Entry | None:
            reply = stub.Fetch(fetch, timeout=self._data_timeout)
            return entry_from(reply.entry, self.bits) if reply.found else None

        entry, found = self._at_owner(ident, lambda: self._fetch_as_owner(request.key), remote,
                                      context)
        if entry is None or entry.deleted:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no key {request.key!r}")
        return chord_pb2.GetReply(value=entry.value, version=entry.version,
                                  owner=node_message(found.owner, core.bits), hops=found.hops)

    def State(self, request, context):
        core = self._core
        if core is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
        with self._lock:
            me, pred, successors = core.me, core.predecessor, self._others(core)
            fingers, ring, size = core.fingers, core.ring, core.ring_size_estimate()
        owned, replicas = self._key_counts()
        return chord_pb2.StateReply(
            self=node_message(me, self.bits), predecessor=node_message(pred, self.bits),
            successors=[node_message(s, self.bits) for s in successors],
            fingers=[chord_pb2.Finger(index=i,
                                      start=format_id(finger_start(me.id, i, self.bits),
                                                      self.bits),
                                      node=node_message(f, self.bits))
                     for i, f in enumerate(fingers) if f is not None],
            bits=self.bits, ring=ring, keys=owned, replicas=replicas,
            join_error=self._join_error, ring_size_estimate=size if ring else 0)

    # -- owner side ----------------------------------------------------------------------------

    def _check_owner(self, ident: int) -> None:
        core = self._core
        with self._lock:
            member, pred, me = core.member, core.predecessor, core.me
        if not member:
            raise NotOwner("this peer left the ring")
        if pred is not None and not between_right(pred.id, ident, me.id):
            raise NotOwner(f"{me.address} does not own {format_id(ident, self.bits)}: its "
                           f"predecessor {pred.address} is past it")

    def _store_as_owner(self, key: str, value: bytes, deleted: bool) -> tuple[int, bool]:
        self._check_owner(key_id(key, self.bits))
        held = self._store.get(key)
        entry = self._store.make_entry(key, value, deleted=deleted, now_ns=time.time_ns())
        self._store.merge(entry)
        # One small entry: a dead replica must cost the writer no more than a routing hop.
        for target in self._replica_targets():
            self._transfer(target, [entry], "replicate", timeout=self._hop_timeout)
        return entry.version, held is not None and not held.deleted

    def _fetch_as_owner(self, key: str) -> Entry | None:
        """Our copy; without one, the newest replica (a key handed over just now, or one
        whose owner failed), which we then keep (read repair)."""
        self._check_owner(key_id(key, self.bits))
        held = self._store.get(key)
        if held is not None:
            return held
        newest = None
        for target in self._replica_targets():
            try:
                reply = self._stub(target.address).Fetch(
                    chord_pb2.FetchRequest(key=key, local_only=True), timeout=self._data_timeout)
                copy = entry_from(reply.entry, self.bits) if reply.found else None
                if copy is not None:
                    self._store.check(copy, now_ns=time.time_ns())
            except (grpc.RpcError, RingError):
                continue  # no copy, or none worth keeping
            if copy is not None and copy.key == key and (newest is None
                                                         or copy.version > newest.version):
                newest = copy
        if newest is not None:
            self._store.merge(newest)
        return newest

    # -- peer RPCs -------------------------------------------------------------------------------

    def Store(self, request, context):
        self._member_core(context)
        entry = request.entry
        self._checked_key(entry.key, context)
        if len(entry.value) > self._store.max_value_bytes:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"value is {len(entry.value)} bytes; the limit is "
                          f"{self._store.max_value_bytes}")
        try:
            version, existed = self._store_as_owner(entry.key, entry.value, entry.deleted)
        except NotOwner as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return chord_pb2.StoreReply(version=version, existed=existed)

    def Fetch(self, request, context):
        self._checked_key(request.key, context)
        if request.local_only:
            entry = self._store.get(request.key)
        else:
            self._member_core(context)
            try:
                entry = self._fetch_as_owner(request.key)
            except NotOwner as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if entry is None:
            return chord_pb2.FetchReply(found=False)
        return chord_pb2.FetchReply(found=True, entry=entry_message(entry))

    def Transfer(self, request, context):
        now = time.time_ns()
        try:
            entries = [entry_from(e, self.bits) for e in request.entries]
            for entry in entries:
                self._store.check(entry, now_ns=now)
        except RingError as exc:  # nothing is kept: every entry is checked first
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad entry: {exc}")
        return chord_pb2.TransferReply(kept=sum(self._store.merge(e) for e in entries))

    def Route(self, request, context):
        core = self._core
        if core is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
        try:
            target = parse_id(request.target, self.bits)
        except RingError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"target: {exc}")
        with self._lock:
            ring = core.ring
            answer = core.route(target) if ring == request.ring else RouteAnswer(False, ())
        return chord_pb2.RouteReply(
            owner_found=answer.owner_found, ring=ring,
            nodes=[node_message(n, self.bits) for n in answer.nodes],
            successors=[node_message(n, self.bits) for n in answer.successors])

    def Neighbours(self, request, context):
        core = self._core
        if core is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
        with self._lock:
            view = core.view()
        return chord_pb2.NeighboursReply(
            self=node_message(view.node, self.bits),
            predecessor=node_message(view.predecessor, self.bits),
            successors=[node_message(n, self.bits) for n in view.successors], ring=view.ring)

    def Rectify(self, request, context):
        core = self._member_core(context)
        try:
            candidate = node_from(request.candidate, self.bits)
        except RingError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"candidate: {exc}")
        if request.ring != core.ring:
            return chord_pb2.RectifyReply(adopted=False)
        with self._lock:
            before = core.predecessor
        adopted = self._run(core.rectify(candidate))
        if adopted:
            self._metrics.stabilize.labels(change="predecessor_changed").inc()
            self._log.info("chord_predecessor_changed",
                           old=before.address if before else "-", new=candidate.address)
            self._handoffs.submit(self._handoff, before, candidate)
        return chord_pb2.RectifyReply(adopted=adopted)

    def Leave(self, request, context):
        core = self._member_core(context)
        if request.ring != core.ring:
            return chord_pb2.LeaveReply(changed=False)
        try:
            leaving = node_from(request.leaving, self.bits)
            pred = optional_node(request.predecessor, self.bits)
            successors = [node_from(n, self.bits) for n in request.successors]
        except RingError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self._lock:
            before = core.predecessor
            changed = core.on_leave(leaving, pred, successors)
            after = core.predecessor
        if before != after:
            self._metrics.stabilize.labels(change="predecessor_changed").inc()
        self._log.info("chord_neighbour_left", leaving=leaving.address, changed=changed)
        return chord_pb2.LeaveReply(changed=changed)
