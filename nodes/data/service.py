"""The data replica's gRPC adapter: the `Data` and `Replica` services and the membership thread.

Called by gRPC (clients, the predecessor, the data-master) and by the node
bootstrap (`serving`, `status`, `close`). It touches its own write-ahead log
and membership marker under DATA_DIR/<name>/, and calls its successor and
the data-master; every decision is the sans-I/O `ReplicaCore`'s.

Write path. Updates are serialized at each replica by one lock held from
"evaluate" (head) or "receive" (others) until the successor answered: one
update is in flight in the chain at a time. That keeps strict seq order
simply (fine for a lab, and the figure a benchmark of this tier measures).
Each replica fsyncs the update to its log, applies it, forwards it, and
answers only after its successor answered, so the head replies after every
replica holds the update durably. A successor reporting a gap is sent the
missing updates from the in-memory recent-updates log (rebuilt from the WAL
at start), or, when that no longer covers it, the whole state (Install).
A successor with a newer epoch refuses the Forward; the sender then asks the
master for the configuration: a removed head learns it is out and the
client is told the write was NOT applied (FAILED_PRECONDITION).

What the head answers a Txn: OK; FAILED_PRECONDITION (not the head: not
applied); ABORTED (an earlier update is still not through the chain, or the
head's log could not take this one: not applied); UNAVAILABLE (applied at
the head but not confirmed by the chain, or in the head's log after a failed
fsync: it may still take effect). A failed compare is answered from the
head's state without a chain round trip; a head removed without knowing it
(partitioned away) can thus report a stale "compare failed", never a write.

Disk errors (the policy is nodes.common.durable's): a replica whose log
could not take an update applies nothing and answers its predecessor
UNAVAILABLE, so the head never acknowledges what a replica does not hold
durably. After a failed fsync its log is stopped: it holds every update and
install back (UNAVAILABLE), says why in Status (`wal_stopped`), and reports
NOT_SERVING in grpc.health, so the data-master takes it out of the chain
after CHAIN_CHECK_FALL checks and the chain goes on without it. Restarted,
it replays its log and registers again (re-used in place while still listed).

Reads are served at the tail under the same lock as applies, so a Read of
many keys or a prefix sees one state, and its seq says which.

Full-state streams are bounded. An Install is judged on its first chunk: a
sender at an older epoch is refused FAILED_PRECONDITION before the rest of its
stream is read. An Install, and a Sync this replica pulls, are read chunk by
chunk up to DATA_INSTALL_MAX_BYTES (default 512 MiB); past it the stream is
refused (RESOURCE_EXHAUSTED naming the setting) and nothing of it is kept.

Membership (see nodes/data/chain.py for the rules). At start the replica
replays its log and registers with the data-master until it answers: a
replica still listed whose disk says it has been a member without a break
is re-used in place (prefix property plus gap catch-up make that safe);
otherwise it syncs the full state from the tail (Sync), registers as ready,
and the master appends it at the tail. Every DATA_MEMBERSHIP_CHECK_SECONDS it
asks the master for the configuration and re-registers when it is no longer
in the chain. A replica serves nothing before the master answered once.

Live migration (Replica.MigrateOut on a member, MigrateIn on a spare started
with DATA_SPARE=true; driver in nodes/data/migration.py, image in image.py).
The source runs pre-copy or stop-and-copy over its store's hash slots while
it serves. At Pause it takes the chain lock (so no update is half-applied:
every apply, and every Forward until its successor answered, holds it) and
refuses reads (UNAVAILABLE: retried by every client); its state is frozen at
seq s. It sends the last dirty slots and commit{s, epoch E}; the spare checks
the whole state as a snapshot at s, writes it to its log as Install does,
marks its disk as a member's, and answers committed. Only then does the
source ask the master to Replace it by the spare at its position (a new
epoch E+1, pushed head first), and once the master answered it is fenced:
it refuses everything with FAILED_PRECONDITION "this replica moved to ...",
never registers again, and reports NOT_SERVING. Why nothing is lost or read
stale:
- every acknowledged write was applied by the tail of its epoch; up to E+1
  that tail was the source (frozen at s, so the spare holds it) or another
  member, which the replace does not touch; the source serves no read after
  its pause, and the spare serves none before a configuration lists it;
- an update in flight at the switch-over is one the predecessor holds and
  the source does not (its lock was taken before or after it, never during
  it): the predecessor's Forward waits for the lock at most its deadline,
  then gets UNAVAILABLE or, once fenced, FAILED_PRECONDITION, which makes it
  fetch E+1 and bring the spare (at seq s, the source's) up to date by the
  usual gap catch-up; the head has not acknowledged it meanwhile;
- the spare, committed, becomes active on any configuration listing it
  (chain.py `moved_in`) and refuses Forwards until then (UNAVAILABLE), so a
  predecessor pushed E+1 before it never forwards to a replica that would
  not pass updates on; a configuration past E that does not list it means
  the Replace can no longer be granted (epochs must match): it drops the
  state and is a spare again;
- no deadlock: while paused the source waits only for the spare and the
  master, neither of which waits for a replica's lock (the master's Replace
  records and returns; its pusher runs apart, with deadlines).
Failures: before committed came, the source stops tracking, releases the
lock and serves on, and the spare drops what it received. After committed,
a Replace the master refuses (definite) resumes the source as well (no
configuration will list the spare); a Replace with no answer after a few
tries leaves the source fenced with outcome "unknown" (Status moved=unknown):
never two copies serving.

A deliberately broken mode (DATA_ACK_AT=head, or Reconfigure ack_at=head), there
only so scenario tests can show that their checkers catch a real bug: the head
answers a Txn once it logged and applied the update itself, and a background
committer passes it on afterwards. A read at the tail right after such an answer
can miss the write, and a head that dies before passing it on loses it. The
default, "tail", is the correct path above, untouched by this mode.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import grpc
from prometheus_client import Counter, Gauge, Histogram

from nodes.common.config import ConfigError, own_ip
from nodes.common.durable import AppendFailed, read_file, write_atomically
from nodes.common.metrics import LATENCY_BUCKETS
from nodes.common.role import NodeContext, RoleError, RoleNode
from nodes.data.chain import POSITIONS, Adoption, ForwardKind, NotReady, ReplicaCore, StaleEpoch
from nodes.data.image import ChainImage
from nodes.data.migration import (
    MAX_CHUNK_UNITS,
    STRATEGIES,
    MigrationFailed,
    MigrationPlan,
    Outgoing,
)
from nodes.data.store import (
    InvalidRequest,
    Limits,
    TooLarge,
    check_read,
    check_snapshot,
    check_txn,
    check_update,
    chunk_entries,
)
from nodes.data.wal import ChainLog
from nodes.rpc import chain_pb2, chain_pb2_grpc
from nodes.vm.memory import PageError
from nodes.vm.strategies import PreCopyLimits, Strategy

SERVICE_NAMES = (chain_pb2.DESCRIPTOR.services_by_name["Data"].full_name,
                 chain_pb2.DESCRIPTOR.services_by_name["Replica"].full_name)
MASTER_PEER = "data-master"
# Room left in a message for everything but the entries (framing, seq, flags).
MESSAGE_HEADROOM_BYTES = 4096
# Time kept back from a caller's deadline so an answer still reaches it.
REPLY_MARGIN_SECONDS = 0.05
# Where a Txn is acknowledged: "tail" is chain replication; "head" is the classic mistake,
# kept on purpose so checkers can be shown to catch it (never for real use).
ACK_AT_TAIL, ACK_AT_HEAD = "tail", "head"
ACK_MODES = (ACK_AT_TAIL, ACK_AT_HEAD)
RECONFIGURABLE = ("ack_at",)
SPARE_REFUSAL = "a spare waiting for a migration: it serves nothing until one commits into it"
MIGRATION_OUTCOMES = ("done", "aborted", "refused", "unknown")


class ChainBroken(Exception):
    """The rest of the chain could not be brought to hold an update (unreachable, timed out)."""


class SuccessorRejected(ChainBroken):
    """The successor refused: it has a newer configuration than this replica."""


class Deposed(Exception):
    """This replica found out it is no longer the head."""


def advertised_address(configured: str, grpc_port: int) -> str:
    """`configured` as host:port, the port filled in when absent; default this machine's IP."""
    if configured:
        host, _, port = configured.rpartition(":")
        return configured if host and port.isdigit() else f"{configured}:{grpc_port}"
    return f"{own_ip() or '127.0.0.1'}:{grpc_port}"


