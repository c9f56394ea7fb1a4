"""nodes/kv/store.py: records on disk and the state machine they rebuild."""

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.kv.store import (
    DELETE,
    MAX_KEY_LENGTH,
    PUT,
    KVError,
    KVStore,
    Record,
    check_key,
    decode_records,
)

SAMPLE = [Record(PUT, 1, "a", b"alpha"), Record(PUT, 2, "b", b""),
          Record(DELETE, 3, "a"), Record(PUT, 4, "ключ", bytes(range(256)))]

keys = st.text(min_size=1, max_size=MAX_KEY_LENGTH)
records = st.builds(Record, op=st.sampled_from([PUT, DELETE]),
                    version=st.integers(0, 2**64 - 1), key=keys, value=st.binary(max_size=512))


@given(st.lists(records, max_size=8))
def test_encode_decode_round_trip(written):
    data = b"".join(record.encode() for record in written)
    decoded, intact = decode_records(data)
    assert decoded == written
    assert intact == len(data)


def test_torn_tail_yields_only_whole_records():
    encoded = [record.encode() for record in SAMPLE]
    ends = [sum(len(e) for e in encoded[:i + 1]) for i in range(len(encoded))]
    data = b"".join(encoded)
    for cut in range(len(data) + 1):
        decoded, intact = decode_records(data[:cut])
        whole = sum(1 for end in ends if end <= cut)
        assert decoded == SAMPLE[:whole], cut
        assert intact == (ends[whole - 1] if whole else 0), cut


@given(st.lists(records, min_size=1, max_size=4), st.data())
def test_torn_tail_property(written, data):
    encoded = b"".join(record.encode() for record in written)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    decoded, intact = decode_records(encoded[:cut])
    assert decoded == written[:len(decoded)]
    assert len(decoded) < len(written)
    assert intact == sum(len(record.encode()) for record in decoded)


def test_a_flipped_byte_stops_decoding_at_that_record():
    encoded = [record.encode() for record in SAMPLE]
    start = len(encoded[0])
    for position in range(start, start + len(encoded[1])):
        data = bytearray(b"".join(encoded))
        data[position] ^= 0x41
        decoded, intact = decode_records(bytes(data))
        assert decoded == SAMPLE[:1], position
        assert intact == start, position


def test_garbage_decodes_to_nothing():
    assert decode_records(b"not a log at all, just some words") == ([], 0)
    assert decode_records(b"") == ([], 0)


def test_put_get_delete_and_monotonic_versions():
    store = KVStore(max_value_bytes=100)
    first = store.prepare_put("a", b"1")
    assert store.get("a") is None  # preparing changes nothing
    store.apply(first)
    store.apply(store.prepare_put("b", b"22"))
    store.apply(store.prepare_put("a", b"333"))
    assert store.get("a") == (b"333", 3)
    assert store.version == 3
    assert len(store) == 2 and store.value_bytes == 5
    delete = store.prepare_delete("a")
    assert delete.op == DELETE and delete.version == 4
    store.apply(delete)
    assert store.get("a") is None and store.version == 4
    assert store.value_bytes == 2
    assert store.prepare_delete("a") is None  # nothing to delete, nothing logged
    assert store.prepare_put("c", b"").version == 5


def test_keys_by_prefix_with_limit():
    store = KVStore(max_value_bytes=10)
    for key in ("b1", "a2", "a1", "a3"):
        store.apply(store.prepare_put(key, b""))
    assert store.keys("a", 10) == (["a1", "a2", "a3"], False)
    assert store.keys("a", 2) == (["a1", "a2"], True)
    assert store.keys("", 4) == (["a1", "a2", "a3", "b1"], False)


def test_records_rebuild_the_same_state():
    store = KVStore(max_value_bytes=10)
    for key, value in (("x", b"1"), ("y", b"2"), ("x", b"3")):
        store.apply(store.prepare_put(key, value))
    store.apply(store.prepare_delete("y"))
    copy = KVStore(max_value_bytes=10)
    for record in store.records():
        copy.apply(record)
    assert copy.get("x") == store.get("x") and copy.get("y") is None
    assert len(copy) == 1


@pytest.mark.parametrize("key, fragment", [
    ("", "must not be empty"),
    ("k" * (MAX_KEY_LENGTH + 1), f"the limit is {MAX_KEY_LENGTH}"),
    ("tab\there", "printable"),
    ("nul\x00", "printable"),
    ("line\n", "printable"),
])
def test_bad_keys_are_refused_everywhere(key, fragment):
    store = KVStore(max_value_bytes=10)
    with pytest.raises(KVError, match=fragment):
        check_key(key)
    for call in (lambda: store.prepare_put(key, b""), lambda: store.prepare_delete(key),
                 lambda: store.get(key)):
        with pytest.raises(KVError, match=fragment):
            call()


def test_longest_key_is_accepted():
    check_key("k" * MAX_KEY_LENGTH)


def test_value_too_large():
    store = KVStore(max_value_bytes=4)
    store.prepare_put("k", b"1234")
    with pytest.raises(KVError, match="value is 5 bytes; the limit is 4"):
        store.prepare_put("k", b"12345")


def frame(payload: bytes) -> bytes:
    """A frame with a valid checksum around any payload, as a crafted snapshot could hold."""
    return struct.pack(">II", zlib.crc32(payload), len(payload)) + payload


def test_checksummed_frame_with_a_non_utf8_key_stops_decoding():
    good = SAMPLE[0].encode()
    bad = frame(struct.pack(">BQHI", PUT, 2, 1, 0) + b"\xff")
    assert decode_records(good + bad + SAMPLE[1].encode()) == ([SAMPLE[0]], len(good))


@pytest.mark.parametrize("payload", [
    struct.pack(">BQHI", 9, 1, 1, 0) + b"k",  # unknown op
    struct.pack(">BQHI", PUT, 1, 5, 0) + b"k",  # lengths disagree with the frame
    b"short",  # shorter than a header
])
def test_checksummed_frame_that_is_not_a_record_stops_decoding(payload):
    assert decode_records(frame(payload)) == ([], 0)


def test_records_carry_the_version_past_deleted_keys():
    store = KVStore(max_value_bytes=10)
    store.apply(store.prepare_put("kept", b"1"))
    store.apply(store.prepare_put("gone", b"2"))
    store.apply(store.prepare_delete("gone"))
    copy = KVStore(max_value_bytes=10)
    for record in store.records():
        copy.apply(record)
    assert copy.version == store.version == 3  # the next write is 4, never a reused 3
    assert (len(copy), copy.value_bytes) == (1, 1)
