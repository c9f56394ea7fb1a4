"""The guest workload and the KV in pages: deterministic, bounded, and where they write."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.vm.guest import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    GuestLayout,
    KVFull,
    PageKV,
    expected_image,
    run_guest,
)
from nodes.vm.memory import MemoryImage


def test_the_guest_writes_only_its_pages_and_mostly_the_hot_ones():
    layout = GuestLayout(pages=256, kv_pages=8, hot_pages=16, hot_fraction=0.9, seed=7)
    pages = [layout.step(k)[0] for k in range(2000)]
    assert all(8 <= p < 256 for p in pages)
    hot = sum(1 for p in pages if p < 8 + 16)
    assert 0.85 * 2000 < hot < 0.97 * 2000


def test_the_same_steps_give_the_same_image_and_another_seed_another():
    layout = GuestLayout(pages=64, kv_pages=2, hot_pages=8, hot_fraction=0.5)
    image = MemoryImage(64)
    run_guest(layout, image, 0, 300)
    run_guest(layout, image, 300, 500)
    assert image.checksum() == expected_image(layout, 500).checksum()
    other = GuestLayout(pages=64, kv_pages=2, hot_pages=8, hot_fraction=0.5, seed=2)
    assert expected_image(other, 500).checksum() != image.checksum()


def test_a_layout_with_no_guest_pages_is_refused():
    with pytest.raises(ValueError, match="kv_pages"):
        GuestLayout(pages=4, kv_pages=4, hot_pages=1, hot_fraction=0)


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=MAX_KEY_BYTES),
                          st.binary(max_size=MAX_VALUE_BYTES)), max_size=40))
def test_the_kv_reads_back_the_last_value_of_each_key(puts):
    kv = PageKV(MemoryImage(8), kv_pages=4)
    model = {}
    for key, value in puts:
        kv.put(key, value)
        model[key] = value
    for key, value in model.items():
        assert kv.get(key) == value
    assert kv.get(b"\xff" * MAX_KEY_BYTES) == model.get(b"\xff" * MAX_KEY_BYTES)


def test_the_kv_says_when_it_is_full_and_what_is_too_long():
    kv = PageKV(MemoryImage(2), kv_pages=1)
    for n in range(kv.slots):
        kv.put(b"k%d" % n, b"v")
    kv.put(b"k0", b"again")  # an existing key still fits
    with pytest.raises(KVFull):
        kv.put(b"one-more", b"v")
    with pytest.raises(ValueError, match="key"):
        kv.put(b"", b"v")
    with pytest.raises(ValueError, match="value"):
        kv.put(b"k", b"v" * (MAX_VALUE_BYTES + 1))
