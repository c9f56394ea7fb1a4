"""nodes/bittorrent/bencode.py: canonical round trips, and hostile input refused with a
BencodeError (never RecursionError, MemoryError or a crash)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.bittorrent.bencode import MAX_DEPTH, BencodeError, decode, encode

values = st.recursive(
    st.integers(min_value=-(2**63), max_value=2**63) | st.binary(max_size=64),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.binary(max_size=12), children, max_size=6),
    max_leaves=30)


def test_the_bep3_examples():
    assert encode(b"spam") == b"4:spam"
    assert encode(3) == b"i3e" and encode(-3) == b"i-3e" and encode(0) == b"i0e"
    assert encode([b"spam", b"eggs"]) == b"l4:spam4:eggse"
    assert encode({"spam": [b"a", b"b"], "cow": "moo"}) == b"d3:cow3:moo4:spaml1:a1:bee"
    assert decode(b"d3:cow3:moo4:spaml1:a1:bee") == {b"cow": b"moo", b"spam": [b"a", b"b"]}
    assert decode(b"0:") == b"" and decode(b"le") == [] and decode(b"de") == {}


def test_keys_are_sorted_as_raw_bytes_not_as_text():
    assert encode({"b": 1, "a": 2, "B": 3}) == b"d1:Bi3e1:ai2e1:bi1ee"


@pytest.mark.parametrize("value, problem", [
    (True, TypeError), (1.5, TypeError), (None, TypeError), ({1: 2}, TypeError),
    ({"k": 1, b"k": 2}, ValueError),
])
def test_encode_refuses_what_bencoding_cannot_say(value, problem):
    with pytest.raises(problem):
        encode(value)


@pytest.mark.parametrize("data, fragment", [
    (b"i-0e", "not canonical"),
    (b"i03e", "not canonical"),
    (b"i-03e", "not canonical"),
    (b"ie", "not a decimal number"),
    (b"i-e", "not a decimal number"),
    (b"i+1e", "not a decimal number"),
    (b"i 1e", "not a decimal number"),
    (b"i1", "unterminated"),
    (b"i" + b"9" * 40 + b"e", "unterminated or longer"),
    (b"03:abc", "leading zero"),
    (b"5:ab", "claims 5 bytes; only 2 remain"),
    (b"99999999999:x", "unterminated or longer than 10 digits"),
    (b"4:spamx", "1 bytes left after the value"),
    (b"", "input ends"),
    (b"l", "list is not terminated"),
    (b"d1:a", "input ends"),
    (b"di1ei2ee", "dict key is not a byte string"),
    (b"d1:b0:1:a0:e", "out of order"),
    (b"d1:a0:1:a0:e", "repeated"),
    (b"x", "does not start a value"),
])
def test_decode_refuses_non_canonical_or_broken_input(data, fragment):
    with pytest.raises(BencodeError, match=fragment):
        decode(data)


def test_nesting_is_bounded_without_recursion_errors():
    deep = b"l" * (MAX_DEPTH - 1) + b"e" * (MAX_DEPTH - 1)
    assert decode(deep) is not None
    for hostile in (b"l" * 100_000, b"d1:a" * 100_000, b"l" * 100_000 + b"e" * 100_000):
        with pytest.raises(BencodeError, match="nested deeper than"):
            decode(hostile)
    with pytest.raises(BencodeError, match="nested deeper than 3"):
        decode(b"llllee" + b"ee", max_depth=3)


def test_input_size_is_bounded():
    with pytest.raises(BencodeError, match="the limit is 10"):
        decode(b"20:" + b"x" * 20, max_bytes=10)


@settings(max_examples=300, deadline=None)
@given(values)
def test_round_trip(value):
    encoded = encode(value)
    assert decode(encoded) == value
    assert encode(decode(encoded)) == encoded


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_fail_cleanly(data):
    try:
        value = decode(data)
    except BencodeError:
        return
    assert encode(value) == data  # whatever is accepted is canonical


@settings(max_examples=500, deadline=None)
@given(values, st.data())
def test_mutated_encodings_decode_or_fail_cleanly(value, data):
    encoded = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(encoded)))
        encoded[index:index] = data.draw(st.sampled_from([b"l", b"d", b"e", b"i", b"0", b"9:",
                                                          b"-", b"x"]))
    try:
        decoded = decode(bytes(encoded))
    except BencodeError:
        return
    assert encode(decoded) == bytes(encoded)