def ack_mode_from(settings: Mapping[str, str]) -> str | None:
    """The ack_at a Reconfigure asks for (None: it asks for no change), or RoleError."""
    unknown = sorted(set(settings) - set(RECONFIGURABLE))
    if unknown:
        raise RoleError(f"unknown setting {', '.join(map(repr, unknown))}: the data replica "
                        f"takes only {', '.join(RECONFIGURABLE)}")
    if "ack_at" not in settings:
        return None
    wanted = settings["ack_at"]
    if wanted not in ACK_MODES:
        raise RoleError(f"ack_at {wanted!r} is not one of {ACK_AT_TAIL} (correct: answer once "
                        f"the tail holds the update) or {ACK_AT_HEAD} (deliberately broken: "
                        f"answer from the head at once)")
    return wanted


class SnapshotTooLarge(Exception):
    """A full-state stream (Install, Sync) went past DATA_INSTALL_MAX_BYTES."""


def gather_snapshot(chunks: Iterable[chain_pb2.SyncChunk], max_bytes: int, *,
                    first: Callable[[chain_pb2.SyncChunk], None] | None = None,
                    ) -> list[chain_pb2.SyncChunk]:
    """The chunks of a full-state stream, read one at a time: `first` sees the first chunk
    before any other is read (to refuse the sender at once), and SnapshotTooLarge stops
    the reading as soon as the chunks held pass `max_bytes`, so a stream never costs this
    replica more memory than the cap, whatever its sender meant."""
    gathered: list[chain_pb2.SyncChunk] = []
    held = 0
    for chunk in chunks:
        if not gathered and first is not None:
            first(chunk)
        held += chunk.ByteSize()
        if held > max_bytes:
            raise SnapshotTooLarge(
                f"the state streamed is over DATA_INSTALL_MAX_BYTES={max_bytes} bytes "
                f"(past it at chunk {len(gathered) + 1}); raise the setting on this replica "
                f"if the tier really holds that much")
        gathered.append(chunk)
    return gathered


def _complete_snapshot(chunks: list[chain_pb2.SyncChunk], limits: Limits) -> str | None:
    """Why `chunks` is not one whole, valid snapshot, or None when it is."""
    if not chunks or not chunks[-1].last:
        return "the snapshot ended before its last chunk"
    if any(chunk.seq != chunks[0].seq for chunk in chunks):
        return "the snapshot's chunks disagree on its seq"
    try:
        check_snapshot(chunks, limits)
    except InvalidRequest as exc:
        return str(exc)
    return None


