"""The peer wire protocol (BEP 3): the handshake and every message, as bytes and back.

`encode` turns a message (`Handshake`, `KeepAlive`, `Choke` ... `Port`) into bytes;
a `WireDecoder` is fed whatever the socket delivers, split anywhere, and returns the
messages completed so far: first the `Handshake`, then length-prefixed messages.
What a hostile or broken peer can make it hold is bounded: a length prefix is
checked before its payload is buffered (at most a 16 KiB block + 13 bytes, or the
bitfield's size), and an unknown message id (an extension we did not announce) is
skipped without buffering, up to `MAX_SKIPPED_LENGTH`.

Whatever BEP 3 makes unreadable is a `WireError` (a ValueError) the caller answers
by closing the connection: a handshake that is not "BitTorrent protocol" (checked
byte by byte as it arrives, so garbage is refused at once), the wrong info_hash, a
length too large for its message or wrong for its id, a bitfield with spare bits
set, a have/request/piece/cancel outside the torrent, a request over 16 KiB.
Unknown reserved (extension) bits are kept in the `Handshake` and otherwise ignored;
`Port` (BEP 5's DHT port) is decoded and left for the caller to ignore. Sans-I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nodes.bittorrent.layout import BLOCK_SIZE, Block, Layout

PROTOCOL = b"BitTorrent protocol"
HANDSHAKE_LENGTH = 1 + len(PROTOCOL) + 8 + 20 + 20
MAX_SKIPPED_LENGTH = 1024 * 1024  # an extension message (BEP 10) we skip; beyond it, abuse

CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED, HAVE, BITFIELD, REQUEST, PIECE, CANCEL, PORT = range(10)


class WireError(ValueError):
    """The peer broke BEP 3; the message says how. Close the connection."""


@dataclass(frozen=True)
class Handshake:
    info_hash: bytes
    peer_id: bytes
    reserved: bytes = bytes(8)  # extension bits; none announced by us


@dataclass(frozen=True)
class KeepAlive:
    pass


@dataclass(frozen=True)
class Choke:
    pass


@dataclass(frozen=True)
class Unchoke:
    pass


@dataclass(frozen=True)
class Interested:
    pass


@dataclass(frozen=True)
class NotInterested:
    pass


@dataclass(frozen=True)
class Have:
    index: int


@dataclass(frozen=True)
class Bitfield:
    bits: bytes  # piece 0 is the high bit of the first byte

    @classmethod
    def of(cls, pieces, piece_count: int) -> Bitfield:
        bits = bytearray((piece_count + 7) // 8)
        for index in pieces:
            bits[index // 8] |= 0x80 >> (index % 8)
        return cls(bytes(bits))

    def pieces(self) -> set[int]:
        return {byte_index * 8 + bit for byte_index, byte in enumerate(self.bits)
                for bit in range(8) if byte & (0x80 >> bit)}


@dataclass(frozen=True)
class Request:
    block: Block


@dataclass(frozen=True)
class Piece:
    index: int
    begin: int
    data: bytes

    @property
    def block(self) -> Block:
        return Block(self.index, self.begin, len(self.data))


@dataclass(frozen=True)
class Cancel:
    block: Block


@dataclass(frozen=True)
class Port:
    port: int


Message = (KeepAlive | Choke | Unchoke | Interested | NotInterested | Have | Bitfield | Request
           | Piece | Cancel | Port)

_BARE = {Choke: CHOKE, Unchoke: UNCHOKE, Interested: INTERESTED, NotInterested: NOT_INTERESTED}
_BARE_BY_ID = {message_id: kind() for kind, message_id in _BARE.items()}


def encode_handshake(handshake: Handshake) -> bytes:
    if len(handshake.info_hash) != 20 or len(handshake.peer_id) != 20 or \
            len(handshake.reserved) != 8:
        raise ValueError("a handshake needs a 20-byte info_hash and peer_id, 8 reserved bytes")
    return (bytes([len(PROTOCOL)]) + PROTOCOL + handshake.reserved + handshake.info_hash
            + handshake.peer_id)


def encode(message: Message | Handshake) -> bytes:
    """The bytes of one message, length prefix included."""
    if isinstance(message, Handshake):
        return encode_handshake(message)
    if isinstance(message, KeepAlive):
        return bytes(4)
    if type(message) in _BARE:
        return struct.pack(">IB", 1, _BARE[type(message)])
    if isinstance(message, Have):
        return struct.pack(">IBI", 5, HAVE, message.index)
    if isinstance(message, Bitfield):
        return struct.pack(">IB", 1 + len(message.bits), BITFIELD) + message.bits
    if isinstance(message, Request | Cancel):
        message_id = REQUEST if isinstance(message, Request) else CANCEL
        return struct.pack(">IBIII", 13, message_id, *message.block)
    if isinstance(message, Piece):
        return struct.pack(">IBII", 9 + len(message.data), PIECE, message.index,
                           message.begin) + message.data
    if isinstance(message, Port):
        return struct.pack(">IBH", 3, PORT, message.port)
    raise TypeError(f"not a peer wire message: {message!r}")


class WireDecoder:
    """Bytes from one connection in, messages out; the handshake must come first.

    `expected_info_hash` is the torrent this peer serves: a handshake for another is
    refused. Memory held: at most one message's payload (bounded as above) plus the
    part of the last `feed` not yet decoded.
    """

    def __init__(self, layout: Layout, expected_info_hash: bytes) -> None:
        self.layout = layout
        self.expected_info_hash = expected_info_hash
        self.handshake: Handshake | None = None
        self._buffer = bytearray()
        self._skipping = 0  # bytes of an unknown message still to drop
        self.max_length = max(9 + BLOCK_SIZE, 1 + layout.bitfield_bytes, 13)

    def feed(self, data: bytes) -> list[Message | Handshake]:
        """The messages `data` completes, in order; WireError when the peer broke BEP 3."""
        if self._skipping:
            dropped = min(self._skipping, len(data))
            self._skipping -= dropped
            data = data[dropped:]
        self._buffer += data
        messages: list[Message | Handshake] = []
        position = 0
        if self.handshake is None:
            position = self._read_handshake()
            if self.handshake is None:
                return messages
            messages.append(self.handshake)
        buffer = self._buffer
        while len(buffer) - position >= 4:
            (length,) = struct.unpack_from(">I", buffer, position)
            if length == 0:
                messages.append(KeepAlive())
                position += 4
                continue
            if len(buffer) - position < 5:
                break
            message_id = buffer[position + 4]
            if message_id > PORT:
                if length - 1 > MAX_SKIPPED_LENGTH:
                    raise WireError(f"message id {message_id} claims {length} bytes, more than "
                                    f"an extension message may ({MAX_SKIPPED_LENGTH})")
                available = len(buffer) - position - 5
                skipped = min(available, length - 1)
                position += 5 + skipped
                self._skipping = length - 1 - skipped
                continue
            if length > self.max_length:
                raise WireError(f"a message of {length} bytes (id {message_id}) is longer than "
                                f"any this torrent needs ({self.max_length})")
            if len(buffer) - position < 4 + length:
                break
            payload = bytes(buffer[position + 5:position + 4 + length])
            position += 4 + length
            messages.append(self._message(message_id, payload))
        del buffer[:position]
        return messages

    def _read_handshake(self) -> int:
        """Checks the handshake as far as it has arrived; the bytes it used, once whole."""
        received = bytes(self._buffer[:HANDSHAKE_LENGTH])
        header = bytes([len(PROTOCOL)]) + PROTOCOL
        if received[:len(header)] != header[:len(received)]:
            raise WireError("not a BitTorrent handshake (no \"\\x13BitTorrent protocol\")")
        if len(received) < HANDSHAKE_LENGTH:
            return 0
        info_hash = received[len(header) + 8:len(header) + 28]
        if info_hash != self.expected_info_hash:
            raise WireError(f"handshake for info_hash {info_hash.hex()}, which is not served here")
        self.handshake = Handshake(info_hash, received[len(header) + 28:],
                                   received[len(header):len(header) + 8])
        return HANDSHAKE_LENGTH

    def _message(self, message_id: int, payload: bytes) -> Message:
        if message_id in _BARE_BY_ID:
            _expect(payload, 0, message_id)
            return _BARE_BY_ID[message_id]
        if message_id == HAVE:
            _expect(payload, 4, message_id)
            (index,) = struct.unpack(">I", payload)
            if index >= self.layout.piece_count:
                raise WireError(f"have {index}: the torrent has {self.layout.piece_count} pieces")
            return Have(index)
        if message_id == BITFIELD:
            _expect(payload, self.layout.bitfield_bytes, message_id)
            spare = len(payload) * 8 - self.layout.piece_count
            if spare and payload[-1] & ((1 << spare) - 1):
                raise WireError("bitfield has spare bits set past the last piece")
            return Bitfield(payload)
        if message_id in (REQUEST, CANCEL):
            _expect(payload, 12, message_id)
            block = Block(*struct.unpack(">III", payload))
            self._check_block(block, "request" if message_id == REQUEST else "cancel")
            return Request(block) if message_id == REQUEST else Cancel(block)
        if message_id == PIECE:
            if len(payload) < 9:
                raise WireError(f"piece message of {len(payload)} bytes has no block")
            index, begin = struct.unpack_from(">II", payload)
            message = Piece(index, begin, payload[8:])
            self._check_block(message.block, "piece")
            return message
        _expect(payload, 2, message_id)
        return Port(struct.unpack(">H", payload)[0])

    def _check_block(self, block: Block, what: str) -> None:
        if not self.layout.holds(block):
            raise WireError(f"{what} {tuple(block)} is not a block of at most {BLOCK_SIZE} "
                            f"bytes inside the torrent")


def _expect(payload: bytes, size: int, message_id: int) -> None:
    if len(payload) != size:
        raise WireError(f"message id {message_id} has a {len(payload)}-byte payload, not {size}")
