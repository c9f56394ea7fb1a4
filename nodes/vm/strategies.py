"""Live-migration algorithms as sans-I/O state machines: what to send next, and when to stop.

The sender (`SourceMigration`) reads pages from a `MemoryImage` and answers
`next_step(now)` with what its driver must do: `Send` these pages (not before
a time, which is how the rate limit is kept), `Pause` the guest, `Commit`
(hand ownership to the destination), or `Done`. The receiver
(`DestinationMigration`) installs what arrives and says when it may commit.
Neither does I/O nor reads a clock: the driver (nodes.vm.transfer) passes
`now`, so tests drive them with any interleaving of guest writes and time.

The three strategies:
- stop-and-copy: pause, send every page, commit.
- pre-copy (Clark et al., NSDI 2005, with Xen's stop conditions): round 1
  sends every page while the guest runs; each later round sends the pages
  dirtied during the one before. A page already dirty again when its turn
  comes is skipped (it goes in the next round anyway). After a round ends,
  pre-copy stops when that round handled fewer than `few_pages` pages, when
  it was round `max_rounds`, when more than `max_factor` x the image has been
  sent, or when the round sent more than the one before at full rate (the
  guest dirties faster than the link drains); then the guest is paused and
  the pages dirty at that moment go in one stop-and-copy round. Clark's rate
  limit adapts per round: round 1 at `min_rate`, each later round at the
  previous round's dirtying rate plus `rate_increment`, at most `max_rate`;
  the final round goes at `max_rate`.
- post-copy (Hines & Gopalan, VEE 2009): pause, commit at once (the
  destination resumes without pages), then push every page in the background
  while pages the destination faults on (`fault`) go first.

What moves is an `Image`: numbered units with dirty tracking. A vm's memory
(nodes.vm.memory) is pages of 4 KiB; a kv guest's store (nodes.vm.keyimage)
is hash slots of keys, whose sizes vary and of which an empty one is never
sent (`sparse`). Rates, the sent factor and the chunk limit count bytes, so
both move by the same rounds and stop conditions.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from nodes.vm.memory import DirtyBitmap


class Strategy(enum.Enum):
    STOP_AND_COPY = "stop-and-copy"
    PRE_COPY = "pre-copy"
    POST_COPY = "post-copy"

    @classmethod
    def named(cls, name: str) -> Strategy:
        for strategy in cls:
            if strategy.value == name:
                return strategy
        raise ValueError(f"strategy {name!r} is not one of "
                         f"{', '.join(s.value for s in cls)}")


MIB = 1024 * 1024
CHUNK_BYTES = 1024 * 1024  # at most this much data in one Send (and one gRPC message)


class Image(Protocol):
    """What a migration reads at the source and installs at the destination."""

    pages: int  # the number of units
    dirty: DirtyBitmap
    tracking: bool
    sparse: bool  # True: a unit never sent is empty at both ends (never "missing")

    @property
    def size_bytes(self) -> int: ...

    def units(self) -> list[int] | range: ...  # what a full round sends

    def check_page(self, page: int) -> None: ...

    def page(self, page: int) -> bytes: ...

    def install(self, page: int, data: bytes) -> None: ...

    def start_tracking(self) -> None: ...

    def stop_tracking(self) -> None: ...

    def take_dirty(self) -> list[int]: ...


@dataclass(frozen=True)
class PreCopyLimits:
    """Rates in bytes per second; 0 as `max_rate` means unlimited."""

    min_rate: float = 32 * MIB
    max_rate: float = 256 * MIB
    rate_increment: float = 16 * MIB
    max_rounds: int = 29
    few_pages: int = 50
    max_factor: float = 3.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.min_rate, self.max_rate,
                                               self.rate_increment, self.max_factor)):
            raise ValueError("rates and max_factor must be finite numbers")
        if self.min_rate <= 0 or self.rate_increment < 0 or self.max_rate < 0:
            raise ValueError("rates must be > 0 (max_rate: >= 0, 0 meaning unlimited)")
        if self.max_rate and self.max_rate < self.min_rate:
            raise ValueError("max_rate must be at least min_rate")
        if self.max_rounds < 1 or self.few_pages < 0 or self.max_factor <= 0:
            raise ValueError("max_rounds >= 1, few_pages >= 0 and max_factor > 0")


# What the driver must do next.
@dataclass(frozen=True)
class Send:
    round: int
    pages: tuple[tuple[int, bytes], ...]
    live: bool  # False: the guest is paused (a stop-and-copy round, or post-copy's push)
    not_before: float  # the rate limit: send at or after this time


@dataclass(frozen=True)
class Pause:
    """Stop the guest and hold client writes, then ask for the next step."""


@dataclass(frozen=True)
class Commit:
    """Everything the destination needs to resume has been sent: hand over ownership."""


@dataclass(frozen=True)
class Done:
    """Nothing left to send."""


Step = Send | Pause | Commit | Done


@dataclass
class RoundStats:
    """One round, as Clark's per-round bars show it."""

    number: int
    live: bool
    rate: float  # the limit this round ran under, bytes/s (0: unlimited)
    pages_planned: int
    pages_sent: int = 0
    pages_skipped: int = 0
    pages_dirtied: int = 0  # dirty when the round ended: the next round's work
    bytes_sent: int = 0
    started: float = 0.0
    ended: float | None = None

    @property
    def seconds(self) -> float:
        return (self.ended or self.started) - self.started