class DataNode(RoleNode, chain_pb2_grpc.DataServicer, chain_pb2_grpc.ReplicaServicer):
    service_names = SERVICE_NAMES

    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        max_message = config["MAX_MESSAGE_BYTES"]
        if config["DATA_MAX_VALUE_BYTES"] > max_message // 2:
            raise ConfigError(f"DATA_MAX_VALUE_BYTES={config['DATA_MAX_VALUE_BYTES']} must be at "
                              f"most half of MAX_MESSAGE_BYTES={max_message}")
        self._log = ctx.log
        self._channels = ctx.channels
        self._limits = Limits(max_value_bytes=config["DATA_MAX_VALUE_BYTES"],
                              max_txn_ops=config["DATA_MAX_TXN_OPS"],
                              max_read_limit=config["DATA_MAX_READ_LIMIT"])
        self._budget = max_message - MESSAGE_HEADROOM_BYTES
        self._rpc_timeout = config["RPC_TIMEOUT_SECONDS"]
        self._transfer_timeout = config["DATA_TRANSFER_TIMEOUT_SECONDS"]
        self._install_max_bytes = config["DATA_INSTALL_MAX_BYTES"]
        self._check_interval = config["DATA_MEMBERSHIP_CHECK_SECONDS"]
        self._compact_after = config["DATA_WAL_COMPACT_UPDATES"]
        self._advertise = config["DATA_ADVERTISE_ADDRESS"]
        self._master_address = config["DATA_MASTER"]
        self._marker_path = ctx.data_dir / "membership.json"

        self._core = ReplicaCore(ctx.name, recent_capacity=config["DATA_RECENT_UPDATES"],
                                 member_epoch=self._read_marker())
        self._define_metrics(ctx)
        # A stopped log holds every update back: NOT_SERVING makes the data-master take this
        # replica out, so the chain goes on without it instead of stalling behind it.
        self._wal = ChainLog(ctx.data_dir / "chain.wal", on_fsync=self._fsync_seconds.observe,
                             log=ctx.log, on_stop=ctx.set_not_serving)
        replayed = self._wal.replay()
        applied = self._core.restore(replayed.snapshot, replayed.snapshot_seq, replayed.updates)
        ctx.log.info("chain_recovered", snapshot_seq=replayed.snapshot_seq, updates=applied,
                     last_seq=self._core.last_seq, keys=len(self._core.store),
                     member_epoch=self._core.member_epoch)

        # _chain_lock: the write path, configuration changes, installs (held across calls
        # to the successor). _state_lock: the state and the configuration as reads see them.
        self._chain_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._me = chain_pb2.ChainMember(name=ctx.name)
        self._set_not_serving = ctx.set_not_serving
        self._migration_timeout = config["DATA_MIGRATION_TIMEOUT_SECONDS"]
        # Live migration (see "Live migration" above). A spare holds nothing and registers
        # with nobody; a disk that says a migration committed into it is no spare's.
        self._spare = config["DATA_SPARE"] and self._core.member_epoch == 0
        if self._spare:
            self._core.install([], 0)
        self._incoming = False          # a MigrateIn stream is being received
        self._moved_in_epoch = 0        # the epoch a migration into this spare committed at
        self._moved_to = ""             # fenced for good: the destination it moved to
        self._fence_outcome = ""        # "moved", or "unknown" (the replace had no answer)
        self._paused = False            # a switch-over holds the chain lock: reads refused
        self._migration: Outgoing | None = None
        self._migration_lock = threading.Lock()
        self._needs_register = True
        self._closed = False
        self._last_problem = ""
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._membership_loop, name="chain-membership",
                                        daemon=True)
        # The broken mode's committer: started the first time the mode is switched on, so
        # the correct mode runs exactly as it would without it.
        self._ack_at = ACK_AT_TAIL
        self._commit_wanted = threading.Event()
        self._committer_lock = threading.Lock()
        self._committer = threading.Thread(target=self._committer_loop,
                                           name="early-ack-committer", daemon=True)
        if config["DATA_ACK_AT"] == ACK_AT_HEAD:
            self._switch_ack_at(ACK_AT_HEAD, source="DATA_ACK_AT")

    def _define_metrics(self, ctx: NodeContext) -> None:
        registry, core = ctx.registry, self._core
        Gauge("distlab_chain_applied_seq", "Seq of the last update this replica applied.",
              registry=registry).set_function(lambda: core.last_seq)
        Gauge("distlab_chain_epoch", "Epoch of the chain configuration this replica follows.",
              registry=registry).set_function(lambda: core.epoch)
        position = Gauge("distlab_chain_position",
                         "1 for this replica's position in the chain, 0 for the others.",
                         ["position"], registry=registry)
        for name in POSITIONS:
            position.labels(position=name).set_function(
                lambda name=name: 1.0 if core.position == name else 0.0)
        Gauge("distlab_chain_keys", "Keys this replica holds.",
              registry=registry).set_function(lambda: len(core.store))
        self._forward_seconds = Histogram(
            "distlab_chain_forward_seconds",
            "At the head: time for the rest of the chain to hold an update.",
            buckets=LATENCY_BUCKETS, registry=registry)
        self._txns = Counter("distlab_chain_txn_total", "Txns the head answered, by result.",
                             ["result"], registry=registry)
        for result in ("committed", "compare_failed", "error"):
            self._txns.labels(result=result)
        self._syncs = Counter("distlab_chain_syncs_total",
                              "Full states this replica installed (joining, or too far behind "
                              "for its predecessor's recent-updates log).", registry=registry)
        self._fsync_seconds = Histogram("distlab_chain_wal_fsync_seconds",
                                        "Time to fsync one write-ahead-log append.",
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self._define_migration_metrics(registry)
        self._early_acks = Counter(
            "distlab_data_early_acks_total",
            "Txns the head acknowledged before the rest of the chain held them (ack_at=head: "
            "the deliberately broken mode; anything above 0 means it is or was on).",
            registry=registry)

    def _define_migration_metrics(self, registry) -> None:
        def of_migration(read: Callable[[chain_pb2.ReplicaMigrationProgress], float]):
            def value() -> float:
                migration = self._migration
                if migration is None or migration.finished.is_set():
                    return 0.0
                return float(read(migration.progress()))
            return value

        for name, doc, read in (
                ("distlab_data_migration_round", "Round of the running migration out of this "
                 "replica (0: none).", lambda p: p.round),
                ("distlab_data_migration_units_left", "Hash slots still to send in the running "
                 "migration (queued and dirty).", lambda p: p.units_left),
                ("distlab_data_migration_transfer_bytes_per_second", "Bytes per second sent so "
                 "far by the running migration.", lambda p: p.bytes_per_second)):
            Gauge(name, doc, registry=registry).set_function(of_migration(read))
        self._migration_sent = Counter("distlab_data_migration_sent_bytes_total",
                                       "Bytes of slots sent by migrations out of this replica.",
                                       registry=registry)
        self._migration_downtime = Histogram(
            "distlab_data_migration_downtime_seconds",
            "Time this replica was paused (updates and reads held) at a migration's switch-over.",
            buckets=LATENCY_BUCKETS, registry=registry)
        self._migrations = Counter("distlab_data_migrations_total",
                                   "Migrations out of this replica, by strategy and outcome.",
                                   ["strategy", "outcome"], registry=registry)
        for strategy in STRATEGIES:
            for outcome in MIGRATION_OUTCOMES:
                self._migrations.labels(strategy=strategy.value, outcome=outcome)

    # -- node contract ---------------------------------------------------------------------

    def register(self, server: grpc.Server) -> None:
        chain_pb2_grpc.add_DataServicer_to_server(self, server)
        chain_pb2_grpc.add_ReplicaServicer_to_server(self, server)

    def serving(self, grpc_port: int) -> None:
        self._me.address = advertised_address(self._advertise, grpc_port)
        self._thread.start()

    def status(self) -> dict[str, str]:
        with self._state_lock:
            state = {"position": self._core.position, "epoch": str(self._core.epoch),
                     "last_seq": str(self._core.last_seq), "keys": str(len(self._core.store)),
                     "chain": ",".join(self._core.names())}
            if self._spare:
                state["spare"] = "true"
            if self._moved_to:
                state["moved_to"] = self._moved_to
                state["moved"] = self._fence_outcome
        migration = self._migration
        if migration is not None:
            state["migration"] = migration.progress().phase
        if self._ack_at != ACK_AT_TAIL:  # the correct mode's status stays as it always was
            state["ack_at"] = self._ack_at
        if self._wal.stopped_because:
            state["wal_stopped"] = self._wal.stopped_because
        return state

    def reconfigure(self, settings: dict[str, str]) -> dict[str, str]:
        wanted = ack_mode_from(settings)
        if wanted is not None and wanted != self._ack_at:
            self._switch_ack_at(wanted, source="reconfigure")
        return {"ack_at": self._ack_at}

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._commit_wanted.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._rpc_timeout + 1)
        with self._committer_lock:  # no committer starts after this
            if self._committer.is_alive():
                self._committer.join(timeout=self._rpc_timeout + 1)
        with self._chain_lock:
            self._closed = True
            self._wal.close()

    # -- Data ------------------------------------------------------------------------------

    def Txn(self, request, context):
        try:
            check_txn(request, self._limits)
        except InvalidRequest as exc:
            self._refuse_txn(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        deadline = self._deadline(context)
        # Updates are serialized here; a txn whose caller stopped waiting is not applied.
        if not self._chain_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._refuse_txn(context, grpc.StatusCode.ABORTED,
                             "not applied: the head was busy with earlier txns until the "
                             "deadline; retry")
        try:
            reply = self._txn_at_head(request, deadline, context)
        finally:
            self._chain_lock.release()
        self._txns.labels(result="committed" if reply.succeeded else "compare_failed").inc()
        return reply

    def _txn_at_head(self, request, deadline: float, context) -> chain_pb2.TxnReply:
        """Evaluate, log, apply and pass on one txn; chain lock held."""
        out = self._out_of_service()
        if out:
            self._refuse_txn(context, grpc.StatusCode.FAILED_PRECONDITION, f"not applied: {out}")
        if not self._core.serves_txn():
            self._refuse_txn(context, grpc.StatusCode.FAILED_PRECONDITION,
                             f"not the head: {self._core.describe()}")
        if self._core.has_pending():  # compares must see a state the whole chain holds
            pending = self._core.last_seq
            try:
                self._commit(pending, deadline)
            except Deposed as exc:
                self._refuse_txn(context, grpc.StatusCode.FAILED_PRECONDITION,
                                 f"not the head: {exc}")
            except (ChainBroken, grpc.RpcError) as exc:
                self._refuse_txn(context, grpc.StatusCode.ABORTED,
                                 f"not applied: update {pending} is not yet held by the rest "
                                 f"of the chain ({exc}); retry")
        outcome = self._core.store.evaluate(request)
        if outcome.update is None:  # a failed compare, or nothing to change: no seq consumed
            return chain_pb2.TxnReply(succeeded=outcome.holds,
                                      seq=self._core.last_seq if outcome.holds else 0)
        update = outcome.update
        update.epoch = self._core.epoch
        try:
            self._append_and_apply(update)
        except AppendFailed as exc:
            if exc.maybe_written:  # a restart replays it, and the chain then passes it on
                self._refuse_txn(context, grpc.StatusCode.UNAVAILABLE,
                                 f"update {update.seq} may be in the head's log: {exc}; it may "
                                 f"still take effect")
            else:
                self._refuse_txn(context, grpc.StatusCode.ABORTED, f"not applied: {exc}; retry")
        if self._ack_at == ACK_AT_HEAD and self._core.successor() is not None:
            # The deliberate bug: the rest of the chain (and the tail, where reads are
            # served) does not hold this update yet. The committer passes it on.
            self._early_acks.inc()
            self._commit_wanted.set()
            return chain_pb2.TxnReply(succeeded=True, seq=update.seq)
        started = time.perf_counter()
        try:
            self._commit(update.seq, deadline)
        except Deposed as exc:
            self._refuse_txn(context, grpc.StatusCode.FAILED_PRECONDITION,
                             f"not the head any more ({exc}): the update was not applied")
        except (ChainBroken, grpc.RpcError) as exc:
            self._refuse_txn(context, grpc.StatusCode.UNAVAILABLE,
                             f"update {update.seq} is applied at the head but not confirmed by "
                             f"the rest of the chain ({exc}); it may still take effect")
        finally:
            if self._core.successor() is not None:
                self._forward_seconds.observe(time.perf_counter() - started)
        return chain_pb2.TxnReply(succeeded=True, seq=update.seq)

    def Read(self, request, context):
        try:
            limit = check_read(request, self._limits)
        except InvalidRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self._state_lock:
            out = self._out_of_service()
            if out:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, out)
            if self._paused:
                context.abort(grpc.StatusCode.UNAVAILABLE, "paused for a migration's "
                              "switch-over: retry (the tail may be about to change)")
            if not self._core.serves_read():
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"not the tail: {self._core.describe()}")
            try:
                return self._core.store.read(request, limit, self._budget)
            except TooLarge as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    def _out_of_service(self) -> str:
        """Why this replica serves nothing at all (a spare, or moved away), or ""."""
        if self._moved_to:
            if self._fence_outcome == "moved":
                return f"this replica moved to {self._moved_to}"
            return (f"this replica is fenced: its migration to {self._moved_to} has an "
                    f"unknown outcome")
        return SPARE_REFUSAL if self._spare else ""

    def _refuse_txn(self, context, code: grpc.StatusCode, message: str) -> None:
        self._txns.labels(result="error").inc()
        context.abort(code, message)

    # -- Replica ---------------------------------------------------------------------------

    def Forward(self, request, context):
        try:
            check_update(request, self._limits)
        except InvalidRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"update {request.seq}: {exc}")
        deadline = self._deadline(context)
        # Bounded: behind a migration's switch-over the predecessor gets UNAVAILABLE at its
        # deadline and passes the update on again under the next configuration.
        if not self._chain_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"update {request.seq} not taken: this replica was busy (a "
                          f"migration's switch-over?) until the deadline; retry")
        try:
            out = self._out_of_service()
            if out:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, out)
            try:
                self._core.check_epoch(request.epoch)
            except StaleEpoch as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            self._catch_up_on_epoch(request.epoch, deadline, context)
            self._refuse_until_configured(context)
            kind = self._core.classify(request.seq)
            if kind is ForwardKind.GAP or (request.probe and kind is ForwardKind.APPLY):
                return chain_pb2.ForwardReply(last_seq=self._core.last_seq)  # send me more
            if kind is ForwardKind.APPLY:
                try:
                    self._append_and_apply(request)
                except AppendFailed as exc:
                    context.abort(grpc.StatusCode.UNAVAILABLE,
                                  f"update {request.seq} not held here: {exc}")
            self._pass_on(request.seq, deadline, context)
            return chain_pb2.ForwardReply(last_seq=self._core.last_seq)
        finally:
            self._chain_lock.release()

    def _refuse_until_configured(self, context) -> None:
        """A migration's destination takes nothing before a configuration made it a member:
        it would apply an update and not pass it on to a successor it does not know yet."""
        if self._core.moved_in and not self._core.active:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "migrated in, waiting for the configuration that lists it; retry")

    def Install(self, request_iterator, context):
        def refuse_stale_sender(first: chain_pb2.SyncChunk) -> None:
            # A removed predecessor's stream is refused before the rest of it is read:
            # its bytes never reach memory (flow control holds them at the sender).
            try:
                self._core.check_epoch(first.epoch)
            except StaleEpoch as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"install refused at its first chunk: {exc}")

        try:
            chunks = gather_snapshot(request_iterator, self._install_max_bytes,
                                     first=refuse_stale_sender)
        except SnapshotTooLarge as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"install refused: {exc}")
        complaint = _complete_snapshot(chunks, self._limits)
        if complaint:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, complaint)
        deadline = self._deadline(context)
        with self._chain_lock:
            out = self._out_of_service()
            if out:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, out)
            # Checked again under the lock: the configuration may have moved on meanwhile.
            try:
                self._core.check_epoch(chunks[0].epoch)
            except StaleEpoch as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            self._catch_up_on_epoch(chunks[0].epoch, deadline, context)
            self._refuse_until_configured(context)
            # Never step back: a predecessor holds a superset of what its successor holds.
            if chunks[0].seq > self._core.last_seq:
                try:
                    self._install(chunks)
                except AppendFailed as exc:
                    context.abort(grpc.StatusCode.UNAVAILABLE,
                                  f"state at seq {chunks[0].seq} not installed: {exc}")
            self._pass_on(self._core.last_seq, deadline, context)
            return chain_pb2.ForwardReply(last_seq=self._core.last_seq)

    def Sync(self, request, context):
        with self._state_lock:
            out = self._out_of_service()
            if out:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, out)
            # Only the tail's state is all committed: a head or middle may hold an update
            # that is lost (and its seq reused) if it dies before passing it on.
            if not self._core.serves_read():
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"not the tail: {self._core.describe()}; sync from the tail")
            if self._core.epoch < request.epoch:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"this replica is at epoch {self._core.epoch}, behind the asked "
                              f"{request.epoch}; retry")
            entries, seq = self._core.store.snapshot()
        yield from chunk_entries(entries, seq, self._budget)

    def Configure(self, request, context):
        deadline = self._deadline(context)
        with self._chain_lock:
            out = self._out_of_service()
            if out:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, out)
            try:
                self._adopt(request, deadline, pushed=True)
            except NotReady as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except (ChainBroken, grpc.RpcError) as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE,
                              f"took epoch {request.epoch} but could not bring the successor "
                              f"up to date: {exc}")
            return chain_pb2.ConfigureReply(last_seq=self._core.last_seq,
                                            epoch=self._core.epoch)

    def _catch_up_on_epoch(self, epoch: int, deadline: float, context) -> None:
        """A predecessor at a newer epoch means the master's push is on its way here: ask
        for it now rather than pass updates to a successor that may have been removed.
        Without an answer, carry on with the configuration at hand. An epoch the master
        has not reached is no configuration at all: refused."""
        if epoch <= self._core.epoch or not (self._core.active or self._core.moved_in):
            return
        try:
            self._refresh(deadline)
        except (ChainBroken, grpc.RpcError) as exc:
            self._log.info("configuration_refresh_failed", epoch=epoch, problem=str(exc))
            return
        if epoch > self._core.epoch:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"epoch {epoch} is unknown: the data-master is at {self._core.epoch}")

    def _pass_on(self, seq: int, deadline: float, context) -> None:
        """Make every replica after this one hold `seq` (Forward and Install handlers)."""
        try:
            self._propagate(seq, deadline)
        except SuccessorRejected:
            # The successor has a newer configuration than this replica: learn it first.
            try:
                adoption = self._refresh(deadline)
            except (ChainBroken, grpc.RpcError) as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE,
                              f"held here, not passed on: a newer configuration exists ({exc})")
            if adoption is Adoption.LEFT:
                context.abort(grpc.StatusCode.UNAVAILABLE,
                              "held here, not passed on: this replica left the chain")
        except ChainBroken as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"held here, not passed on: {exc}")

    # -- the write path (chain lock held) --------------------------------------------------

    def _append_and_apply(self, update: chain_pb2.Update) -> None:
        """Log `update` durably, then apply it; AppendFailed (nothing applied) when the log
        could not take it."""
        if self._closed:
            raise ChainBroken("this replica is shutting down")
        self._wal.append(update)  # durable before anyone can learn of it
        with self._state_lock:
            self._core.record(update)
        # Rewriting costs the whole state: wait until the log is at least as long, so the
        # cost per update stays constant however large the state grows.
        if self._wal.updates_since_snapshot >= max(self._compact_after, len(self._core.store)):
            entries, seq = self._core.store.snapshot()
            try:
                self._wal.replace(chunk_entries(entries, seq, self._budget))
            except AppendFailed as exc:  # the update is durable all the same: the old log holds it
                self._log.warning("wal_compaction_failed", problem=str(exc))

    def _install(self, chunks: list[chain_pb2.SyncChunk]) -> None:
        if self._closed:
            raise ChainBroken("this replica is shutting down")
        self._wal.replace(chunks)
        entries = [entry for chunk in chunks for entry in chunk.entries]
        with self._state_lock:
            self._core.install(entries, chunks[0].seq)
        self._syncs.inc()
        self._log.info("state_installed", seq=chunks[0].seq, keys=len(entries))

    def _commit(self, seq: int, deadline: float) -> None:
        """At the head: make the rest of the chain hold `seq`, or raise ChainBroken or Deposed."""
        try:
            self._propagate(seq, deadline)
            return
        except SuccessorRejected:
            pass
        # My direct successor refused my epoch, so it does not hold `seq`: whether it
        # still counts depends on whether I am still the head.
        self._refresh(deadline)  # when still a member, this passes everything on
        if not self._core.serves_txn():
            raise Deposed(self._core.describe())

    def _propagate(self, upto: int, deadline: float) -> None:
        """Bring the successor (and through it everyone after it) to hold `upto`."""
        successor = self._core.successor()
        if successor is None:
            return
        epoch = self._core.epoch
        update = self._core.recent_update(upto)
        if update is None:
            update = chain_pb2.Update(seq=upto, probe=True)
        update.epoch = epoch
        held = self._forward(successor, update, deadline)
        if held < upto:
            self._log.info("successor_catch_up", successor=successor.name, holds=held,
                           upto=upto)
        for _ in range(upto - held + 2):  # each round moves `held` on, or installs
            if held >= upto:
                break
            missing = self._core.recent_update(held + 1)
            if missing is None:
                held = self._install_into(successor)
                continue
            missing.epoch = epoch
            held = self._forward(successor, missing, deadline)
        if held < upto:
            raise ChainBroken(f"{successor.name} holds {held}, not {upto}, after a catch-up")
        self._core.confirmed(upto)

    def _forward(self, member: chain_pb2.ChainMember, update: chain_pb2.Update,
                 deadline: float) -> int:
        # A successor cut off by a partition must not hold the chain for a whole push's
        # deadline: one hop waits at most RPC_TIMEOUT_SECONDS.
        timeout = min(deadline - time.monotonic(), self._rpc_timeout)
        if timeout <= 0:
            raise ChainBroken(f"no time left to forward update {update.seq} to {member.name}")
        try:
            return self._replica_stub(member).Forward(update, timeout=timeout).last_seq
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise SuccessorRejected(f"{member.name} refused: {exc.details()}") from None
            raise ChainBroken(f"{member.name}: {exc.code().name}: {exc.details()}") from None

    def _install_into(self, member: chain_pb2.ChainMember) -> int:
        entries, seq = self._core.store.snapshot()
        epoch = self._core.epoch

        def stamped() -> Iterator[chain_pb2.SyncChunk]:
            for chunk in chunk_entries(entries, seq, self._budget):
                chunk.epoch = epoch
                yield chunk

        self._log.info("successor_install", successor=member.name, seq=seq, keys=len(entries))
        try:
            reply = self._replica_stub(member).Install(stamped(), timeout=self._transfer_timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise SuccessorRejected(f"{member.name} refused: {exc.details()}") from None
            raise ChainBroken(f"install into {member.name}: {exc.code().name}: "
                              f"{exc.details()}") from None
        return reply.last_seq

    # -- configuration (chain lock held) ---------------------------------------------------

    def _adopt(self, config: chain_pb2.ChainConfig, deadline: float, *, pushed: bool = False,
               granted: bool = False) -> Adoption:
        before = (self._core.epoch, self._core.position, self._core.member_epoch)
        with self._state_lock:
            adoption = self._core.adopt(config, pushed=pushed, granted=granted)
        if adoption is Adoption.STALE:
            return adoption
        if self._core.member_epoch != before[2]:
            self._write_marker(self._core.member_epoch)
        if (self._core.epoch, self._core.position) != before[:2]:
            self._log.info("chain_configured", epoch=self._core.epoch,
                           position=self._core.position, chain=self._core.names())
        self._needs_register = adoption is Adoption.LEFT
        if adoption is Adoption.LEFT:
            self._wake.set()
        if adoption is Adoption.MEMBER:
            self._propagate(self._core.last_seq, deadline)
        return adoption

    def _refresh(self, deadline: float) -> Adoption:
        timeout = max(0.05, min(self._rpc_timeout, deadline - time.monotonic()))
        config = self._master().GetConfig(chain_pb2.GetConfigRequest(), timeout=timeout)
        return self._adopt(config, deadline)

    # -- the deliberately broken mode (ack_at=head) -----------------------------------------

    def _switch_ack_at(self, mode: str, *, source: str) -> None:
        self._ack_at = mode
        if mode == ACK_AT_HEAD:
            self._log.warning("broken_mode_on", ack_at=mode, source=source,
                              effect="txns are acknowledged at the head before the chain holds "
                                     "them: stale reads and lost writes are possible")
            with self._committer_lock:
                if self._committer.ident is None and not self._stopped.is_set():
                    self._committer.start()
        else:
            self._log.info("broken_mode_off", ack_at=mode, source=source)
        # Updates already acknowledged early are passed on now, not only at the next Txn.
        self._commit_wanted.set()

    def _committer_loop(self) -> None:
        while True:
            self._commit_wanted.wait()
            self._commit_wanted.clear()
            if self._stopped.is_set():
                return
            try:
                self._commit_early_acked()
            except Exception as exc:  # noqa: BLE001 - the committer must outlive any one failure
                self._log.error("early_ack_commit_crashed", problem=repr(exc))

    def _commit_early_acked(self) -> None:
        """Pass every update the head holds on to the rest of the chain. A failure leaves
        them pending: the membership check and the next Txn pass them on again."""
        with self._chain_lock:
            if self._closed or not self._core.serves_txn() or not self._core.has_pending():
                return
            pending = self._core.last_seq
            started = time.perf_counter()
            try:
                self._commit(pending, time.monotonic() + self._transfer_timeout)
            except Deposed as exc:
                # The next head never got them: early acknowledgements up to here are lost.
                self._log.warning("early_acked_updates_lost", upto=pending, problem=str(exc))
                return
            except (ChainBroken, grpc.RpcError) as exc:
                self._log.warning("early_acked_updates_not_passed_on", upto=pending,
                                  problem=str(exc))
                return
            self._forward_seconds.observe(time.perf_counter() - started)

    # -- membership thread -----------------------------------------------------------------

    def _membership_loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.clear()
            try:
                self._membership_step()
                problem = ""
            except grpc.RpcError as exc:
                problem = f"{exc.code().name}: {exc.details()}"
            except (ChainBroken, AppendFailed) as exc:
                problem = str(exc)
            if problem != self._last_problem:
                if problem:
                    self._log.warning("membership_check_failed", problem=problem)
                else:
                    self._log.info("membership_check_recovered")
                self._last_problem = problem
            self._wake.wait(self._check_interval)

    def _membership_step(self) -> None:
        deadline = time.monotonic() + self._transfer_timeout
        if self._spare or self._moved_to:
            return  # a spare registers with nobody; a moved replica never comes back
        if not self._needs_register:
            config = self._master().GetConfig(chain_pb2.GetConfigRequest(),
                                              timeout=self._rpc_timeout)
            with self._chain_lock:
                if self._closed or self._moved_to:
                    return
                if self._core.moved_in and not self._core.active:
                    if self._me.name not in [member.name for member in config.chain]:
                        if config.epoch > self._moved_in_epoch:
                            # The master moved past the epoch the source committed at
                            # without listing this replica: its Replace can no longer be
                            # granted, and the source serves on.
                            self._drop_to_spare("the chain moved on without this replica "
                                                f"(epoch {config.epoch})")
                        return
                self._adopt(config, deadline)
            return
        with self._chain_lock:
            request = chain_pb2.RegisterRequest(
                member=self._me, last_seq=self._core.last_seq,
                member_epoch=self._core.member_epoch, ready=self._core.ready)
        reply = self._master().Register(request, timeout=self._rpc_timeout)
        with self._chain_lock:
            if self._closed:
                return
            adoption = self._adopt(reply.config, deadline, granted=reply.member)
            syncing = adoption is Adoption.LEFT and reply.config.chain
        self._log.info("registered", epoch=reply.config.epoch, member=reply.member,
                       outcome=adoption.value, ready=request.ready)
        if syncing:
            self._sync_from_tail(reply.config)
            self._wake.set()  # register again at once, now ready to join

    def _sync_from_tail(self, config: chain_pb2.ChainConfig) -> None:
        tail = config.chain[-1]
        stream = self._replica_stub(tail).Sync(chain_pb2.SyncRequest(epoch=config.epoch),
                                               timeout=self._transfer_timeout)
        try:
            chunks = gather_snapshot(stream, self._install_max_bytes)
        except SnapshotTooLarge as exc:
            stream.cancel()
            raise ChainBroken(f"sync from {tail.name}: {exc}") from None
        complaint = _complete_snapshot(chunks, self._limits)
        if complaint:
            raise ChainBroken(f"sync from {tail.name}: {complaint}")
        with self._chain_lock:
            if self._closed or self._core.active or not self._needs_register:
                return  # the configuration moved on meanwhile: the next round decides
            self._install(chunks)
            self._core.ready = True
        self._log.info("synced_from_tail", tail=tail.name, seq=chunks[0].seq)

    # -- live migration --------------------------------------------------------------------

    def MigrateOut(self, request, context):
        plan = self._migration_plan(request, context)
        with self._migration_lock:
            running = self._migration
            if running is not None and not running.finished.is_set():
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"a migration to {running.plan.destination_name} is already "
                              f"running here")
            with self._state_lock:
                out = self._out_of_service()
                if out:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, out)
                if not self._core.active:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"only a member migrates: {self._core.describe()}")
            stub = chain_pb2_grpc.ReplicaStub(self._channels.get(plan.destination,
                                                                 plan.destination_name))
            migration = Outgoing(_SourceHooks(self, plan), plan, stub.MigrateIn, self._log)
            self._migration = migration
        self._log.info("migration_started", destination=plan.destination_name,
                       address=plan.destination, strategy=plan.strategy.value)
        threading.Thread(target=migration.run, args=(self._migration_ended,),
                         name="migrate-out", daemon=True).start()
        while not migration.finished.is_set():
            migration.changed.wait(0.5)
            migration.changed.clear()
            if not migration.finished.is_set():
                yield migration.progress()
        if migration.error is not None:
            context.abort(migration.error.code, str(migration.error))
        yield migration.progress()

    def _migration_plan(self, request, context) -> MigrationPlan:
        host, _, port = request.destination.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"destination {request.destination!r} is not host:port")
        if not request.destination_name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name the destination replica "
                          "(destination_name)")
        if request.destination_name == self._me.name or request.destination == self._me.address:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a replica cannot migrate to itself ({self._me.name})")
        try:
            strategy = Strategy.named(request.strategy or Strategy.PRE_COPY.value)
            if strategy not in STRATEGIES:
                raise ValueError(f"a replica moves by {' or '.join(s.value for s in STRATEGIES)}"
                                 f": post-copy would serve keys that have not arrived as absent")
            defaults = PreCopyLimits()
            limits = PreCopyLimits(min_rate=request.min_rate or defaults.min_rate,
                                   max_rate=request.max_rate or defaults.max_rate,
                                   max_rounds=request.max_rounds or defaults.max_rounds)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        chunk = max(1, min(MAX_CHUNK_UNITS, self._budget // max(1, self._limits.max_value_bytes
                                                                  + 1024)))
        return MigrationPlan(request.destination, request.destination_name, strategy, limits,
                             chunk, self._migration_timeout)

    def _migration_ended(self, migration: Outgoing) -> None:
        error = migration.error
        outcome = "done" if error is None else error.outcome
        self._migrations.labels(strategy=migration.plan.strategy.value, outcome=outcome).inc()
        if migration.core is not None:
            self._migration_sent.inc(migration.core.bytes_sent)
        if migration.downtime is not None:
            self._migration_downtime.observe(migration.downtime)
        self._log.info("migration_ended", destination=migration.plan.destination_name,
                       outcome=outcome, problem=str(error) if error else "")

    def MigrateIn(self, request_iterator, context):
        # The first message is read before anything is decided, so a body past the size
        # limit is refused RESOURCE_EXHAUSTED here as on every other method.
        first = next(request_iterator, None)
        with self._chain_lock:
            if not self._spare or self._incoming:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"{self._me.name} is not a spare waiting for a migration"
                              + (" (one is already coming in)" if self._incoming else ""))
            self._incoming = True
        committed = False
        try:
            if first is None or first.WhichOneof("body") != "begin":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a migration starts with begin")
            begin = first.begin
            if begin.destination_name != self._me.name:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"this is {self._me.name}, not {begin.destination_name!r}")
            if not begin.source or begin.source == self._me.name:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"a replica cannot migrate into itself ({self._me.name})")
            with self._state_lock:
                image = ChainImage(self._core.store, max_value_bytes=self._limits.max_value_bytes,
                                   lock=self._state_lock)
            self._log.info("migration_incoming", source=begin.source, strategy=begin.strategy)
            yield chain_pb2.ReplicaTransferReply(accepted=self._me.name)
            for message in request_iterator:
                kind = message.WhichOneof("body")
                if kind == "units":
                    self._install_units(image, message.units, context)
                elif kind == "commit":
                    self._commit_incoming(image, message.commit, context)
                    committed = True
                    yield chain_pb2.ReplicaTransferReply(committed=True)
                    return
                else:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"unexpected {kind} in a migration")
        finally:
            with self._chain_lock:
                self._incoming = False
                if not committed and self._spare:
                    with self._state_lock:
                        self._core.store.observer = None
                        self._core.install([], 0)
                    self._log.warning("migration_incoming_dropped",
                                      effect="nothing of it is kept; still a spare")

    def _install_units(self, image: ChainImage, units, context) -> None:
        if not 0 < len(units.index) <= MAX_CHUNK_UNITS or len(units.data) != len(units.index):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a chunk holds 1-{MAX_CHUNK_UNITS} units, each with its data")
        with self._state_lock:
            try:
                for unit, data in zip(units.index, units.data, strict=True):
                    image.install(unit, data)
            except PageError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if image.size_bytes > self._install_max_bytes:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"the state migrating in is over DATA_INSTALL_MAX_BYTES="
                              f"{self._install_max_bytes} bytes")

    def _commit_incoming(self, image: ChainImage, commit, context) -> None:
        """Make the state durable as Install does, then wait to be listed (see "Live
        migration"): from here a configuration listing this replica activates it."""
        with self._chain_lock:
            with self._state_lock:
                image.detach()
                try:
                    entries = image.finish(commit.seq, self._limits)
                except InvalidRequest as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"the migrated state is not whole: {exc}")
            try:
                self._wal.replace(chunk_entries(entries, commit.seq, self._budget))
                # A restart finds a member's state here (never a spare's): registered with
                # it, the master re-uses it in place once it is listed.
                self._write_marker(commit.epoch + 1)
            except AppendFailed as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"migrated state not durable: {exc}")
            with self._state_lock:
                self._core.install(entries, commit.seq)
                self._core.ready = True
                self._core.moved_in = True
                self._core.member_epoch = commit.epoch + 1
                self._moved_in_epoch = commit.epoch
                self._spare = False
                self._needs_register = False
        self._log.info("migration_took_over", source=commit.source, seq=commit.seq,
                       epoch=commit.epoch, keys=len(entries))
        self._wake.set()

    def _drop_to_spare(self, why: str) -> None:
        """A committed migration that was never granted: forget it, be a spare again.
        Chain lock held."""
        with self._state_lock:
            self._core.install([], 0)
            self._core.moved_in = self._core.ready = False
            self._core.member_epoch = 0
            self._spare = True
        self._write_marker(0)
        self._log.warning("migration_not_granted", why=why, effect="a spare again")

    # -- helpers ---------------------------------------------------------------------------

    def _master(self) -> chain_pb2_grpc.MasterStub:
        return chain_pb2_grpc.MasterStub(self._channels.get(self._master_address, MASTER_PEER))

    def _replica_stub(self, member: chain_pb2.ChainMember) -> chain_pb2_grpc.ReplicaStub:
        return chain_pb2_grpc.ReplicaStub(self._channels.get(member.address, member.name))

    def _deadline(self, context) -> float:
        remaining = context.time_remaining()
        budget = self._rpc_timeout if remaining is None else min(remaining,
                                                                  self._transfer_timeout)
        return time.monotonic() + max(0.0, budget - REPLY_MARGIN_SECONDS)

    def _read_marker(self) -> int:
        raw = read_file(self._marker_path)
        if raw is None:
            return 0
        try:
            return int(json.loads(raw)["member_epoch"])
        except (ValueError, KeyError, TypeError):
            return 0  # unreadable: claim no membership, so the master makes it sync again

    def _write_marker(self, member_epoch: int) -> None:
        write_atomically(self._marker_path, json.dumps({"member_epoch": member_epoch}).encode())


