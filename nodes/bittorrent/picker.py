"""Piece picking: which 16 KiB block to request from which peer, sans-I/O.

A `Picker` knows the pieces we have, what each connected peer has (its bitfield and
haves) and which blocks are requested from whom. `requests_for(peer)` tops that
peer's pipeline up to `pipeline_depth` outstanding requests, choosing in the order
the reference client does: first the blocks left in pieces already started (strict
priority, so pieces finish and can be shared), then a new piece — at random until
`random_first_pieces` are verified (a new peer needs something to trade quickly),
rarest first after that (ties broken at random). Once every missing block is
requested, endgame: the remaining blocks are requested from every peer that has
them too, and `block_received` names the duplicates to cancel.

The picker also remembers who sent each block of a piece: when the store finds the
piece's SHA-1 wrong, `piece_failed` returns those peers and the piece is fetched
again. One sender is the culprit (the caller bans it); among several, the caller
puts each on `parole`, as libtorrent does: a peer on parole only downloads whole
pieces by itself, so its next bad piece names it alone. A peer that disconnects
(`remove_peer`) or chokes us (`peer_choked`: BEP 3 peers drop our requests then)
gives its requests back.

Callers: the session (nodes.bittorrent.session). Peers are any hashable key; the
random source is injected. No I/O; memory is per piece and per outstanding request.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from nodes.bittorrent.layout import Block, Layout

PeerKey = Hashable


@dataclass
class _Progress:
    """A started piece: the blocks still missing, who has each requested, who sent each."""
    missing: set[Block]
    owner: PeerKey | None = None  # a peer on parole, downloading this piece alone
    requested: dict[Block, set[PeerKey]] = field(default_factory=dict)
    senders: dict[Block, PeerKey] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    piece_complete: bool  # every block is in: verify the piece now
    cancels: tuple[tuple[PeerKey, Block], ...]  # endgame duplicates to cancel


class Picker:
    def __init__(self, layout: Layout, *, rng: random.Random, have: Iterable[int] = (),
                 pipeline_depth: int = 8, random_first_pieces: int = 4) -> None:
        self.layout = layout
        self.rng = rng
        self.pipeline_depth = pipeline_depth
        self.random_first_pieces = random_first_pieces
        self.have: set[int] = set(have)
        self._availability = [0] * layout.piece_count
        self._peer_pieces: dict[PeerKey, set[int]] = {}
        self._outstanding: dict[PeerKey, set[Block]] = {}
        self._started: dict[int, _Progress] = {}
        self._on_parole: set[PeerKey] = set()
        # Blocks of missing pieces that no peer has been asked for: endgame starts at 0.
        self._unrequested = sum(len(layout.blocks(index)) for index in self.missing())

    # -- what we have --------------------------------------------------------------------

    def missing(self) -> list[int]:
        return [index for index in range(self.layout.piece_count) if index not in self.have]

    @property
    def complete(self) -> bool:
        return len(self.have) == self.layout.piece_count

    @property
    def endgame(self) -> bool:
        return self._unrequested == 0 and not self.complete

    def interesting(self, peer: PeerKey) -> bool:
        """Whether `peer` has a piece we lack: whether to be interested in it."""
        return any(index not in self.have for index in self._peer_pieces.get(peer, ()))

    def outstanding(self, peer: PeerKey) -> set[Block]:
        return set(self._outstanding.get(peer, ()))

    def pieces_of(self, peer: PeerKey) -> int:
        """How many pieces `peer` said it has (for status; 0 for a peer not added)."""
        return len(self._peer_pieces.get(peer, ()))

    def describe(self) -> dict:
        """The started pieces, who is on parole and what is asked of whom: for a log line
        when a download stalls."""
        return {"started": {index: {"owner": str(p.owner), "missing": len(p.missing),
                                    "requested": len(p.requested)}
                            for index, p in self._started.items()},
                "parole": [str(peer) for peer in self._on_parole],
                "outstanding": {str(peer): len(blocks)
                                for peer, blocks in self._outstanding.items()},
                "unrequested": self._unrequested, "missing": self.missing()[:8]}

    # -- peers ---------------------------------------------------------------------------

    def add_peer(self, peer: PeerKey, pieces: Iterable[int] = ()) -> None:
        self._peer_pieces[peer] = set()
        self._outstanding[peer] = set()
        for index in pieces:
            self.peer_has(peer, index)

    def peer_has(self, peer: PeerKey, index: int) -> None:
        known = self._peer_pieces[peer]
        if index not in known:
            known.add(index)
            self._availability[index] += 1

    def parole(self, peer: PeerKey) -> None:
        """From now on `peer` downloads only pieces no one else sends blocks of."""
        self._on_parole.add(peer)

    def remove_peer(self, peer: PeerKey) -> None:
        self.peer_choked(peer)
        self._on_parole.discard(peer)
        for progress in self._started.values():
            if progress.owner == peer:
                progress.owner = None
        for index in self._peer_pieces.pop(peer, ()):
            self._availability[index] -= 1
        self._outstanding.pop(peer, None)

    def peer_choked(self, peer: PeerKey) -> None:
        """`peer` will not answer what we asked (it choked us, or is gone)."""
        for block in self._outstanding.get(peer, set()):
            self._forget_request(peer, block)
        if peer in self._outstanding:
            self._outstanding[peer] = set()

    # -- requests ------------------------------------------------------------------------

    def requests_for(self, peer: PeerKey) -> list[Block]:
        """Blocks to request from `peer` now (it has unchoked us), recorded as requested."""
        chosen: list[Block] = []
        outstanding = self._outstanding[peer]
        while len(outstanding) < self.pipeline_depth:
            block = self._next_block(peer)
            if block is None:
                break
            self._started[block.index].requested.setdefault(block, set()).add(peer)
            if len(self._started[block.index].requested[block]) == 1:
                self._unrequested -= 1
            outstanding.add(block)
            chosen.append(block)
        return chosen

    def _next_block(self, peer: PeerKey) -> Block | None:
        theirs = self._peer_pieces[peer]
        owner = peer if peer in self._on_parole else None
        # A peer on parole continues only its own pieces; any other peer, pieces of no
        # owner and those it began alone while on parole (it may have been cleared since).
        mine = {owner} if owner is not None else {None, peer}
        started = [index for index in self._started
                   if index in theirs and self._started[index].owner in mine]
        # Pieces closest to done first: they become shareable soonest.
        started.sort(key=lambda index: len(self._started[index].missing))
        for index in started:
            for block in sorted(self._started[index].missing):
                if not self._started[index].requested.get(block):
                    return block
        index = self._new_piece(theirs)
        if index is None and owner is not None:
            index = self._orphan(theirs)
        if index is not None:
            self._started[index] = _Progress(missing=set(self.layout.blocks(index)), owner=owner)
            return self.layout.blocks(index)[0]
        if self.endgame:
            mine = self._outstanding[peer]
            for index in started:
                for block in sorted(self._started[index].missing):
                    if block not in mine:
                        return block
        return None

    def _orphan(self, theirs: set[int]) -> int | None:
        """A started piece of no owner that no one is fetching now (its peer banned, gone
        or choking), for a peer on parole that has nothing new to fetch: without this, a
        swarm whose other peers are all on parole or gone never finishes such a piece. It
        starts again from nothing, so a bad copy still names its one sender."""
        for index in sorted(theirs):
            progress = self._started.get(index)
            if progress is not None and progress.owner is None and not progress.requested:
                self._unrequested += len(self.layout.blocks(index)) - len(progress.missing)
                del self._started[index]
                return index
        return None

    def _new_piece(self, theirs: set[int]) -> int | None:
        candidates = [index for index in theirs
                      if index not in self.have and index not in self._started]
        if not candidates:
            return None
        if len(self.have) < self.random_first_pieces:
            return self.rng.choice(sorted(candidates))
        rarest = min(self._availability[index] for index in candidates)
        return self.rng.choice(sorted(index for index in candidates
                                      if self._availability[index] == rarest))

    def block_received(self, peer: PeerKey, block: Block) -> Received | None:
        """`peer` sent `block`. None when it is not wanted (already in, or of a piece not
        started): the caller drops the data. Otherwise the caller keeps the data, and
        verifies the piece when `piece_complete`."""
        progress = self._started.get(block.index)
        if progress is None or block not in progress.missing:
            return None
        requesters = progress.requested.pop(block, set())
        if not requesters:
            # Not asked for (any more: a choke came between): the data is as good as any,
            # the SHA-1 check decides; one block fewer waits to be requested.
            self._unrequested -= 1
        progress.missing.discard(block)
        progress.senders[block] = peer
        cancels = []
        for requester in requesters:
            self._outstanding[requester].discard(block)
            if requester != peer:
                cancels.append((requester, block))
        return Received(piece_complete=not progress.missing, cancels=tuple(cancels))

    def piece_verified(self, index: int) -> None:
        progress = self._started.pop(index, None)
        if progress is not None and progress.owner is not None:
            # A whole good piece sent by itself: the peer on parole is cleared, as in
            # libtorrent; a bad piece sent alone would have banned it.
            self._on_parole.discard(progress.owner)
        self.have.add(index)

    def piece_failed(self, index: int) -> set[PeerKey]:
        """The piece's hash was wrong: it is fetched again; the peers that sent it."""
        progress = self._started.pop(index)
        self._unrequested += len(self.layout.blocks(index))
        return set(progress.senders.values())

    def _forget_request(self, peer: PeerKey, block: Block) -> None:
        progress = self._started.get(block.index)
        if progress is None or block not in progress.requested:
            return
        requesters = progress.requested[block]
        requesters.discard(peer)
        if not requesters:
            del progress.requested[block]
            self._unrequested += 1
