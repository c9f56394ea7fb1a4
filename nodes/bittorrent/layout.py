"""How a torrent's bytes divide into pieces and 16 KiB blocks: the geometry every peer core shares.

`Layout` answers the size of a piece (the last one may be shorter) and the blocks a
piece is requested in; `Block` names one request (piece index, offset, length) as the
wire's request, piece and cancel messages carry it. Pure arithmetic, no I/O; the
wire codec (`wire`), the piece picker (`picker`), the store (`store`) and the session
(`session`) use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

BLOCK_SIZE = 16 * 1024  # what every client requests; larger requests are refused (BEP 3 practice)


class Block(NamedTuple):
    index: int
    begin: int
    length: int


@dataclass(frozen=True)
class Layout:
    piece_length: int
    total_length: int

    @classmethod
    def of(cls, metainfo) -> Layout:
        return cls(metainfo.piece_length, metainfo.total_length)

    @property
    def piece_count(self) -> int:
        return math.ceil(self.total_length / self.piece_length)

    @property
    def bitfield_bytes(self) -> int:
        return math.ceil(self.piece_count / 8)

    def piece_size(self, index: int) -> int:
        if not 0 <= index < self.piece_count:
            raise IndexError(f"piece {index} is not in 0..{self.piece_count - 1}")
        return min(self.piece_length, self.total_length - index * self.piece_length)

    def blocks(self, index: int) -> list[Block]:
        size = self.piece_size(index)
        return [Block(index, begin, min(BLOCK_SIZE, size - begin))
                for begin in range(0, size, BLOCK_SIZE)]

    def holds(self, block: Block) -> bool:
        """Whether `block` lies inside the torrent and is no longer than BLOCK_SIZE."""
        index, begin, length = block
        return (0 <= index < self.piece_count and begin >= 0 and 0 < length <= BLOCK_SIZE
                and begin + length <= self.piece_size(index))
