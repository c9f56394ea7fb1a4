"""nodes/bittorrent/picker.py: random first, rarest first, started pieces first, pipelining,
endgame with its cancels, returned requests, and who sent a bad piece."""

from __future__ import annotations

import random

from nodes.bittorrent.layout import BLOCK_SIZE, Layout
from nodes.bittorrent.picker import Picker

# 8 pieces of 4 blocks each
LAYOUT = Layout(piece_length=4 * BLOCK_SIZE, total_length=8 * 4 * BLOCK_SIZE)
ALL = range(LAYOUT.piece_count)


def picker(**options) -> Picker:
    options.setdefault("rng", random.Random(1))
    return Picker(LAYOUT, **options)


def fetch_piece(p: Picker, peer, index: int) -> None:
    """Receive and verify every block of `index` from `peer`, as requested."""
    for block in LAYOUT.blocks(index):
        p.block_received(peer, block)
    p.piece_verified(index)


def test_the_pipeline_holds_at_most_pipeline_depth_requests_per_peer():
    p = picker(pipeline_depth=5)
    p.add_peer("a", ALL)
    first = p.requests_for("a")
    assert len(first) == 5 and len(set(first)) == 5
    assert p.requests_for("a") == []
    p.block_received("a", first[0])
    assert len(p.requests_for("a")) == 1


def test_a_started_piece_is_finished_before_another_is_begun():
    p = picker(pipeline_depth=3)
    p.add_peer("a", ALL)
    p.add_peer("b", ALL)
    from_a = p.requests_for("a")
    from_b = p.requests_for("b")
    assert {block.index for block in from_a} == {from_a[0].index}
    # b finishes a's piece (its 4th block) before starting a new one
    assert from_b[0].index == from_a[0].index and from_b[0] not in from_a
    assert len({block.index for block in from_a + from_b}) == 2


def test_the_first_pieces_are_random_then_the_rarest_comes_first():
    firsts = set()
    for seed in range(20):
        p = picker(rng=random.Random(seed), pipeline_depth=1, random_first_pieces=1)
        p.add_peer("seed", ALL)
        p.add_peer("other", {0, 1, 2, 3, 4, 5, 6})  # piece 7 is the rarest
        firsts.add(p.requests_for("seed")[0].index)
    assert len(firsts) > 3  # not always the rarest: random until one piece is in

    p = picker(pipeline_depth=1, random_first_pieces=1, have={0})
    p.add_peer("seed", ALL)
    p.add_peer("other", {1, 2, 3, 4, 5, 6})
    assert p.requests_for("seed")[0].index == 7


def test_only_pieces_the_peer_has_and_we_lack_are_requested():
    p = picker(have={0, 1})
    p.add_peer("a", {1, 2})
    requested = {block.index for block in p.requests_for("a")}
    assert requested == {2}
    assert p.interesting("a")
    fetch_piece(p, "a", 2)
    assert not p.interesting("a") and p.requests_for("a") == []


def test_haves_make_a_peer_interesting_and_count_towards_rarity():
    p = picker()
    p.add_peer("a")
    assert not p.interesting("a")
    p.peer_has("a", 3)
    assert p.interesting("a") and {b.index for b in p.requests_for("a")} == {3}


def test_a_disconnected_or_choking_peer_gives_its_requests_back():
    p = picker(pipeline_depth=4)
    p.add_peer("a", {5})
    p.add_peer("b", {5})
    taken = p.requests_for("a")
    # All of piece 5 is asked of a, and it is not endgame (other pieces are not asked for).
    assert p.requests_for("b") == []
    p.remove_peer("a")
    assert sorted(p.requests_for("b")) == sorted(taken)
    p.peer_choked("b")
    assert p.outstanding("b") == set()
    p.add_peer("c", {5})
    assert sorted(p.requests_for("c")) == sorted(taken)


def test_endgame_requests_the_last_blocks_from_everyone_and_cancels_duplicates():
    small = Layout(piece_length=2 * BLOCK_SIZE, total_length=2 * BLOCK_SIZE)
    p = Picker(small, rng=random.Random(1), pipeline_depth=4)
    p.add_peer("a", {0})
    p.add_peer("b", {0})
    assert not p.endgame
    asked_a = p.requests_for("a")
    assert p.endgame
    asked_b = p.requests_for("b")
    assert sorted(asked_a) == sorted(asked_b) == small.blocks(0)
    first = p.block_received("b", asked_b[0])
    assert first.cancels == (("a", asked_b[0]),) and not first.piece_complete
    assert p.block_received("a", asked_b[0]) is None  # the duplicate that raced the cancel
    last = p.block_received("a", asked_b[1])
    assert last.piece_complete and last.cancels == (("b", asked_b[1]),)
    assert p.outstanding("a") == p.outstanding("b") == set()


