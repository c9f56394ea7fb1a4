"""The migration driver: runs the sans-I/O strategies over a Transfer stream between vms.

`Outgoing` runs on the source, in a thread of its own: it opens
`Migration/Transfer` to the destination, feeds the `SourceMigration` state
machine the clock, sleeps until each chunk's `not_before` (the rate limit),
pauses and fences the local vm when told, and turns every failure before the
destination's commit into a clean abort (the vm resumes here). `Incoming` is
the destination's side of the same stream, inside the Transfer handler.

The commit is the switch-over: the source, paused, sends `commit`; the
destination takes over and answers `committed`; only then is the source
fenced. A stream that breaks after `commit` was sent and before `committed`
came leaves the outcome unknown: the source then stays paused (never two
owners) and says so.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from nodes.common.stream import OutboundStream
from nodes.rpc import vm_pb2
from nodes.vm.guest import GuestLayout
from nodes.vm.keyimage import SLOTS, VERSION_UNIT
from nodes.vm.machine import GUESTS, KV_GUEST, PAGE_GUEST, GuestSettings, VirtualMachine, VmRefused
from nodes.vm.memory import PAGE_SIZE, PageError
from nodes.vm.strategies import (
    Commit,
    Done,
    Pause,
    PreCopyLimits,
    Send,
    SourceMigration,
    Strategy,
)

MAX_CHUNK_PAGES = 256
POST_COPY_NEEDS_PAGES = ("a kv guest moves by pre-copy or stop-and-copy: post-copy would "
                         "serve keys that have not arrived as absent")
ACCEPT_SECONDS = 5.0
COMMIT_SECONDS = 10.0
_END = object()


class MigrationFailed(Exception):
    """The migration did not happen (or its end is unknown); `code` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class MigrationPlan:
    destination: str
    strategy: Strategy
    limits: PreCopyLimits
    chunk_pages: int
    timeout: float


def result_message(core: SourceMigration, plan: MigrationPlan, downtime: float,
                   total: float, guest_step: int, guest: str) -> vm_pb2.MigrationResult:
    return vm_pb2.MigrationResult(
        strategy=plan.strategy.value, destination=plan.destination,
        downtime_seconds=downtime, total_seconds=total, bytes_sent=core.bytes_sent,
        image_bytes=core.image.size_bytes, stop_reason=core.stop_reason, guest_step=guest_step,
        guest=guest,
        rounds=[vm_pb2.RoundReport(number=r.number, live=r.live, rate=r.rate,
                                   pages_sent=r.pages_sent, pages_skipped=r.pages_skipped,
                                   pages_dirtied=r.pages_dirtied, seconds=r.seconds,
                                   bytes_sent=r.bytes_sent)
                for r in core.rounds])


