"""nodes/chord/ring.py: interval tests, ids, finger starts and who owns a key."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.chord.ring import (
    RingError,
    between,
    between_right,
    distance,
    finger_start,
    format_id,
    hash_id,
    key_id,
    parse_id,
    replica_indices,
    short_id,
    successor_index,
)

BITS = 8
ids = st.integers(min_value=0, max_value=(1 << BITS) - 1)


def test_between_is_open_and_wraps_around_zero():
    assert between(10, 11, 20) and not between(10, 10, 20) and not between(10, 20, 20)
    assert between(250, 255, 5) and between(250, 0, 5) and between(250, 4, 5)
    assert not between(250, 5, 5) and not between(250, 100, 5)
    assert between(7, 8, 7) and between(7, 6, 7) and not between(7, 7, 7)


def test_between_right_includes_the_right_end_and_a_lone_node_owns_everything():
    assert between_right(10, 20, 20) and not between_right(10, 10, 20)
    assert between_right(250, 5, 5) and between_right(250, 0, 5)
    assert all(between_right(7, x, 7) for x in range(1 << BITS))


@given(ids, ids, ids)
def test_between_means_strictly_closer_clockwise(a, x, b):
    inside = 0 < distance(a, x, BITS) < (distance(a, b, BITS) or 1 << BITS)
    assert between(a, x, b) == inside
    assert between_right(a, x, b) == (inside or x == b)


@given(ids, ids)
def test_every_id_is_owned_by_exactly_one_node_of_a_ring(first, second):
    nodes = sorted({first, second, (first + 97) % (1 << BITS)})
    for x in range(1 << BITS):
        owners = [n for i, n in enumerate(nodes) if between_right(nodes[i - 1], x, n)]
        assert owners == [nodes[successor_index(nodes, x)]]


def test_successor_index_and_replicas_wrap():
    ring = [10, 50, 200]
    assert [successor_index(ring, x) for x in (0, 10, 11, 50, 199, 200, 201, 255)] == \
        [0, 0, 1, 1, 2, 2, 0, 0]
    assert replica_indices(ring, 201, 2) == [0, 1, 2]
    assert replica_indices(ring, 60, 5) == [2, 0, 1]  # never more copies than nodes
    with pytest.raises(RingError, match="empty ring"):
        successor_index([], 1)


def test_finger_starts_double_and_wrap():
    assert [finger_start(250, i, BITS) for i in range(BITS)] == \
        [251, 252, 254, 2, 10, 26, 58, 122]


def test_ids_are_the_top_bits_of_sha1():
    full = int.from_bytes(hashlib.sha1(b"10.0.0.7:50051").digest(), "big")
    assert hash_id("10.0.0.7:50051", 160) == full
    assert hash_id("10.0.0.7:50051", 8) == full >> 152
    assert key_id("user/1", 16) == hash_id("user/1", 16)


@pytest.mark.parametrize("key, reason", [
    ("", "must not be empty"), ("k" * 257, "the limit is 256"), ("a\nb", "printable")])
def test_malformed_keys_are_refused(key, reason):
    with pytest.raises(RingError, match=reason):
        key_id(key, 16)


def test_ids_print_with_the_ring_width_and_parse_back():
    assert format_id(0xab, 16) == "00ab" and format_id(5, 8) == "05"
    assert format_id(1, 160) == "0" * 39 + "1" and short_id(1, 160) == "00000000"
    assert parse_id("0x00AB", 16) == 0xab == parse_id(" ab ", 16) == parse_id("000000ab", 16)


@pytest.mark.parametrize("text, reason", [
    ("", "must not be empty"), ("0x", "must not be empty"), ("12g4", "not a hex number"),
    ("10000", "out of range"), ("-1", "not a hex number")])
def test_ids_that_are_not_of_the_ring_are_refused(text, reason):
    with pytest.raises(RingError, match=reason):
        parse_id(text, 16)
