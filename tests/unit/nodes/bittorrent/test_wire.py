"""nodes/bittorrent/wire.py: every BEP 3 message round-trips through bytes split anywhere,
and what a hostile peer sends is a WireError or ignored, never a crash or a growing buffer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.bittorrent.layout import BLOCK_SIZE, Block, Layout
from nodes.bittorrent.wire import (
    HANDSHAKE_LENGTH,
    Bitfield,
    Cancel,
    Choke,
    Handshake,
    Have,
    Interested,
    KeepAlive,
    NotInterested,
    Piece,
    Port,
    Request,
    Unchoke,
    WireDecoder,
    WireError,
    encode,
)

INFO_HASH = bytes(range(20))
PEER_ID = b"-DL0001-000000000001"
# 10 pieces of 32 KiB and a last one of 5000 bytes: 11 pieces, a 2-byte bitfield with 5 spare bits
LAYOUT = Layout(piece_length=2 * BLOCK_SIZE, total_length=10 * 2 * BLOCK_SIZE + 5000)
HELLO = encode(Handshake(INFO_HASH, PEER_ID))


def decoder() -> WireDecoder:
    return WireDecoder(LAYOUT, INFO_HASH)


def blocks_in_range():
    def block(index):
        size = LAYOUT.piece_size(index)
        return st.integers(0, size - 1).flatmap(lambda begin: st.integers(
            1, min(BLOCK_SIZE, size - begin)).map(lambda length: Block(index, begin, length)))
    return st.integers(0, LAYOUT.piece_count - 1).flatmap(block)


messages = st.one_of(
    st.builds(KeepAlive), st.builds(Choke), st.builds(Unchoke), st.builds(Interested),
    st.builds(NotInterested), st.builds(Have, st.integers(0, LAYOUT.piece_count - 1)),
    st.sets(st.integers(0, LAYOUT.piece_count - 1)).map(
        lambda pieces: Bitfield.of(pieces, LAYOUT.piece_count)),
    blocks_in_range().map(Request), blocks_in_range().map(Cancel),
    blocks_in_range().flatmap(lambda b: st.binary(min_size=b.length, max_size=b.length).map(
        lambda data: Piece(b.index, b.begin, data))),
    st.builds(Port, st.integers(0, 65535)))


def feed_in_chunks(wire: WireDecoder, data: bytes, cuts: list[int]) -> list:
    out = []
    edges = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    for start, end in zip(edges, edges[1:], strict=False):
        out += wire.feed(data[start:end])
    return out


@given(st.lists(messages, max_size=12), st.lists(st.integers(0, 10**6), max_size=20),
       st.binary(min_size=8, max_size=8))
def test_every_message_round_trips_however_the_bytes_are_split(sent, cuts, reserved):
    hello = Handshake(INFO_HASH, PEER_ID, reserved)
    data = encode(hello) + b"".join(encode(message) for message in sent)
    assert feed_in_chunks(decoder(), data, cuts) == [hello, *sent]


def test_the_bep3_byte_layouts():
    assert HELLO == b"\x13BitTorrent protocol" + bytes(8) + INFO_HASH + PEER_ID
    assert len(HELLO) == HANDSHAKE_LENGTH == 68
    assert encode(KeepAlive()) == b"\0\0\0\0"
    assert encode(Interested()) == b"\0\0\0\x01\x02"
    assert encode(Have(3)) == b"\0\0\0\x05\x04\0\0\0\x03"
    assert encode(Request(Block(1, BLOCK_SIZE, BLOCK_SIZE))) == \
        b"\0\0\0\x0d\x06\0\0\0\x01\0\0\x40\0\0\0\x40\0"
    assert encode(Piece(2, 0, b"ab")) == b"\0\0\0\x0b\x07\0\0\0\x02\0\0\0\0ab"
    assert Bitfield.of({0, 10}, 11).bits == b"\x80\x20"
    assert Bitfield(b"\x80\x20").pieces() == {0, 10}


def test_unknown_extension_bits_are_kept_and_ignored():
    reserved = b"\0\0\0\0\0\x10\0\x05"  # BEP 10 extension protocol, DHT, fast
    wire = decoder()
    assert wire.feed(encode(Handshake(INFO_HASH, PEER_ID, reserved)) + encode(Unchoke())) == [
        Handshake(INFO_HASH, PEER_ID, reserved), Unchoke()]


def test_unknown_message_ids_are_skipped_without_buffering_them():
    wire = decoder()
    wire.feed(HELLO)
    extended = (1 + 100 + 199 * 999 + 100).to_bytes(4, "big") + b"\x14" + b"x" * 100
    assert wire.feed(extended) == []
    for _ in range(199):
        assert wire.feed(b"y" * 999) == []
        assert len(wire._buffer) == 0
    assert wire.feed(b"y" * 100 + encode(Have(1))) == [Have(1)]


@pytest.mark.parametrize("data, fragment", [
    (b"GET / HTTP/1.1\r\n", "not a BitTorrent handshake"),
    (b"\x13BitTorrent protocoX", "not a BitTorrent handshake"),
    (encode(Interested()), "not a BitTorrent handshake"),  # a message before the handshake
    (encode(Handshake(b"\xff" * 20, PEER_ID)), "not served here"),
])
def test_an_unreadable_handshake_is_refused_as_soon_as_it_shows(data, fragment):
    with pytest.raises(WireError, match=fragment):
        decoder().feed(data)


@pytest.mark.parametrize("message, fragment", [
    ((2**31).to_bytes(4, "big") + b"\x07", "longer than any this torrent needs"),
    ((BLOCK_SIZE + 10).to_bytes(4, "big") + b"\x07", "longer than any"),
    ((2 * 1024 * 1024).to_bytes(4, "big") + b"\x14", "more than an extension"),
    (b"\0\0\0\x02\x01x", "1-byte payload, not 0"),
    (b"\0\0\0\x03\x05\x80\x01", "spare bits"),
    (b"\0\0\0\x02\x05\x80", "1-byte payload, not 2"),
    (encode(Have(11)), "has 11 pieces"),
    (encode(Request(Block(0, 0, BLOCK_SIZE + 1))), "not a block of at most"),
    (encode(Request(Block(10, 4096, 4096))), "not a block of at most"),
    (encode(Request(Block(0, 0, 0))), "not a block"),
    (encode(Cancel(Block(99, 0, 1))), "cancel"),
    (encode(Piece(0, 2 * BLOCK_SIZE - 1, b"ab")), "piece"),
    (b"\0\0\0\x05\x07\0\0\0\0", "has no block"),
])
def test_messages_out_of_bounds_are_wire_errors(message, fragment):
    wire = decoder()
    wire.feed(HELLO)
    with pytest.raises(WireError, match=fragment):
        wire.feed(message)


def test_a_length_prefix_is_refused_before_its_payload_arrives():
    wire = decoder()
    wire.feed(HELLO)
    with pytest.raises(WireError):
        wire.feed(b"\x00\x10\x00\x00\x07")  # 1 MiB piece: refused with 5 bytes read


@given(st.binary(max_size=2000), st.lists(st.integers(0, 10**4), max_size=10))
def test_random_bytes_after_a_handshake_decode_or_fail_cleanly(junk, cuts):
    wire = decoder()
    try:
        feed_in_chunks(wire, HELLO + junk, cuts)
    except WireError:
        return
    assert len(wire._buffer) <= 4 + wire.max_length


@given(st.lists(messages, min_size=1, max_size=6), st.data())
def test_mutated_streams_decode_or_fail_cleanly(sent, data):
    raw = bytearray(HELLO + b"".join(encode(message) for message in sent))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    wire = decoder()
    try:
        wire.feed(bytes(raw))
    except WireError:
        return
    assert len(wire._buffer) <= 4 + wire.max_length