class Outgoing:
    """One migration of `vm` to `plan.destination` over `transfer` (a Transfer stub method)."""

    def __init__(self, vm: VirtualMachine, node: str, plan: MigrationPlan,
                 transfer: Callable[..., Iterator], log) -> None:
        self.vm = vm
        self.node = node
        self.plan = plan
        self._transfer = transfer
        self._log = log
        self._stream = OutboundStream(MigrationFailed, plan.destination)
        self._lock = threading.Lock()  # the core is used by this thread and status readers
        self.core: SourceMigration | None = None
        self.phase = "starting"
        # Set at each change of phase, so a progress stream reports a pause or a commit
        # at once rather than at its next tick (the hypervisor steers the switch by them).
        self.phase_changed = threading.Event()
        self.result: vm_pb2.MigrationResult | None = None
        self.error: MigrationFailed | None = None
        self.finished = threading.Event()
        self._complete = False  # the destination has every page

    # -- status, from any thread ---------------------------------------------------
    def progress(self) -> vm_pb2.MigrationProgress:
        with self._lock:
            core = self.core
            if core is None:
                return vm_pb2.MigrationProgress(phase=self.phase)
            return vm_pb2.MigrationProgress(
                phase=self.phase, round=core.round_number, pages_left=core.pages_left(),
                pages_sent=core.pages_sent, dirty_pages_per_second=core.dirty_rate(),
                bytes_per_second=core.transfer_rate(time.monotonic()), result=self.result)

    # -- the migration ---------------------------------------------------------------
    def run(self, on_end: Callable[[Outgoing], None] = lambda migration: None) -> None:
        """Migrate; `on_end` runs before `finished` is set, so whoever waits sees its work."""
        try:
            self.result = self._migrate()
            self._enter("done")
        except MigrationFailed as exc:
            self.error = exc
            self._enter("failed")
        finally:
            self._stream.close()
            try:
                on_end(self)
            finally:
                self.finished.set()
                self.phase_changed.set()

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_changed.set()

    def _send(self, message: vm_pb2.TransferMessage) -> None:
        self._stream.send(message, self._check_events)

    def _check_events(self, wait: float = 0.0,
                      until: tuple[str, ...] = ()) -> vm_pb2.TransferReply | None:
        """Handle what the destination said (page faults go to the core); return the first
        reply whose kind is in `until`, or None once `wait` has passed."""
        deadline = time.monotonic() + wait
        while True:
            event = self._stream.next_event(deadline - time.monotonic())
            if event is None:
                return None
            kind = event.WhichOneof("body")
            if kind == "fault":
                try:
                    with self._lock:
                        self.core.fault(list(event.fault.index))
                except PageError as exc:
                    raise MigrationFailed(grpc.StatusCode.INTERNAL,
                                          f"the destination faulted on a bad page: {exc}") from None
            elif kind == "complete":
                self._complete = True
            if kind not in until and kind not in ("fault", "complete"):
                raise MigrationFailed(grpc.StatusCode.INTERNAL,
                                      f"the destination said {kind} out of turn")
            if kind in until:
                return event

    def _migrate(self) -> vm_pb2.MigrationResult:
        plan, vm = self.plan, self.vm
        started = time.monotonic()
        replies = self._stream.open(self._transfer, plan.timeout)
        begin = begin_message(vm, self.node, plan.strategy)
        try:
            self._send(vm_pb2.TransferMessage(begin=begin))
            accepted = self._check_events(ACCEPT_SECONDS, until=("accepted",))
            if accepted is None:
                raise MigrationFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"destination {plan.destination} did not accept within "
                                      f"{ACCEPT_SECONDS} s")
        except MigrationFailed:
            vm.resume()  # nothing was sent yet: the vm never stopped running here
            replies.cancel()
            raise
        self._log.info("migration_accepted", destination=plan.destination,
                       destination_node=accepted.accepted, strategy=plan.strategy.value)
        with self._lock:
            self.core = SourceMigration(vm.image, plan.strategy, now=time.monotonic(),
                                        limits=plan.limits, chunk_pages=plan.chunk_pages)
        self._enter("live")
        paused_at = None
        commit_sent = False
        committed = False
        downtime = 0.0
        guest_step = 0
        try:
            while True:
                self._check_events()
                with self._lock:
                    step = self.core.next_step(time.monotonic())
                if isinstance(step, Send):
                    self._stream.wait_until(step.not_before, self._check_events)
                    self._send(vm_pb2.TransferMessage(pages=pages_message(
                        step, sized=vm.image.sparse)))
                elif isinstance(step, Pause):
                    vm.pause()
                    paused_at = time.monotonic()
                    self._enter("paused")
                    self._log.info("migration_paused", round=self.core.round_number)
                elif isinstance(step, Commit):
                    guest_step = vm.guest_step
                    self._send(vm_pb2.TransferMessage(
                        commit=vm_pb2.TransferCommit(guest_step=guest_step)))
                    commit_sent = True
                    if self._check_events(COMMIT_SECONDS, until=("committed",)) is None:
                        raise MigrationFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                                              f"no commit answer within {COMMIT_SECONDS} s")
                    vm.fence()
                    committed = True
                    downtime = time.monotonic() - paused_at
                    self._log.info("migration_committed", destination=plan.destination,
                                   downtime_seconds=round(downtime, 6))
                    if plan.strategy is not Strategy.POST_COPY:
                        break
                    self._enter("committed")
                elif isinstance(step, Done):  # post-copy: every page pushed, faults may come
                    if self._complete:
                        break
                    self._check_events(0.5, until=("complete", "fault"))
        except MigrationFailed as exc:
            self._abort(exc, commit_sent, committed)
            raise
        except Exception as exc:  # a bug here must still leave the vm running somewhere
            failure = MigrationFailed(grpc.StatusCode.INTERNAL,
                                      f"the migration driver failed: {type(exc).__name__}")
            self._log.error("migration_driver_failed", problem=repr(exc))
            self._abort(failure, commit_sent, committed)
            raise failure from exc
        total = time.monotonic() - started
        with self._lock:
            result = result_message(self.core, plan, downtime, total, guest_step,
                                    vm.guest.kind)
        self._log.info("migration_done", destination=plan.destination,
                       strategy=plan.strategy.value, downtime_seconds=round(downtime, 6),
                       total_seconds=round(total, 3), bytes_sent=result.bytes_sent,
                       rounds=len(result.rounds), stop_reason=result.stop_reason)
        return result

    def _abort(self, exc: MigrationFailed, commit_sent: bool, committed: bool) -> None:
        self._stream.cancel()
        if committed:  # post-copy: the destination runs, without the pages still here
            self._log.error("migration_push_failed", problem=str(exc))
            exc.args = (f"the vm runs at {self.plan.destination} but its pages could not all "
                        f"be pushed: {exc}",)
            return
        if commit_sent:  # never two owners: stay paused, say what is not known
            self._log.error("migration_outcome_unknown", problem=str(exc))
            exc.code = grpc.StatusCode.UNKNOWN
            exc.args = (f"commit sent, no answer ({exc}): the vm may run at "
                        f"{self.plan.destination}; this source stays paused",)
            return
        with self._lock:
            self.core.abandon()
        self.vm.resume()
        self._log.warning("migration_aborted", destination=self.plan.destination,
                          problem=str(exc), effect="the vm runs here as before")


