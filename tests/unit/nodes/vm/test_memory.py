"""The memory image and its dirty bitmap: what a write marks, what `take` returns."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.vm.memory import PAGE_SIZE, DirtyBitmap, MemoryImage, PageError


def test_a_write_marks_its_page_only_while_tracking():
    image = MemoryImage(16)
    image.write(3, 0, b"x")
    assert image.take_dirty() == []
    image.start_tracking()
    image.write(3, 10, b"yy")
    image.write(9, PAGE_SIZE - 1, b"z")
    assert image.take_dirty() == [3, 9]
    assert image.take_dirty() == []
    assert image.read(3, 10, 2) == b"yy" and image.read(3, 0, 1) == b"x"


def test_install_never_marks_and_checks_the_size():
    image = MemoryImage(4)
    image.start_tracking()
    image.install(2, b"\1" * PAGE_SIZE)
    assert image.take_dirty() == [] and image.page(2) == b"\1" * PAGE_SIZE
    with pytest.raises(PageError, match="4096 bytes"):
        image.install(2, b"short")


@pytest.mark.parametrize("page,offset,data", [(4, 0, b"x"), (-1, 0, b"x"),
                                              (0, PAGE_SIZE - 1, b"xy"), (0, -1, b"x")])
def test_accesses_outside_the_image_are_refused_with_where(page, offset, data):
    image = MemoryImage(4)
    with pytest.raises(PageError, match="outside"):
        image.write(page, offset, data)


def test_sizes_in_mib():
    assert MemoryImage.of_mib(1).pages == 256
    with pytest.raises(PageError):
        MemoryImage(0)


@given(st.integers(1, 200), st.lists(st.integers(0, 199)))
def test_take_returns_exactly_the_marked_pages_in_order(pages, marks):
    bitmap = DirtyBitmap(pages)
    marks = [m % pages for m in marks]
    for page in marks:
        bitmap.mark(page)
    assert bitmap.count() == len(set(marks))
    assert bitmap.take() == sorted(set(marks))
    assert bitmap.count() == 0


@given(st.integers(1, 70))
def test_fill_marks_every_page_and_no_more(pages):
    bitmap = DirtyBitmap(pages)
    bitmap.fill()
    assert bitmap.take() == list(range(pages))