@dataclass
class _Round:
    stats: RoundStats
    queue: deque = field(default_factory=deque)
    bytes_sent: int = 0


class SourceMigration:
    """The sending side of one migration of `image` (see the module docstring)."""

    def __init__(self, image: Image, strategy: Strategy, *, now: float,
                 limits: PreCopyLimits | None = None, chunk_pages: int = 64) -> None:
        if chunk_pages < 1:
            raise ValueError("chunk_pages must be >= 1")
        if image.sparse and strategy is Strategy.POST_COPY:
            raise ValueError("post-copy needs an image of pages: a destination cannot tell "
                             "a unit that has not come from an empty one")
        self.image = image
        self.strategy = strategy
        self.limits = limits or PreCopyLimits()
        self.chunk_pages = chunk_pages
        self.started = now
        self.rounds: list[RoundStats] = []
        self.pages_sent = 0
        self.bytes_sent = 0
        self.paused_at: float | None = None
        self.committed = False
        #: Why pre-copy stopped ("few-pages", "round-limit", "sent-factor", "not-converging").
        self.stop_reason = ""
        self._round: _Round | None = None
        self._faults: deque[int] = deque()
        self._state = "start"
        if strategy is Strategy.PRE_COPY:
            image.start_tracking()
            self._begin_round(image.units(), live=True, rate=self.limits.min_rate, now=now)
            self._state = "live"

    # -- what the driver reads -------------------------------------------------------
    @property
    def image_factor(self) -> float:
        """Bytes sent / image size: Clark's 1.2-1.4 for pre-copy, 1.0 for stop-and-copy."""
        return self.bytes_sent / max(1, self.image.size_bytes)

    @property
    def round_number(self) -> int:
        return self.rounds[-1].number if self.rounds else 0

    def pages_left(self) -> int:
        queued = len(self._round.queue) if self._round else 0
        dirty = self.image.dirty.count() if self.image.tracking else 0
        return queued + dirty + len(self._faults)

    def dirty_rate(self) -> float:
        """Pages dirtied per second during the last finished live round."""
        for stats in reversed(self.rounds):
            if stats.live and stats.ended is not None and stats.seconds > 0:
                return stats.pages_dirtied / stats.seconds
        return 0.0

    def transfer_rate(self, now: float) -> float:
        """Bytes per second sent so far."""
        elapsed = now - self.started
        return self.bytes_sent / elapsed if elapsed > 0 else 0.0

    # -- what the driver tells it ----------------------------------------------------
    def fault(self, pages: list[int]) -> None:
        """Post-copy: the destination touched these absent pages; send them first."""
        for page in pages:
            self.image.check_page(page)
        self._faults.extend(pages)

    def next_step(self, now: float) -> Step:
        state = self._state
        if state == "start":  # stop-and-copy and post-copy begin by pausing
            self._state = "paused"
            return Pause()
        if state == "paused":
            self.paused_at = now
            if self.strategy is Strategy.POST_COPY:  # the push shares the link: max_rate
                self._begin_round(self.image.units(), live=False,
                                  rate=self.limits.max_rate, now=now)
                self._state = "push"
                self.committed = True
                return Commit()
            self._begin_round(self.image.units(), live=False, rate=self.limits.max_rate,
                              now=now)
            self._state = "final"
            return self.next_step(now)
        if state == "live":
            return self._live_step(now)
        if state == "stopping":
            self.paused_at = now
            dirty = self.image.take_dirty()
            self.image.stop_tracking()
            self._begin_round(dirty, live=False, rate=self.limits.max_rate, now=now)
            self._state = "final"
            return self.next_step(now)
        if state == "final":
            send = self._send(now, skip_dirty=False)
            if send is not None:
                return send
            self._end_round(now, dirtied=0)
            self._state = "committing"
            self.committed = True
            return Commit()
        if state == "push":
            send = self._send(now, skip_dirty=False)
            if send is not None:
                return send
            if self._round.stats.ended is None:
                self._end_round(now, dirtied=0)
            return Done()
        return Done()  # committing: nothing more to send

    # -- inside ----------------------------------------------------------------------
    def _begin_round(self, pages, *, live: bool, rate: float, now: float) -> None:
        queue = deque(pages)
        stats = RoundStats(number=len(self.rounds) + 1, live=live, rate=rate,
                           pages_planned=len(queue), started=now)
        self.rounds.append(stats)
        self._round = _Round(stats, queue)

    def _end_round(self, now: float, dirtied: int) -> None:
        stats = self._round.stats
        stats.ended = now
        stats.pages_dirtied = dirtied

    def _send(self, now: float, *, skip_dirty: bool) -> Send | None:
        """The next chunk of the current round (faults first), or None when it is empty."""
        current = self._round
        pages: list[tuple[int, bytes]] = []
        size = 0

        def room() -> bool:
            return len(pages) < self.chunk_pages and size < CHUNK_BYTES

        while self._faults and room():
            page = self._faults.popleft()
            pages.append((page, self.image.page(page)))
            size += len(pages[-1][1])
        while current.queue and room():
            page = current.queue.popleft()
            if skip_dirty and self.image.dirty.is_dirty(page):
                current.stats.pages_skipped += 1
                continue
            pages.append((page, self.image.page(page)))
            size += len(pages[-1][1])
        if not pages:
            return None
        rate = current.stats.rate
        not_before = (current.stats.started + current.bytes_sent / rate) if rate else now
        current.bytes_sent += size
        current.stats.bytes_sent += size
        current.stats.pages_sent += len(pages)
        self.pages_sent += len(pages)
        self.bytes_sent += size
        return Send(current.stats.number, tuple(pages), current.stats.live, not_before)

    def _live_step(self, now: float) -> Step:
        send = self._send(now, skip_dirty=True)
        if send is not None:
            return send
        finished = self._round.stats
        dirty_now = self.image.dirty.count()
        self._end_round(now, dirtied=dirty_now)
        self.stop_reason = self._stop_reason(finished)
        if self.stop_reason:
            self._state = "stopping"
            return Pause()
        dirty = self.image.take_dirty()
        seconds = finished.seconds
        # Bytes dirtied, at the image's mean unit size (a page: exact).
        unit_bytes = self.image.size_bytes / max(1, len(self.image.units()))
        dirty_rate = len(dirty) * unit_bytes / seconds if seconds > 0 else float("inf")
        rate = max(self.limits.min_rate, dirty_rate + self.limits.rate_increment)
        if self.limits.max_rate:
            rate = min(rate, self.limits.max_rate)
        self._begin_round(dirty, live=True, rate=rate, now=now)
        return self._live_step(now)

    def _stop_reason(self, finished: RoundStats) -> str:
        """Why pre-copy stops after `finished` ("": it goes on), in Xen's order."""
        limits = self.limits
        previous = self.rounds[-2] if len(self.rounds) >= 2 else None
        at_full_rate = bool(limits.max_rate) and finished.rate >= limits.max_rate
        if finished.pages_sent + finished.pages_skipped < limits.few_pages:
            return "few-pages"
        if finished.number >= limits.max_rounds:
            return "round-limit"
        if self.bytes_sent > limits.max_factor * self.image.size_bytes:
            return "sent-factor"
        if previous is not None and at_full_rate and finished.pages_sent > previous.pages_sent:
            return "not-converging"
        return ""

    def abandon(self) -> None:
        """The migration failed: stop tracking so the source runs as before."""
        self.image.stop_tracking()
        self._state = "abandoned"