def begin_message(vm: VirtualMachine, node: str, strategy: Strategy) -> vm_pb2.TransferBegin:
    """What the destination needs before any page: the image's shape and the guest."""
    guest = vm.guest
    begin = vm_pb2.TransferBegin(
        migration_id=uuid.uuid4().hex, strategy=strategy.value, pages=vm.image.pages,
        source_node=node, source_instance=vm.instance, guest=guest.kind)
    if guest.kind == PAGE_GUEST:
        layout = guest.layout
        begin.MergeFrom(vm_pb2.TransferBegin(
            page_size=PAGE_SIZE, kv_pages=layout.kv_pages, hot_pages=layout.hot_pages,
            hot_fraction=layout.hot_fraction, seed=layout.seed,
            dirty_pages_per_second=guest.dirty_rate, guest_steps=guest.steps))
    return begin


def pages_message(step: Send, *, sized: bool) -> vm_pb2.TransferPages:
    """One chunk; units of varying size (a kv guest's slots) carry their sizes."""
    message = vm_pb2.TransferPages(round=step.round, index=[page for page, _ in step.pages],
                                   data=b"".join(data for _, data in step.pages))
    if sized:
        message.sizes.extend(len(data) for _, data in step.pages)
    return message


def guest_settings(begin: vm_pb2.TransferBegin) -> GuestSettings:
    """The guest the source runs, as the destination must go on running it."""
    kind = begin.guest or PAGE_GUEST
    if kind not in GUESTS:
        raise VmRefused("INVALID_ARGUMENT", f"guest {kind[:40]!r} is not one of "
                        f"{', '.join(GUESTS)}")
    if kind == KV_GUEST:
        if begin.pages != SLOTS + 1:
            raise VmRefused("INVALID_ARGUMENT", f"a kv guest moves as {SLOTS + 1} units, "
                            f"not {begin.pages}")
        return GuestSettings.kv()
    if begin.page_size != PAGE_SIZE:
        raise VmRefused("INVALID_ARGUMENT", f"page_size must be {PAGE_SIZE}")
    try:
        layout = GuestLayout(pages=begin.pages, kv_pages=begin.kv_pages,
                             hot_pages=begin.hot_pages, hot_fraction=begin.hot_fraction,
                             seed=begin.seed)
    except ValueError as exc:
        raise VmRefused("INVALID_ARGUMENT", f"bad guest layout: {exc}") from None
    if not 0 <= begin.dirty_pages_per_second < math.inf:
        raise VmRefused("INVALID_ARGUMENT", "dirty_pages_per_second must be a number >= 0")
    return GuestSettings(layout, begin.dirty_pages_per_second, begin.guest_steps)


