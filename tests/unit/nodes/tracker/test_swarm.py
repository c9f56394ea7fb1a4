"""nodes/tracker/swarm.py: the swarm core with a fake clock: who is given to whom, what is
counted, who is forgotten, and that memory stays bounded."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest

from nodes.tracker.swarm import Announce, Endpoint, Tracker, TrackerFull

TORRENT = b"T" * 20
OTHER = b"O" * 20


@pytest.fixture
def tracker(clock):
    return Tracker(peer_timeout=90, clock=clock, rng=random.Random(7))


def peer(n: int, *, left: int | None = 100, event: str = "", info_hash: bytes = TORRENT,
         numwant: int = 50, peer_id: bytes | None = None, ip: str = "10.0.0.1") -> Announce:
    return Announce(info_hash=info_hash, peer_id=peer_id or b"-DL0001-%012d" % n,
                    endpoint=Endpoint(IPv4Address(ip), 6880 + n), left=left, event=event,
                    numwant=numwant)


def ports(reply) -> set[int]:
    return {p.endpoint.port for p in reply.peers}


def test_peers_are_given_each_other_but_not_themselves(tracker):
    first = tracker.announce(peer(1, event="started"))
    assert first.peers == () and (first.counts.complete, first.counts.incomplete) == (0, 1)
    second = tracker.announce(peer(2, event="started"))
    assert ports(second) == {6881}
    assert ports(tracker.announce(peer(1))) == {6882}


def test_a_seeder_is_given_only_leechers(tracker):
    tracker.announce(peer(1, left=0, event="started"))
    tracker.announce(peer(2, left=0, event="started"))
    tracker.announce(peer(3, event="started"))
    assert ports(tracker.announce(peer(1, left=0))) == {6883}
    assert ports(tracker.announce(peer(3))) == {6881, 6882}


def test_numwant_limits_a_random_choice(tracker):
    for n in range(1, 31):
        tracker.announce(peer(n, event="started"))
    replies = [ports(tracker.announce(peer(1, numwant=5))) for _ in range(5)]
    assert all(len(reply) == 5 and 6881 not in reply for reply in replies)
    assert len(set(map(frozenset, replies))) > 1
    assert len(tracker.announce(peer(1, numwant=0)).peers) == 0


def test_completed_turns_a_leecher_into_a_seeder_and_counts_once(tracker):
    tracker.announce(peer(1, event="started"))
    done = tracker.announce(peer(1, left=0, event="completed"))
    assert done.completed_now and done.counts.downloaded == 1 and done.counts.complete == 1
    again = tracker.announce(peer(1, left=0, event="completed"))
    assert not again.completed_now and again.counts.downloaded == 1
    assert tracker.scrape([TORRENT])[0].downloaded == 1


def test_completed_without_left_means_a_seeder(tracker):
    reply = tracker.announce(peer(1, left=None, event="completed"))
    assert (reply.counts.complete, reply.counts.incomplete) == (1, 0)


def test_a_missing_left_counts_as_a_leecher(tracker):
    reply = tracker.announce(peer(1, left=None, event="started"))
    assert (reply.counts.complete, reply.counts.incomplete) == (0, 1)


def test_stopped_removes_the_peer(tracker):
    tracker.announce(peer(1, event="started"))
    tracker.announce(peer(2, event="started"))
    stopped = tracker.announce(peer(1, event="stopped"))
    assert stopped.peers == () and stopped.counts.incomplete == 1
    assert ports(tracker.announce(peer(2))) == set()


def test_stopped_before_any_started_changes_nothing(tracker):
    reply = tracker.announce(peer(1, event="stopped"))
    assert reply.peers == () and reply.counts.incomplete == 0
    assert tracker.totals().swarms == 0
    tracker.announce(peer(2, event="started"))
    assert tracker.announce(peer(1, event="stopped")).counts.incomplete == 1


def test_a_regular_announce_without_started_joins(tracker):
    """A tracker restart forgets everyone: peers come back with their next regular announce."""
    tracker.announce(peer(1))
    assert ports(tracker.announce(peer(2, event="paused"))) == {6881}


def test_a_client_restarted_at_the_same_address_replaces_its_old_entry(tracker):
    tracker.announce(peer(1, event="started"))
    tracker.announce(peer(1, left=0, event="completed"))
    restarted = tracker.announce(peer(1, event="started", peer_id=b"-qB4650-" + b"n" * 12))
    assert (restarted.counts.complete, restarted.counts.incomplete) == (0, 1)
    assert tracker.peers(TORRENT)[0].peer_id == b"-qB4650-" + b"n" * 12
    assert tracker.announce(peer(1, left=0, event="completed",
                                 peer_id=b"-qB4650-" + b"n" * 12)).completed_now


def test_peers_that_miss_their_announces_are_forgotten(tracker, clock):
    tracker.announce(peer(1, event="started"))
    tracker.announce(peer(2, event="started"))
    clock.now += 60
    tracker.announce(peer(2))
    clock.now += 40  # peer 1 silent for 100 s > 90
    reply = tracker.announce(peer(3, event="started"))
    assert ports(reply) == {6882} and reply.expired == 1
    clock.now += 91
    assert tracker.expire() == 2
    assert tracker.totals().swarms == 0 and tracker.peers(TORRENT) is None


def test_a_peer_announcing_on_time_stays(tracker, clock):
    tracker.announce(peer(1, event="started"))
    for _ in range(10):
        clock.now += 89
        tracker.announce(peer(1))
    assert tracker.expire() == 0 and tracker.totals().leechers == 1


def test_scrape_counts_the_swarms_asked_for_or_all(tracker):
    tracker.announce(peer(1, left=0, event="started"))
    tracker.announce(peer(2, event="started"))
    tracker.announce(peer(3, event="started", info_hash=OTHER))
    asked = tracker.scrape([TORRENT, b"U" * 20])
    assert [(s.info_hash, s.complete, s.incomplete) for s in asked] == [
        (TORRENT, 1, 1), (b"U" * 20, 0, 0)]
    assert [s.info_hash for s in tracker.scrape()] == [OTHER, TORRENT]
    assert len(tracker.scrape([TORRENT, TORRENT])) == 1


def test_totals_add_every_swarm(tracker):
    tracker.announce(peer(1, left=0, event="started"))
    tracker.announce(peer(2, event="started"))
    tracker.announce(peer(3, event="started", info_hash=OTHER))
    totals = tracker.totals()
    assert (totals.swarms, totals.seeders, totals.leechers) == (2, 1, 2)


def test_memory_is_bounded_by_swarm_and_peer_limits(clock):
    tracker = Tracker(peer_timeout=90, max_swarms=2, max_peers_per_swarm=2, clock=clock)
    tracker.announce(peer(1, event="started"))
    tracker.announce(peer(2, event="started"))
    with pytest.raises(TrackerFull, match="limit of 2 peers"):
        tracker.announce(peer(3, event="started"))
    tracker.announce(peer(1))  # a known peer still announces
    tracker.announce(peer(1, info_hash=OTHER))
    with pytest.raises(TrackerFull, match="limit of 2 swarms"):
        tracker.announce(peer(1, info_hash=b"U" * 20))
    clock.now += 100  # everyone expired: room again
    tracker.announce(peer(1, info_hash=b"U" * 20))
    assert tracker.totals().swarms == 1


def test_unknown_events_are_the_callers_bug(tracker):
    with pytest.raises(ValueError, match="unknown event"):
        tracker.announce(peer(1, event="finished"))


def test_peer_copies_do_not_change_the_tracker(tracker):
    tracker.announce(peer(1, event="started"))
    tracker.peers(TORRENT)[0].left = 0
    assert tracker.totals().leechers == 1