class _SourceHooks:
    """What a migration's driver (nodes/data/migration.py) may do to the replica it moves."""

    def __init__(self, node: DataNode, plan: MigrationPlan) -> None:
        self.node = node
        self.plan = plan
        self.name = node._me.name
        self._holding = False

    def image(self) -> ChainImage:
        node = self.node
        with node._state_lock:
            return ChainImage(node._core.store, max_value_bytes=node._limits.max_value_bytes,
                              lock=node._state_lock)

    def pause(self) -> None:
        node = self.node
        if not node._chain_lock.acquire(timeout=node._transfer_timeout):
            raise MigrationFailed(grpc.StatusCode.UNAVAILABLE, "could not pause: the chain "
                                  f"stayed busy for {node._transfer_timeout} s")
        self._holding = True
        with node._state_lock:
            node._paused = True
        if node._closed or not node._core.active:
            self.resume()
            raise MigrationFailed(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"could not pause: {node._core.describe()}")

    def resume(self) -> None:
        node = self.node
        with node._state_lock:
            node._paused = False
        if self._holding:
            self._holding = False
            node._chain_lock.release()

    def commit_point(self) -> tuple[int, int]:
        core = self.node._core
        return core.last_seq, core.epoch

    def replace(self, seq: int, epoch: int, timeout: float) -> chain_pb2.ChainConfig:
        node = self.node
        request = chain_pb2.ReplaceRequest(
            old=self.name, new=chain_pb2.ChainMember(name=self.plan.destination_name,
                                                     address=self.plan.destination),
            last_seq=seq, epoch=epoch)
        return node._master().Replace(request, timeout=node._rpc_timeout)

    def fence(self, outcome: str) -> None:
        node = self.node
        with node._state_lock:
            node._moved_to = self.plan.destination_name
            node._fence_outcome = outcome
            node._paused = False
            node._core.active = False
        node._log.warning("replica_fenced", moved_to=self.plan.destination_name,
                          outcome=outcome, effect="serves nothing until restarted")
        node._set_not_serving(f"moved to {self.plan.destination_name} ({outcome})")
        if self._holding:
            self._holding = False
            node._chain_lock.release()