class DestinationMigration:
    """The receiving side: installs pages into a fresh image, tracks which have come.

    Before commit every page is installed as it comes (later rounds carry newer
    contents, on one ordered stream). After a post-copy commit the destination
    runs and writes pages itself, so a page that is already present is never
    overwritten by a late push.
    """

    def __init__(self, image: Image, strategy: Strategy) -> None:
        self.image = image
        self.strategy = strategy
        # 1: the page has arrived at least once (a sparse image's units all count as here).
        self.received = bytearray(b"\1" * image.pages if image.sparse else image.pages)
        self.missing = 0 if image.sparse else image.pages
        self.pages_received = 0
        self.committed = False

    def receive(self, pages) -> list[int]:
        """Install (index, bytes) pairs; return the indices that were absent until now."""
        arrived = []
        for page, data in pages:
            self.image.check_page(page)
            self.pages_received += 1
            if self.received[page]:
                if self.committed:
                    continue  # post-copy: ours now, possibly written since
            else:
                self.received[page] = 1
                self.missing -= 1
                arrived.append(page)
            self.image.install(page, data)
        return arrived

    def present(self, page: int) -> bool:
        return bool(self.received[page])

    def can_commit(self) -> str | None:
        """None when the destination can take over; else why not."""
        if self.strategy is not Strategy.POST_COPY and self.missing:
            return f"{self.missing} pages have not arrived"
        return None

    def commit(self) -> None:
        problem = self.can_commit()
        if problem:
            raise ValueError(f"cannot commit: {problem}")
        self.committed = True

    @property
    def complete(self) -> bool:
        return self.missing == 0