def test_a_bad_piece_names_its_senders_and_is_fetched_again():
    p = picker(pipeline_depth=4)
    p.add_peer("liar", {2})
    p.add_peer("honest", {2})
    blocks = p.requests_for("liar")
    for block in blocks[:3]:
        p.block_received("liar", block)
    p.peer_choked("liar")
    assert p.requests_for("honest") == [blocks[3]]
    assert p.block_received("honest", blocks[3]).piece_complete
    assert p.piece_failed(2) == {"liar", "honest"}
    p.remove_peer("liar")
    assert sorted(p.requests_for("honest")) == LAYOUT.blocks(2)


def test_an_unrequested_block_of_an_unstarted_piece_is_refused():
    p = picker()
    p.add_peer("a", ALL)
    assert p.block_received("a", LAYOUT.blocks(3)[0]) is None


def test_a_whole_download_from_three_peers_ends_complete():
    p = picker(pipeline_depth=6)
    for peer in "abc":
        p.add_peer(peer, ALL)
    rng = random.Random(3)
    while not p.complete:
        for peer in "abc":
            p.requests_for(peer)
        peer = rng.choice("abc")
        if not p.outstanding(peer):
            continue
        block = rng.choice(sorted(p.outstanding(peer)))
        received = p.block_received(peer, block)
        if received.piece_complete:
            p.piece_verified(block.index)
    assert p.have == set(ALL) and not p.endgame
    assert all(p.outstanding(peer) == set() for peer in "abc")


def test_a_peer_on_parole_downloads_whole_pieces_alone():
    p = picker(pipeline_depth=3)
    p.add_peer("suspect", ALL)
    p.add_peer("other", ALL)
    p.parole("suspect")
    mine = p.requests_for("suspect")
    (piece,) = {block.index for block in mine}
    theirs = p.requests_for("other")
    assert piece not in {block.index for block in theirs}  # its 4th block is left to it
    p.block_received("suspect", mine[0])
    assert [block.index for block in p.requests_for("suspect")] == [piece]
    # once it is gone, what it started is anyone's
    p.remove_peer("suspect")
    for block in theirs:
        p.block_received("other", block)
    assert {block.index for block in p.requests_for("other")} >= {piece}


def test_a_piece_left_by_a_banned_peer_is_finished_by_a_peer_on_parole():
    """The corrupt-peer scenario's stall: the seeder went on parole (a bad piece had blocks
    from it and the corrupt peer), the corrupt peer was banned with pieces half fetched, and
    no one was left who could finish those pieces."""
    p = picker(pipeline_depth=4)
    p.add_peer("seeder", ALL)
    p.add_peer("corrupt", ALL)
    p.parole("seeder")
    theirs = p.requests_for("corrupt")  # one whole piece, no owner
    (piece,) = {block.index for block in theirs}
    p.block_received("corrupt", theirs[0])
    p.remove_peer("corrupt")  # banned
    for index in ALL:
        if index != piece:
            p.have.add(index)  # everything else is in
    asked = p.requests_for("seeder")
    assert {block.index for block in asked} == {piece}
    assert sorted(asked) == sorted(LAYOUT.blocks(piece))  # from nothing: it sends it alone
    for block in asked:
        p.block_received("seeder", block)
    p.piece_verified(piece)
    assert p.complete


def test_a_peer_on_parole_is_cleared_by_a_good_piece_it_sent_alone():
    p = picker(pipeline_depth=4)
    p.add_peer("suspect", ALL)
    p.add_peer("other", ALL)
    p.parole("suspect")
    mine = p.requests_for("suspect")
    (piece,) = {block.index for block in mine}
    for block in mine:
        p.block_received("suspect", block)
    p.piece_verified(piece)
    p.pipeline_depth = 2
    (started,) = {block.index for block in p.requests_for("suspect")}
    # off parole: the piece it starts now is anyone's to help finish
    assert {block.index for block in p.requests_for("other")} == {started}


def test_a_peer_cleared_of_parole_still_finishes_the_piece_it_began_alone():
    """The stall the corrupt-peer scenario found next: the last piece was owned by a peer no
    longer on parole, and no one, that peer included, would fetch its blocks."""
    p = picker(pipeline_depth=6)  # a whole piece and half of the next
    p.add_peer("suspect", ALL)
    p.parole("suspect")
    asked = p.requests_for("suspect")
    first, second = sorted({block.index for block in asked}, key=[b.index for b in asked].index)
    for block in asked:
        p.block_received("suspect", block)
    p.piece_verified(first)  # cleared now
    rest = p.requests_for("suspect")
    assert {block.index for block in rest} >= {second}
    for block in rest:
        if block.index == second:
            p.block_received("suspect", block)
    p.piece_verified(second)
    assert {first, second} <= p.have
