"""Live migration of a data replica into a spare: the source's driver and the plan it follows.

`Outgoing` runs on the source replica, in a thread of its own started by the
MigrateOut handler (nodes/data/service.py). It opens MigrateIn on the spare,
runs nodes.vm.strategies.SourceMigration over a ChainImage of the replica's
store, sleeps until each chunk's `not_before` (the rate limit), and calls
back into the replica (`ReplicaHooks`) to pause, to resume after an abort,
to be replaced at the master and to be fenced. It never touches the chain
lock itself: the hooks do. The safety argument is in service.py's
docstring ("Live migration").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from nodes.common.stream import OutboundStream
from nodes.data.image import ChainImage
from nodes.rpc import chain_pb2
from nodes.vm.strategies import Commit, Done, Pause, PreCopyLimits, Send, SourceMigration, Strategy

ACCEPT_SECONDS = 5.0
COMMIT_SECONDS = 10.0
REPLACE_ATTEMPTS = 4
REPLACE_PAUSE_SECONDS = 0.5
MAX_CHUNK_UNITS = 256
STRATEGIES = (Strategy.PRE_COPY, Strategy.STOP_AND_COPY)


class MigrationFailed(Exception):
    """The migration did not happen, or its end is unknown; `code` is the gRPC status and
    `outcome` the migrations_total label (aborted, refused, unknown)."""

    def __init__(self, code: grpc.StatusCode, message: str, outcome: str = "aborted") -> None:
        super().__init__(message)
        self.code = code
        self.outcome = outcome


@dataclass(frozen=True)
class MigrationPlan:
    destination: str          # host:port
    destination_name: str
    strategy: Strategy
    limits: PreCopyLimits
    chunk_units: int
    timeout: float


class ReplicaHooks(Protocol):
    """What the driver asks of the replica it moves (nodes/data/service.py)."""

    name: str

    def image(self) -> ChainImage: ...

    def pause(self) -> None: ...       # take the chain lock, refuse reads: nothing changes

    def resume(self) -> None: ...      # undo pause: the replica serves on

    def commit_point(self) -> tuple[int, int]: ...   # (last seq, epoch), paused

    def replace(self, seq: int, epoch: int, timeout: float) -> chain_pb2.ChainConfig: ...

    def fence(self, outcome: str) -> None: ...   # never serve again; release the lock


class Outgoing:
    """One migration of a replica to a spare over `transfer` (a MigrateIn stub method)."""

    def __init__(self, replica: ReplicaHooks, plan: MigrationPlan,
                 transfer: Callable[..., Iterator], log) -> None:
        self.replica = replica
        self.plan = plan
        self._transfer = transfer
        self._log = log
        self._stream = OutboundStream(MigrationFailed, plan.destination_name)
        self.lock = threading.Lock()  # the core is read by status readers too
        self.core: SourceMigration | None = None
        self.phase = "starting"
        self.changed = threading.Event()
        self.finished = threading.Event()
        self.result: chain_pb2.ReplicaMigrationProgress | None = None
        self.error: MigrationFailed | None = None
        self.downtime: float | None = None

    def progress(self) -> chain_pb2.ReplicaMigrationProgress:
        with self.lock:
            if self.result is not None:
                return self.result
            core = self.core
            if core is None:
                return chain_pb2.ReplicaMigrationProgress(phase=self.phase,
                                                          destination=self.plan.destination_name)
            return chain_pb2.ReplicaMigrationProgress(
                phase=self.phase, round=core.round_number, units_left=core.pages_left(),
                units_sent=core.pages_sent, bytes_per_second=core.transfer_rate(time.monotonic()),
                destination=self.plan.destination_name)

    def run(self, on_end: Callable[[Outgoing], None]) -> None:
        started = time.monotonic()
        try:
            self._migrate(started)
        except MigrationFailed as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - a bug must still end the migration cleanly
            self._log.error("migration_driver_failed", problem=repr(exc))
            self.error = MigrationFailed(grpc.StatusCode.INTERNAL,
                                         f"the migration driver failed: {type(exc).__name__}",
                                         "unknown")
        finally:
            self._stream.close()
            with self.lock:
                result = (self._result_of(started) if self.error is None
                          else chain_pb2.ReplicaMigrationProgress(
                              phase="unknown" if self.error.outcome == "unknown" else "failed",
                              error=str(self.error), destination=self.plan.destination_name,
                              total_seconds=time.monotonic() - started))
                self.result = result
                self.phase = result.phase
            try:
                on_end(self)
            finally:
                self.finished.set()
                self.changed.set()

    # -- inside ----------------------------------------------------------------------
    def _enter(self, phase: str) -> None:
        with self.lock:
            self.phase = phase
        self.changed.set()

    def _result_of(self, started: float) -> chain_pb2.ReplicaMigrationProgress:
        core = self.core
        return chain_pb2.ReplicaMigrationProgress(
            phase="done", round=core.round_number, units_sent=core.pages_sent,
            downtime_seconds=self.downtime or 0.0, total_seconds=time.monotonic() - started,
            bytes_sent=core.bytes_sent, stop_reason=core.stop_reason,
            last_seq=self._committed_seq, epoch=self._new_epoch,
            destination=self.plan.destination_name)

    def _send(self, message: chain_pb2.ReplicaTransfer) -> None:
        self._stream.send(message, self._check_events)

    def _check_events(self, wait: float = 0.0, until: str = "") -> bool:
        """Raise what went wrong at the destination; True once a reply of kind `until`
        came within `wait`."""
        event = self._stream.next_event(wait)
        if event is None:
            return False
        kind = event.WhichOneof("body")
        if kind != until:
            raise MigrationFailed(grpc.StatusCode.INTERNAL,
                                  f"the destination said {kind} out of turn")
        return True

    def _migrate(self, started: float) -> None:
        plan = self.plan
        self._committed_seq, self._new_epoch = 0, 0
        replies = self._stream.open(self._transfer, plan.timeout)
        paused = commit_sent = False
        try:
            self._send(chain_pb2.ReplicaTransfer(begin=chain_pb2.ReplicaTransferBegin(
                source=self.replica.name, destination_name=plan.destination_name,
                strategy=plan.strategy.value)))
            if not self._check_events(ACCEPT_SECONDS, until="accepted"):
                raise MigrationFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"{plan.destination_name} did not accept within "
                                      f"{ACCEPT_SECONDS} s")
            image = self.replica.image()
            with image.lock:
                core = SourceMigration(image, plan.strategy, now=time.monotonic(),
                                       limits=plan.limits, chunk_pages=plan.chunk_units)
            with self.lock:
                self.core = core
            self._enter("live")
            while True:
                self._check_events()
                with image.lock, self.lock:
                    step = core.next_step(time.monotonic())
                if isinstance(step, Send):
                    self._stream.wait_until(step.not_before, self._check_events)
                    self._send(chain_pb2.ReplicaTransfer(units=chain_pb2.ReplicaUnits(
                        round=step.round, index=[unit for unit, _ in step.pages],
                        data=[data for _, data in step.pages])))
                elif isinstance(step, Pause):
                    self.replica.pause()
                    paused, paused_at = True, time.monotonic()
                    self._enter("paused")
                    self._log.info("migration_paused", round=core.round_number,
                                   stop_reason=core.stop_reason)
                elif isinstance(step, Commit):
                    seq, epoch = self.replica.commit_point()
                    self._send(chain_pb2.ReplicaTransfer(commit=chain_pb2.ReplicaCommit(
                        seq=seq, epoch=epoch, source=self.replica.name)))
                    commit_sent = True
                    if not self._check_events(COMMIT_SECONDS, until="committed"):
                        raise MigrationFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                                              f"no commit answer within {COMMIT_SECONDS} s")
                    self._committed_seq = seq
                    self._enter("committed")
                    self._new_epoch = self._replace(seq, epoch)
                    self.downtime = time.monotonic() - paused_at
                    self._log.info("migration_committed", destination=plan.destination_name,
                                   seq=seq, epoch=self._new_epoch,
                                   downtime_seconds=round(self.downtime, 6))
                    return
                elif isinstance(step, Done):
                    raise MigrationFailed(grpc.StatusCode.INTERNAL, "the migration ended "
                                          "without a commit")
        except MigrationFailed as exc:
            replies.cancel()
            self._abort(exc, paused, commit_sent)
            raise
        except Exception:
            replies.cancel()
            self._abort(MigrationFailed(grpc.StatusCode.INTERNAL, "driver failure"), paused,
                        commit_sent)
            raise
        finally:
            image = self.core.image if self.core is not None else None
            if image is not None:
                image.detach()

    def _replace(self, seq: int, epoch: int) -> int:
        """Ask the master to put the destination in this replica's place; the new epoch.
        A definite refusal resumes this replica (the destination never serves: no
        configuration lists it); no answer after a few tries leaves it fenced."""
        problem = ""
        for attempt in range(REPLACE_ATTEMPTS):
            try:
                config = self.replica.replace(seq, epoch, self.plan.timeout)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION,
                                  grpc.StatusCode.INVALID_ARGUMENT):
                    raise MigrationFailed(exc.code(), f"the data-master refused the replace: "
                                          f"{exc.details()}", "refused") from None
                problem = f"{exc.code().name}: {exc.details()}"
                self._log.warning("migration_replace_failed", attempt=attempt + 1,
                                  problem=problem)
                time.sleep(REPLACE_PAUSE_SECONDS)
                continue
            self.replica.fence("moved")
            return config.epoch
        raise MigrationFailed(grpc.StatusCode.UNKNOWN, f"the destination committed but the "
                              f"data-master did not answer the replace ({problem})",
                              "unknown")

    def _abort(self, exc: MigrationFailed, paused: bool, commit_sent: bool) -> None:
        if exc.outcome == "unknown" or (commit_sent and exc.outcome != "refused"):
            # Never two copies serving: the destination may have taken over.
            exc.outcome = "unknown"
            exc.code = grpc.StatusCode.UNKNOWN
            exc.args = (f"outcome unknown: {exc.args[0]}; {self.plan.destination_name} may "
                        f"hold this replica's state, so this replica stays fenced "
                        f"(restart it, or check the data-master's configuration)",)
            self._log.error("migration_outcome_unknown", problem=str(exc))
            self.replica.fence("unknown")
            return
        if self.core is not None:
            with self.core.image.lock:
                self.core.abandon()
        if paused:
            self.replica.resume()
        self._log.warning("migration_aborted", destination=self.plan.destination_name,
                          problem=str(exc), effect="this replica serves on as before")
