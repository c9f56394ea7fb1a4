"""The data-master's decisions about the chain configuration. Sans-I/O.

`ChainMaster` owns the configuration (epoch + members, head first) and changes
it for five reasons: the first replica starts the chain (bootstrap), a synced
replica joins at the tail (join), a member stops answering (failure), a
listed replica comes back without a member's state on disk (rejoin), or a
member migrated live into a spare asks to be replaced by it at its position
(replace); a member that comes back at a new address keeps its place (address). Every
change bumps the epoch. It also tracks which epoch each member acknowledged,
so the adapter pushes configurations head first and a joiner last.

Two rules keep acknowledged writes: a member is never removed when no other
*serving* member would remain (a joiner still waiting for its push does not
count, it may lack writes), so with every replica down the configuration and
the data on their disks stay; and only the master's Register reply or push
makes a replica serve (see nodes/data/chain.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from nodes.rpc import chain_pb2

REASONS = ("bootstrap", "join", "failure", "rejoin", "address", "replace")


@dataclass(frozen=True)
class Change:
    reason: str
    config: chain_pb2.ChainConfig


@dataclass(frozen=True)
class Registration:
    """The Register reply: the configuration, whether the replica may serve from its own
    state now, and the change the registration made (None: none)."""

    config: chain_pb2.ChainConfig
    member: bool
    change: Change | None


def _copy(config: chain_pb2.ChainConfig) -> chain_pb2.ChainConfig:
    copy = chain_pb2.ChainConfig()
    copy.CopyFrom(config)
    return copy


class ReplaceRefused(Exception):
    """A Replace the configuration does not allow (FAILED_PRECONDITION); says why."""


class ChainMaster:
    def __init__(self, config: chain_pb2.ChainConfig | None = None) -> None:
        self._config = _copy(config) if config is not None else chain_pb2.ChainConfig()
        # Serving members. Those of a reloaded configuration are presumed serving: they
        # were when it was written (a joiner caught mid-join is the one exception).
        self._serving = set(self.names())
        self._acknowledged: dict[str, int] = {}

    @property
    def config(self) -> chain_pb2.ChainConfig:
        return _copy(self._config)

    @property
    def epoch(self) -> int:
        return self._config.epoch

    def names(self) -> list[str]:
        return [member.name for member in self._config.chain]

    def member(self, name: str) -> chain_pb2.ChainMember | None:
        """The listed member called `name`, or None."""
        return next((m for m in self._config.chain if m.name == name), None)

    def is_serving(self, name: str) -> bool:
        return name in self._serving and name in self.names()

    def register(self, member: chain_pb2.ChainMember, *, member_epoch: int,
                 ready: bool) -> Registration:
        """Decide what a replica that announced itself does next."""
        names = self.names()
        if member.name in names:
            others_serving = any(self.is_serving(name) for name in names if name != member.name)
            if member_epoch > 0 or not others_serving:
                # Re-used in place: its disk holds everything it acknowledged (or it is
                # the only copy there is).
                self._serving.add(member.name)
                change = self._move(member)
                return Registration(self.config, True, change)
            if ready:  # a joiner asking again while its push is on the way
                change = self._move(member)
                return Registration(self.config, False, change)
            # Listed but without a member's state (a new disk, or a crash mid-join):
            # out, then in again at the tail after a sync.
            change = self._remove(member.name, "rejoin")
            return Registration(self.config, False, change)
        if not names:
            change = self._change("bootstrap", [member])
            self._serving.add(member.name)
            return Registration(self.config, True, change)
        if ready:
            change = self._change("join", [*self._config.chain, member])
            return Registration(self.config, False, change)
        return Registration(self.config, False, None)

    def remove_failed(self, name: str) -> Change | None:
        """Take a member that stopped answering out; None when it is not listed or no
        other serving member would remain (then the chain waits for it)."""
        names = self.names()
        if name not in names:
            return None
        if not any(self.is_serving(other) for other in names if other != name):
            return None
        return self._remove(name, "failure")

    def replace(self, old: str, new: chain_pb2.ChainMember, *, epoch: int) -> Change | None:
        """Put `new` in `old`'s place: the destination of a live migration of `old`, which
        committed at `epoch` holding `old`'s whole state. None when that replacement is
        already the configuration (a retried Replace); ReplaceRefused when `old` is not a
        member, `new` is, or `epoch` is not the current one (the chain changed meanwhile:
        the source's state may no longer be what its position needs)."""
        names = self.names()
        if new.name in names and old not in names and epoch < self.epoch:
            if self.member(new.name).address == new.address:
                return None
        if old not in names:
            raise ReplaceRefused(f"{old} is not a member of the chain at epoch {self.epoch}")
        if new.name in names:
            raise ReplaceRefused(f"{new.name} is already a member of the chain")
        if epoch != self.epoch:
            raise ReplaceRefused(f"{old} committed at epoch {epoch}, the chain is at "
                                 f"{self.epoch}")
        chain = [new if member.name == old else member for member in self._config.chain]
        self._serving.discard(old)
        self._serving.add(new.name)
        return self._change("replace", chain)

    def push_targets(self) -> list[chain_pb2.ChainMember]:
        """Members that have not acknowledged the current epoch, head first. The adapter
        pushes in this order and stops at the first failure, so a joiner hears of its
        membership only after its predecessor has brought it up to date."""
        return [member for member in self._config.chain
                if self._acknowledged.get(member.name, 0) < self._config.epoch]

    def acknowledged(self, name: str, epoch: int) -> None:
        self._acknowledged[name] = max(self._acknowledged.get(name, 0), epoch)
        if epoch == self._config.epoch and name in self.names():
            self._serving.add(name)

    def _move(self, member: chain_pb2.ChainMember) -> Change | None:
        chain = list(self._config.chain)
        index = self.names().index(member.name)
        if chain[index].address == member.address:
            return None
        chain[index] = member
        return self._change("address", chain)

    def _remove(self, name: str, reason: str) -> Change:
        self._serving.discard(name)
        return self._change(reason, [m for m in self._config.chain if m.name != name])

    def _change(self, reason: str, chain: list[chain_pb2.ChainMember]) -> Change:
        config = chain_pb2.ChainConfig(epoch=self._config.epoch + 1)
        for member in chain:
            config.chain.add().CopyFrom(member)
        self._config = config
        return Change(reason, self.config)
