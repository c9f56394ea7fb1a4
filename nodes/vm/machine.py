"""One vm's run-time state: who owns the image, the guest thread, and access with page faults.

`VirtualMachine` is what the gRPC adapters (nodes.vm.service) and the
migration driver (nodes.vm.transfer) share. Its states:

    incoming --begin--> receiving --commit--> running <--> migrating --commit--> moved
        ^                   |                    ^            |
        +-----abandon-------+                    +--resume----+  (paused in between)

Every guest step and client call runs under one condition lock (`cpu`), so
`pause` returns only when none is in flight and later ones wait (at most
VM_HOLD_SECONDS) until the vm resumes here or has moved, when they are
refused, not applied. After a post-copy commit an access to a page that has
not arrived asks the source for it (`fault_sink`) and waits for it; pages are
installed under the same lock, so a late push never overwrites a page the
destination has written.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from nodes.vm.guest import GuestLayout, PageKV
from nodes.vm.keyimage import KeyImage
from nodes.vm.memory import MemoryImage
from nodes.vm.strategies import DestinationMigration, Image, Strategy

PAGE_GUEST, KV_GUEST = "pages", "kv"
GUESTS = (PAGE_GUEST, KV_GUEST)


class VmRefused(Exception):
    """A call the vm cannot serve now; `code` names the gRPC status for it."""

    def __init__(self, code: str, message: str, *, moved_to: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.moved_to = moved_to  # set when the call was refused because the vm moved there


@dataclass(frozen=True)
class GuestSettings:
    """What a vm runs: a memory image and its guest workload (`pages`), or the kv role's
    store (`kv`: no layout, no guest steps; clients are its workload)."""

    layout: GuestLayout | None
    dirty_rate: float  # guest steps (page writes) per second
    steps: int  # stop after this many steps; 0: never
    kind: str = PAGE_GUEST

    @classmethod
    def kv(cls) -> GuestSettings:
        return cls(None, 0.0, 0, KV_GUEST)

    def new_image(self) -> Image:
        return KeyImage() if self.kind == KV_GUEST else MemoryImage(self.layout.pages)


class VirtualMachine:
    def __init__(self, *, guest: GuestSettings | None, hold_seconds: float,
                 fault_timeout: float, on_event: Callable[..., None] = lambda *a, **k: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cpu = threading.Condition(threading.RLock())
        self.instance = uuid.uuid4().hex  # this process, as a migration's two ends see it
        self.hold_seconds = hold_seconds
        self.fault_timeout = fault_timeout
        self._event = on_event
        self._clock = clock
        self.guest = guest
        self.image: Image | None = guest.new_image() if guest else None
        self.state = "running" if guest else "incoming"
        self.guest_step = 0
        self.moved_to = ""
        self.dropped = ""  # why the last transfer into this process broke off
        self.incoming: DestinationMigration | None = None
        self.fault_sink: Callable[[list[int]], None] | None = None
        self.source_lost = ""  # post-copy: why pages that have not arrived never will
        self._requested: set[int] = set()
        self._stopping = False
        self._guest_thread: threading.Thread | None = None

    # -- the guest -------------------------------------------------------------------
    def start_guest(self) -> None:
        if self.guest is None or self.guest.kind != PAGE_GUEST or self._guest_thread is not None:
            return
        self._guest_thread = threading.Thread(target=self._run_guest, name="guest", daemon=True)
        self._guest_thread.start()

    def stop(self) -> None:
        with self.cpu:
            self._stopping = True
            self.cpu.notify_all()
        if self._guest_thread is not None:
            self._guest_thread.join(timeout=5)

    def _runs_here(self) -> bool:
        return self.state in ("running", "migrating")

    def _run_guest(self) -> None:
        guest = self.guest
        last = self._clock()
        credit = 0.0
        while True:
            with self.cpu:
                while not self._stopping and not self._runs_here():
                    self.cpu.wait(0.5)
                    last = self._clock()  # no burst of steps after a pause
                if self._stopping:
                    return
                if guest.steps and self.guest_step >= guest.steps:
                    self.cpu.wait(0.5)
                    continue
                now = self._clock()
                credit = min(credit + (now - last) * guest.dirty_rate, guest.dirty_rate)
                last = now
                batch = int(credit)
                if guest.steps:
                    batch = min(batch, guest.steps - self.guest_step)
                try:
                    for _ in range(batch):
                        page, offset, data = guest.layout.step(self.guest_step)
                        self.write(page, offset, data)
                        self.guest_step += 1
                        credit -= 1
                except VmRefused as exc:  # post-copy: the source went away
                    self._event("guest_stopped", problem=str(exc))
                    self.state = "lost"
                    self.cpu.notify_all()
                    return
            time.sleep(0.005)

    # -- client calls ----------------------------------------------------------------
    def call(self, operation: Callable[[VirtualMachine], object]) -> object:
        """Run a client operation here, holding it while the vm is paused."""
        with self.cpu:
            deadline = self._clock() + self.hold_seconds
            while self.state == "paused":
                left = deadline - self._clock()
                if left <= 0:
                    raise VmRefused("UNAVAILABLE", "not applied: the vm is paused for a "
                                    f"migration for more than {self.hold_seconds} s")
                self.cpu.wait(left)
            if self.state == "moved":
                raise VmRefused("UNAVAILABLE", f"not applied: this vm has moved to "
                                f"{self.moved_to}", moved_to=self.moved_to)
            if self.state in ("incoming", "receiving"):
                raise VmRefused("UNAVAILABLE", "not applied: no vm here yet, this process "
                                "waits for an incoming migration")
            if self.state == "lost":
                raise VmRefused("UNAVAILABLE", f"not applied: this vm lost pages its source "
                                f"never sent ({self.source_lost})")
            return operation(self)

    def kv(self) -> PageKV:
        return PageKV(self, self._pages().kv_pages)

    def store(self) -> KeyImage | None:
        """A kv guest's store; None for a vm of pages."""
        return self.image if self.guest.kind == KV_GUEST else None

    def _pages(self) -> GuestLayout:
        if self.guest.kind != PAGE_GUEST:
            raise VmRefused("FAILED_PRECONDITION", f"this vm runs a {self.guest.kind} guest: "
                            "it has no pages to read or write (its data plane is distlab.kv.KV)")
        return self.guest.layout

    # The Memory protocol (nodes.vm.guest), with post-copy faults in front.
    def read(self, page: int, offset: int, length: int) -> bytes:
        self._pages()
        self._ensure(page)
        return self.image.read(page, offset, length)

    def write(self, page: int, offset: int, data: bytes) -> None:
        self._pages()
        self._ensure(page)
        self.image.write(page, offset, data)

    def _ensure(self, page: int) -> None:
        """Wait until `page` is here (post-copy); the caller holds `cpu`."""
        incoming = self.incoming
        if incoming is None or incoming.complete:
            return
        self.image.check_page(page)
        deadline = self._clock() + self.fault_timeout
        while not incoming.present(page):
            if self.source_lost:
                raise VmRefused("UNAVAILABLE", f"page {page} never arrived: {self.source_lost}")
            if page not in self._requested and self.fault_sink is not None:
                self._requested.add(page)
                self.fault_sink([page])
            left = deadline - self._clock()
            if left <= 0:
                raise VmRefused("UNAVAILABLE", f"page {page} did not arrive within "
                                f"{self.fault_timeout} s")
            self.cpu.wait(left)

    # -- as a migration's source -----------------------------------------------------
    def begin_outgoing(self, destination: str) -> None:
        with self.cpu:
            if self.state == "migrating":
                raise VmRefused("FAILED_PRECONDITION",
                                f"a migration to {self.moved_to} is already running")
            if self.state != "running":
                raise VmRefused("FAILED_PRECONDITION",
                                f"this vm is {self.state}, only a running vm can migrate")
            self.state = "migrating"
            self.moved_to = destination

    def pause(self) -> None:
        with self.cpu:
            self.state = "paused"

    def resume(self) -> None:
        """The migration failed before the destination took over: run here again."""
        with self.cpu:
            self.state = "running"
            self.moved_to = ""
            self.cpu.notify_all()

    def fence(self) -> None:
        """The destination owns the vm: refuse every call from now on."""
        with self.cpu:
            self.state = "moved"
            self.cpu.notify_all()

    # -- as a migration's destination ------------------------------------------------
    def begin_incoming(self, strategy: Strategy, guest: GuestSettings) -> None:
        with self.cpu:
            if self.state == "receiving":
                raise VmRefused("FAILED_PRECONDITION", "a migration into this process is "
                                "already running")
            if self.state != "incoming":
                raise VmRefused("FAILED_PRECONDITION", f"this process already holds a vm "
                                f"({self.state}); start a vm with VM_INCOMING to receive one")
            self.guest = guest
            self.image = guest.new_image()
            self.incoming = DestinationMigration(self.image, strategy)
            self.state = "receiving"
            self._requested = set()
            self.source_lost = ""

    def receive(self, pages) -> bool:
        """Install arrived pages; True once every page has come."""
        with self.cpu:
            arrived = self.incoming.receive(pages)
            if arrived:
                self._requested.difference_update(arrived)
                self.cpu.notify_all()
            return self.incoming.complete

    def commit_incoming(self, guest_step: int) -> None:
        with self.cpu:
            problem = self.incoming.can_commit()
            if problem:
                raise VmRefused("FAILED_PRECONDITION", f"cannot take over: {problem}")
            self.incoming.commit()
            self.guest_step = guest_step
            self.state = "running"
            self.cpu.notify_all()
        self.start_guest()

    def end_incoming(self, problem: str) -> None:
        """The source's stream ended: drop a half-received vm, or note pages that never came."""
        with self.cpu:
            if self.state == "receiving":
                self.state = "incoming"
                self.image = None
                self.incoming = None
                self.guest = None
                self.dropped = problem or "the source ended the transfer"
            elif self.incoming is not None and not self.incoming.complete:
                self.source_lost = problem or "the source went away"
            self.fault_sink = None
            self.cpu.notify_all()

    def pages_missing(self) -> int:
        incoming = self.incoming
        return incoming.missing if incoming is not None and incoming.committed else 0