class Incoming:
    """The destination's side of one Transfer stream; `replies()` is the handler's answer."""

    def __init__(self, vm: VirtualMachine, node: str, max_pages: int, log) -> None:
        self.vm = vm
        self.node = node
        self.max_pages = max_pages
        self._log = log
        self._replies: queue.Queue = queue.Queue()

    def accept(self, begin: vm_pb2.TransferBegin) -> Strategy:
        if begin.source_instance == self.vm.instance:
            raise VmRefused("INVALID_ARGUMENT", f"a vm cannot migrate to itself ({self.node})")
        if not 0 < begin.pages <= self.max_pages:
            raise VmRefused("RESOURCE_EXHAUSTED", f"an image of {begin.pages} pages does not "
                            f"fit here (at most {self.max_pages})")
        try:
            strategy = Strategy.named(begin.strategy)
        except ValueError as exc:
            raise VmRefused("INVALID_ARGUMENT", str(exc)) from None
        guest = guest_settings(begin)
        if guest.kind == KV_GUEST and strategy is Strategy.POST_COPY:
            raise VmRefused("INVALID_ARGUMENT", POST_COPY_NEEDS_PAGES)
        self.vm.begin_incoming(strategy, guest)
        self.vm.fault_sink = lambda pages: self._replies.put(
            vm_pb2.TransferReply(fault=vm_pb2.PageFault(index=pages)))
        return strategy

    def consume(self, requests: Iterator[vm_pb2.TransferMessage]) -> None:
        """Read the rest of the stream (in a thread of its own)."""
        problem = "the source ended the transfer"
        try:
            for message in requests:
                kind = message.WhichOneof("body")
                if kind == "pages":
                    pages = self._pages(message.pages)
                    if self.vm.receive(pages) and self.vm.incoming.committed:
                        self._replies.put(vm_pb2.TransferReply(complete=True))
                        problem = ""
                elif kind == "commit":
                    self.vm.commit_incoming(message.commit.guest_step)
                    self._log.info("migration_took_over", guest_step=message.commit.guest_step,
                                   pages_missing=self.vm.pages_missing())
                    self._replies.put(vm_pb2.TransferReply(committed=True))
                    if self.vm.incoming.complete:
                        self._replies.put(vm_pb2.TransferReply(complete=True))
                        problem = ""
                else:
                    raise VmRefused("INVALID_ARGUMENT", f"unexpected {kind} in a transfer")
        except VmRefused as exc:
            problem = str(exc)
            self._replies.put(exc)
        except PageError as exc:  # a unit whose contents do not install
            problem = str(exc)
            self._replies.put(VmRefused("INVALID_ARGUMENT", problem))
        except grpc.RpcError:  # the server-side error carries no status
            problem = "the source's stream broke (cancelled, or the source went away)"
        finally:
            self.vm.end_incoming(problem)
            self._replies.put(_END)
            if problem:
                self._log.warning("migration_incoming_ended", problem=problem,
                                  state=self.vm.state)

    def _pages(self, message: vm_pb2.TransferPages) -> list[tuple[int, bytes]]:
        count = len(message.index)
        if not 0 < count <= MAX_CHUNK_PAGES:
            raise VmRefused("INVALID_ARGUMENT", f"a chunk holds 1-{MAX_CHUNK_PAGES} pages")
        if self.vm.image.sparse:
            return self._units(message)
        if message.sizes:
            raise VmRefused("INVALID_ARGUMENT", "pages have no sizes: each is a page")
        if len(message.data) != count * PAGE_SIZE:
            raise VmRefused("INVALID_ARGUMENT", f"{count} pages need {count * PAGE_SIZE} bytes "
                            f"of data, got {len(message.data)}")
        if max(message.index) >= self.vm.image.pages:
            raise VmRefused("INVALID_ARGUMENT", f"page {max(message.index)} is outside the "
                            f"image ({self.vm.image.pages} pages)")
        data = message.data
        return [(page, data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
                for i, page in enumerate(message.index)]

    def _units(self, message: vm_pb2.TransferPages) -> list[tuple[int, bytes]]:
        """A kv guest's slots, each of its own size (what one holds is checked as it is
        installed: nodes.vm.keyimage)."""
        sizes, data = message.sizes, message.data
        if len(sizes) != len(message.index):
            raise VmRefused("INVALID_ARGUMENT", f"{len(message.index)} units need as many "
                            f"sizes, got {len(sizes)}")
        if sum(sizes) != len(data):
            raise VmRefused("INVALID_ARGUMENT", f"the sizes add up to {sum(sizes)} bytes, the "
                            f"data is {len(data)}")
        if max(message.index) > VERSION_UNIT:
            raise VmRefused("INVALID_ARGUMENT", f"unit {max(message.index)} is outside a kv "
                            f"guest ({VERSION_UNIT + 1} units)")
        units, start = [], 0
        for unit, size in zip(message.index, sizes, strict=True):
            units.append((unit, data[start:start + size]))
            start += size
        return units

    def replies(self) -> Iterator[vm_pb2.TransferReply | VmRefused]:
        yield vm_pb2.TransferReply(accepted=self.node)
        while True:
            item = self._replies.get()
            if item is _END:
                return
            yield item
