"""One replica's view of the chain: configuration, position, epochs, seq order. Sans-I/O.

`ReplicaCore` decides and remembers; the gRPC adapter (nodes/data/service.py)
does the calls, the fsyncs and the locking around it. It answers:
- where am I (head, middle, tail, single, standby) and who is next;
- may I take this Forward (its epoch is not older than mine) and what is it
  (the next seq: apply; an old one: duplicate; a later one: I have a gap);
- which of my recent updates does a successor that reports a gap need;
- what happens when a configuration arrives (`adopt`).

Membership (who may act as a member) is the safety-critical part. A replica
becomes an active member only when the master says so: its Register reply
grants it (it is re-used in place with the state on its disk, or it is the
first or only copy), or the master pushes a configuration listing it after it
synced a full state in this run (a joiner) or while its disk says it has been a
member without a break (`member_epoch` > 0). A configuration merely polled
from the master never activates a replica: a joining tail must not serve
reads before its predecessor, pushed first, has brought it up to date.

A migration's destination (`moved_in`) is the one exception: it holds the
whole state of the member it replaces, frozen at that member's last seq when
the member paused, so any configuration listing it (pushed or polled, or
learnt from a predecessor's Forward at a newer epoch) activates it; it must,
or a predecessor pushed before it would forward to a replica that does not
pass updates on. See "Live migration" in nodes/data/service.py.
"""

from __future__ import annotations

import enum
from collections import deque

from nodes.data.store import ChainStore
from nodes.rpc import chain_pb2

POSITIONS = ("head", "middle", "tail", "single", "standby")


class StaleEpoch(Exception):
    """A Forward or Install from an older configuration (FAILED_PRECONDITION)."""


class NotReady(Exception):
    """A pushed configuration lists this replica, but it holds no state it may serve yet."""


class Adoption(enum.Enum):
    STALE = "stale"        # older than what this replica has: ignored
    MEMBER = "member"      # listed and active
    WAITING = "waiting"    # listed, waiting for the master's push (a joiner)
    LEFT = "left"          # not listed: standby until it registers and joins again


class ForwardKind(enum.Enum):
    APPLY = "apply"            # seq == last + 1
    DUPLICATE = "duplicate"    # seq <= last: already held
    GAP = "gap"                # seq > last + 1: the predecessor must send the missing ones


class ReplicaCore:
    def __init__(self, name: str, *, recent_capacity: int, member_epoch: int = 0,
                 store: ChainStore | None = None) -> None:
        self.name = name
        self.store = store or ChainStore()
        self.config = chain_pb2.ChainConfig()
        self.active = False
        #: Persisted: the epoch since which this replica has been a member without a break.
        self.member_epoch = member_epoch
        #: Set by the adapter once a full state from the tail is installed in this run.
        self.ready = False
        #: Set by the adapter once a migration committed a member's whole state here.
        self.moved_in = False
        #: Highest seq every replica after this one is known to hold (the head's
        #: "nothing pending"); reset whenever the configuration changes.
        self.acked_seq = 0
        self._recent: deque[chain_pb2.Update] = deque(maxlen=recent_capacity)

    # -- where this replica stands ---------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self.config.epoch

    @property
    def last_seq(self) -> int:
        return self.store.last_seq

    def names(self) -> list[str]:
        return [member.name for member in self.config.chain]

    def _index(self) -> int | None:
        names = self.names()
        return names.index(self.name) if self.name in names else None

    @property
    def position(self) -> str:
        index = self._index()
        if not self.active or index is None:
            return "standby"
        length = len(self.config.chain)
        if length == 1:
            return "single"
        if index == 0:
            return "head"
        return "tail" if index == length - 1 else "middle"

    def successor(self) -> chain_pb2.ChainMember | None:
        index = self._index()
        if not self.active or index is None or index + 1 >= len(self.config.chain):
            return None
        return self.config.chain[index + 1]

    def serves_txn(self) -> bool:
        return self.position in ("head", "single")

    def serves_read(self) -> bool:
        return self.position in ("tail", "single")

    def has_pending(self) -> bool:
        """Updates applied here that the rest of the chain has not confirmed yet."""
        return self.successor() is not None and self.acked_seq < self.last_seq

    def describe(self) -> str:
        return f"this replica is {self.position} at epoch {self.epoch}"

    # -- updates ---------------------------------------------------------------------------

    def check_epoch(self, epoch: int) -> None:
        """Refuse what an older configuration sends: a removed head must never get a write
        acknowledged. A newer epoch is taken: the master pushes head first, so a
        successor briefly lags its predecessor."""
        if epoch < self.epoch:
            raise StaleEpoch(f"stale epoch: this replica is at epoch {self.epoch}, "
                             f"the sender at {epoch}")

    def classify(self, seq: int) -> ForwardKind:
        if seq == self.last_seq + 1:
            return ForwardKind.APPLY
        return ForwardKind.DUPLICATE if seq <= self.last_seq else ForwardKind.GAP

    def record(self, update: chain_pb2.Update) -> None:
        """Apply `update` (already durable) and keep it for catching successors up."""
        self.store.apply(update)
        self._recent.append(update)

    def recent_update(self, seq: int) -> chain_pb2.Update | None:
        if not self._recent or not self._recent[0].seq <= seq <= self._recent[-1].seq:
            return None
        return self._recent[seq - self._recent[0].seq]

    def confirmed(self, seq: int) -> None:
        self.acked_seq = max(self.acked_seq, seq)

    def install(self, entries: list[chain_pb2.KeyValue], seq: int) -> None:
        """Replace the state with a full snapshot; recent updates before it are useless."""
        self.store.install(entries, seq)
        self._recent.clear()
        self.acked_seq = 0

    def restore(self, snapshot: list[chain_pb2.KeyValue], snapshot_seq: int,
                updates: list[chain_pb2.Update]) -> int:
        """Rebuild the state from a replayed log; return how many updates were applied.

        Updates at or below the snapshot's seq are skipped; replay stops at a gap
        (which only a bug could leave) so the state is always a prefix of the log.
        """
        self.install(snapshot, snapshot_seq)
        applied = 0
        for update in updates:
            kind = self.classify(update.seq)
            if kind is ForwardKind.GAP:
                break
            if kind is ForwardKind.APPLY:
                self.record(update)
                applied += 1
        return applied

    # -- configuration ---------------------------------------------------------------------

    def adopt(self, config: chain_pb2.ChainConfig, *, pushed: bool = False,
              granted: bool = False) -> Adoption:
        """Take a configuration: `pushed` by the master (Configure), `granted` when the
        master's Register reply made this replica a member, else merely polled."""
        if config.epoch < self.epoch:
            return Adoption.STALE
        listed = self.name in [member.name for member in config.chain]
        if not listed:
            self._take(config)
            self.active, self.member_epoch, self.ready = False, 0, False
            self.moved_in = False
            return Adoption.LEFT
        if (self.active or granted or self.moved_in
                or (pushed and (self.ready or self.member_epoch > 0))):
            self._take(config)
            self.active = True
            self.member_epoch = self.member_epoch or config.epoch
            return Adoption.MEMBER
        if pushed:
            raise NotReady("this replica is listed but has not synced a state to serve yet")
        self._take(config)
        return Adoption.WAITING

    def _take(self, config: chain_pb2.ChainConfig) -> None:
        if config.epoch != self.epoch:
            self.acked_seq = 0
        copy = chain_pb2.ChainConfig()
        copy.CopyFrom(config)
        self.config = copy
