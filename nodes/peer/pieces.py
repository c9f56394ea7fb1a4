"""The peer machine's piece store: the cores' `PieceStore` plus what the node counts, and
the corrupt test mode.

`PeerStore` counts piece bytes as they cross the store — accepted from peers
(`put_block`), served to peers (`read_block`) — and pieces verified or refused by
their SHA-1, for metrics, status and the tracker's uploaded/downloaded. With
`corrupt=True` (PEER_MODE=corrupt) every block it serves has its first byte
flipped, so the pieces others assemble from it fail their check: a fault for the
lab's scenarios, never a default. `FreeRiderChoker` is PEER_MODE=free-rider's
choker: it never unchokes anyone, so this peer never uploads.
"""

from __future__ import annotations

from nodes.bittorrent.choker import Choker
from nodes.bittorrent.layout import Block
from nodes.bittorrent.store import PieceStore


class PeerStore(PieceStore):
    def __init__(self, *args, corrupt: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.corrupt = corrupt
        self.uploaded = 0
        self.downloaded = 0
        self.pieces_verified = 0
        self.pieces_bad = 0

    def put_block(self, block: Block, data: bytes) -> None:
        self.downloaded += len(data)
        super().put_block(block, data)

    def read_block(self, block: Block) -> bytes:
        data = super().read_block(block)
        self.uploaded += len(data)
        if self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def finish_piece(self, index: int) -> bool:
        good = super().finish_piece(index)
        if good:
            self.pieces_verified += 1
        else:
            self.pieces_bad += 1
        return good


class FreeRiderChoker(Choker):
    """Keeps every peer choked: requests from them are dropped, as BEP 3 says."""

    def tick(self) -> frozenset:
        return frozenset()
