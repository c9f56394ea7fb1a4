"""The migration strategies as state machines: what each sends, when pre-copy stops, and
that any interleaving of guest writes with the protocol leaves the destination's image
byte-identical to the source's final one."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.vm.memory import PAGE_SIZE, MemoryImage
from nodes.vm.strategies import (
    Commit,
    DestinationMigration,
    Done,
    Pause,
    PreCopyLimits,
    Send,
    SourceMigration,
    Strategy,
)

MIB = 1024 * 1024


@dataclass
class Run:
    """A migration driven by hand: the source, the destination, a clock and who owns the vm."""

    source: SourceMigration
    destination: DestinationMigration
    reference: MemoryImage  # every write the vm acknowledged, wherever it ran
    clock: float = 0.0
    paused: bool = False
    owner: str = "source"
    finished: bool = False
    faults: int = 0
    steps: list = field(default_factory=list)

    @classmethod
    def start(cls, image: MemoryImage, strategy: Strategy, **kwargs) -> Run:
        reference = MemoryImage(image.pages)
        for page in range(image.pages):
            reference.install(page, image.page(page))
        return cls(SourceMigration(image, strategy, now=0.0, **kwargs),
                   DestinationMigration(MemoryImage(image.pages), strategy), reference)

    def step(self) -> None:
        if self.finished:
            return
        step = self.source.next_step(self.clock)
        self.steps.append(step)
        if isinstance(step, Send):
            self.clock = max(self.clock, step.not_before)
            self.destination.receive(step.pages)
        elif isinstance(step, Pause):
            self.paused = True
        elif isinstance(step, Commit):
            self.destination.commit()
            self.owner = "destination"
            self.finished = self.source.strategy is not Strategy.POST_COPY
        elif isinstance(step, Done):
            self.finished = True

    def write(self, page: int, offset: int, data: bytes) -> None:
        """A guest or client write, where the vm runs now (held while it is paused)."""
        if self.owner == "source":
            if self.paused:
                return
            self.source.image.write(page, offset, data)
        else:
            if not self.destination.present(page):
                self.source.fault([page])
                self.faults += 1
                while not self.destination.present(page):
                    self.step()
            self.destination.image.write(page, offset, data)
        self.reference.write(page, offset, data)

    def finish(self) -> None:
        for _ in range(100_000):
            if self.finished:
                return
            self.step()
        pytest.fail("the migration never finished")


def filled(pages: int) -> MemoryImage:
    image = MemoryImage(pages)
    for page in range(pages):
        image.write(page, 0, page.to_bytes(4, "big") * 4)
    return image


def test_stop_and_copy_pauses_sends_every_page_once_then_commits():
    run = Run.start(filled(100), Strategy.STOP_AND_COPY, chunk_pages=16)
    run.finish()
    assert isinstance(run.steps[0], Pause) and isinstance(run.steps[-1], Commit)
    sends = [s for s in run.steps if isinstance(s, Send)]
    assert not any(s.live for s in sends)
    assert sorted(p for s in sends for p, _ in s.pages) == list(range(100))
    assert run.source.pages_sent == 100 and run.source.image_factor == 1.0
    assert len(run.source.rounds) == 1
    assert run.destination.image.image() == run.source.image.image()


def test_pre_copy_of_an_idle_guest_sends_the_image_once_and_stops_on_few_pages():
    run = Run.start(filled(200), Strategy.PRE_COPY, chunk_pages=32)
    run.finish()
    assert run.source.stop_reason == "few-pages"
    assert [r.live for r in run.source.rounds] == [True, True, False]
    assert run.source.pages_sent == 200
    assert run.destination.image.image() == run.source.image.image()


def test_pre_copy_skips_a_page_dirtied_again_before_its_turn_and_sends_it_next_round():
    image = filled(100)
    run = Run.start(image, Strategy.PRE_COPY, chunk_pages=10)
    run.step()  # pages 0-9 sent
    run.write(50, 0, b"new")
    while run.source.round_number == 1:
        run.step()
    first = run.source.rounds[0]
    assert first.pages_skipped == 1 and first.pages_sent == 99 and first.pages_dirtied == 1
    run.finish()
    assert run.destination.image.page(50) == image.page(50)
    assert run.destination.image.image() == run.reference.image()


def test_round_one_keeps_the_minimum_rate_and_later_rounds_follow_the_dirty_rate():
    limits = PreCopyLimits(min_rate=1 * MIB, max_rate=64 * MIB, rate_increment=1 * MIB,
                           few_pages=0, max_rounds=3)
    image = filled(1024)  # 4 MiB: four seconds at the minimum rate
    run = Run.start(image, Strategy.PRE_COPY, limits=limits, chunk_pages=256)
    sends = []
    while run.source.round_number == 1:
        run.step()
        sends.append(run.steps[-1])
        if run.source.round_number == 1:
            for page in range(256):  # pages already sent: 1 MiB dirtied during round 1
                run.write(page, 8, b"d")
    assert [s.not_before for s in sends[:4]] == [0.0, 1.0, 2.0, 3.0]
    first, second = run.source.rounds[:2]
    assert first.seconds == pytest.approx(3.0)
    # 1 MiB dirtied in 3 s, plus the increment.
    assert second.rate == pytest.approx(MIB / 3 + MIB)
    run.finish()
    assert run.source.stop_reason == "round-limit"
    assert run.destination.image.image() == run.reference.image()


def test_pre_copy_stops_when_a_round_at_full_rate_sends_more_than_the_one_before():
    limits = PreCopyLimits(min_rate=MIB, max_rate=MIB, rate_increment=0, few_pages=1,
                           max_factor=100)
    # One chunk a round, so every write lands in the next round; a working set that grows.
    run = Run.start(filled(64), Strategy.PRE_COPY, limits=limits, chunk_pages=64)
    hot = 4
    while run.source.rounds[-1].live:
        run.step()
        for page in range(hot):
            run.write(page, 0, b"x%d" % run.clock)
        hot = min(hot + 2, 60)
    assert run.source.stop_reason == "not-converging"
    assert [r.pages_sent for r in run.source.rounds[:3]] == [64, 4, 6]
    run.finish()
    assert run.destination.image.image() == run.reference.image()


def test_pre_copy_stops_after_three_images_sent():
    limits = PreCopyLimits(min_rate=MIB, max_rate=0, few_pages=1, max_rounds=100)
    run = Run.start(filled(32), Strategy.PRE_COPY, limits=limits, chunk_pages=4)
    while run.source.rounds[-1].live:
        run.step()
        for page in range(32):
            run.write(page, 0, b"%f" % run.clock)
    assert run.source.stop_reason == "sent-factor"
    assert run.source.pages_sent - run.source.rounds[-1].pages_planned <= 4 * 32
    run.finish()
    assert run.destination.image.image() == run.reference.image()


def test_post_copy_commits_before_any_page_and_serves_faults_first():
    run = Run.start(filled(100), Strategy.POST_COPY, chunk_pages=10)
    run.step()
    run.step()
    assert run.owner == "destination" and run.destination.missing == 100
    run.write(77, 0, b"dest")  # faults 77 in ahead of the push order
    assert run.steps[-1].pages[0][0] == 77
    run.finish()
    assert run.destination.complete
    assert run.destination.image.page(77)[:4] == b"dest"
    assert run.source.pages_sent == 100 + 1
    assert run.destination.image.image() == run.reference.image()


def test_a_destination_commits_only_with_every_page_and_refuses_pages_outside():
    destination = DestinationMigration(MemoryImage(4), Strategy.PRE_COPY)
    destination.receive([(0, b"\0" * PAGE_SIZE), (1, b"\0" * PAGE_SIZE)])
    assert destination.can_commit() == "2 pages have not arrived"
    with pytest.raises(ValueError, match="cannot commit"):
        destination.commit()
    with pytest.raises(ValueError, match="outside"):
        destination.receive([(9, b"\0" * PAGE_SIZE)])


def test_abandoning_stops_dirty_tracking():
    image = filled(64)
    source = SourceMigration(image, Strategy.PRE_COPY, now=0.0)
    assert image.tracking
    source.abandon()
    image.write(3, 0, b"x")
    assert not image.tracking and image.take_dirty() == []


@pytest.mark.parametrize("bad", [dict(min_rate=0), dict(min_rate=10, max_rate=5),
                                 dict(max_rounds=0), dict(max_factor=0)])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValueError):
        PreCopyLimits(**bad)


def test_strategy_names():
    assert Strategy.named("pre-copy") is Strategy.PRE_COPY
    with pytest.raises(ValueError, match="stop-and-copy, pre-copy, post-copy"):
        Strategy.named("teleport")


# Any interleaving: guest writes (anywhere the vm runs), protocol steps and time passing.
operation = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 47), st.integers(0, PAGE_SIZE - 8),
              st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("step")),
    st.tuples(st.just("tick"), st.floats(0, 0.05)))


@settings(max_examples=150)
@given(strategy=st.sampled_from(list(Strategy)), operations=st.lists(operation, max_size=120),
       chunk_pages=st.integers(1, 9), few_pages=st.integers(0, 60),
       max_rounds=st.integers(1, 6), max_factor=st.floats(1.0, 4.0))
def test_any_interleaving_leaves_the_destination_identical_to_the_final_image(
        strategy, operations, chunk_pages, few_pages, max_rounds, max_factor):
    limits = PreCopyLimits(min_rate=MIB, max_rate=4 * MIB, rate_increment=MIB,
                           few_pages=few_pages, max_rounds=max_rounds, max_factor=max_factor)
    run = Run.start(filled(48), strategy, limits=limits, chunk_pages=chunk_pages)
    for op in operations:
        if op[0] == "write":
            offset = op[2] % (PAGE_SIZE - len(op[3]))
            run.write(op[1], offset, op[3])
        elif op[0] == "step":
            run.step()
        else:
            run.clock += op[1]
    run.finish()
    for op in operations[-10:]:  # the vm goes on at the destination
        if op[0] == "write":
            run.write(op[1], 0, op[3])
    source = run.source
    assert run.owner == "destination" and run.destination.complete
    assert run.destination.image.image() == run.reference.image()
    assert source.bytes_sent == source.pages_sent * PAGE_SIZE
    assert source.pages_sent == sum(r.pages_sent for r in source.rounds)
    assert all(r.ended is not None for r in source.rounds)
    if strategy is Strategy.STOP_AND_COPY:
        assert source.pages_sent == 48 and len(source.rounds) == 1
    elif strategy is Strategy.POST_COPY:
        assert source.pages_sent == 48 + run.faults and len(source.rounds) == 1
    else:
        live = [r for r in source.rounds if r.live]
        assert len(live) <= max_rounds and not source.rounds[-1].live
        assert source.stop_reason
        assert source.pages_sent <= (max_factor + 2) * 48
