"""nodes/common/peers.py: the failure detector and peer discovery (no sockets)."""

import pytest

from nodes.common.peers import CountingDetector, FailureDetector, discover, phi_detector


def feed(detector: FailureDetector, peer: str, results: str) -> list[bool | None]:
    """Observe a string of results, "+" good and "-" failed; return each verdict change."""
    return [detector.observe(peer, char == "+") for char in results]


def test_new_peer_starts_down_and_needs_rise_good_checks():
    detector = FailureDetector(rise=2, fall=3)
    assert not detector.is_up("kv-2")
    assert feed(detector, "kv-2", "+") == [None]
    assert not detector.is_up("kv-2")
    assert feed(detector, "kv-2", "+") == [True]
    assert detector.is_up("kv-2")


def test_goes_down_after_fall_failures_in_a_row():
    detector = FailureDetector(rise=1, fall=3)
    feed(detector, "kv-2", "+")
    assert feed(detector, "kv-2", "--") == [None, None]
    assert detector.is_up("kv-2")
    assert feed(detector, "kv-2", "-") == [False]
    assert not detector.is_up("kv-2")
    assert feed(detector, "kv-2", "-") == [None]  # already down: no new verdict


def test_flapping_never_crosses_a_threshold():
    detector = FailureDetector(rise=2, fall=2)
    feed(detector, "kv-2", "++")
    assert detector.is_up("kv-2")
    assert feed(detector, "kv-2", "-+-+-+-+") == [None] * 8
    assert detector.is_up("kv-2")
    detector = FailureDetector(rise=2, fall=2)
    assert feed(detector, "kv-3", "+-+-+-+-") == [None] * 8
    assert not detector.is_up("kv-3")


def test_peers_are_judged_independently():
    detector = FailureDetector(rise=1, fall=1)
    feed(detector, "a", "+")
    feed(detector, "b", "-")
    assert detector.verdicts() == {"a": True, "b": False}


def test_thresholds_must_be_positive():
    with pytest.raises(ValueError):
        FailureDetector(rise=0, fall=1)
    with pytest.raises(ValueError):
        FailureDetector(rise=1, fall=0)


def test_the_counting_detector_counts_timeouts_like_refusals():
    """The old data-master detector: any failed check counts, and time plays no part."""
    detector = CountingDetector(rise=1, fall=3)
    assert detector.presume_up("data-1", 0.0) is True
    assert detector.silent("data-1", 0.5) is None
    assert detector.refused("data-1", 1.0) is None
    assert detector.judge("data-1", 1e6) is None
    assert detector.silent("data-1", 1.5) is False
    assert detector.heartbeat("data-1", 2.0) is True


def test_the_phi_detector_takes_its_minimum_deviation_from_the_interval():
    detector = phi_detector(interval=0.2, threshold=8.0, acceptable_pause=1.0, rise=1, fall=1)
    detector.presume_up("data-1", 0.0)
    for n in range(1, 50):
        detector.heartbeat("data-1", n * 0.2)
    last = 49 * 0.2
    # mean 0.2 + pause 1.0 + about 5.2 x 0.02 (a tenth of the interval)
    assert detector.judge("data-1", last + 1.25) is None
    assert detector.judge("data-1", last + 1.35) is False


def fake_dns(table: dict[str, list[str]]):
    def resolve(host: str) -> list[str]:
        if host not in table:
            raise OSError(f"cannot resolve {host}")
        return table[host]

    return resolve


NAMES = {"10.0.0.2": "kv-1", "10.0.0.3": "kv-2", "10.0.0.4": "kv-3"}


def test_dns_name_gives_every_replica_named_by_reverse_lookup():
    peers = discover(["kv"], default_port=50051, own_targets=set(),
                     resolve=fake_dns({"kv": ["10.0.0.2", "10.0.0.3", "10.0.0.4"]}),
                     name_of=NAMES.get)
    assert peers == {"kv-1": "10.0.0.2:50051", "kv-2": "10.0.0.3:50051",
                     "kv-3": "10.0.0.4:50051"}


def test_own_target_is_excluded():
    peers = discover(["kv"], default_port=50051, own_targets={"10.0.0.3:50051"},
                     resolve=fake_dns({"kv": ["10.0.0.2", "10.0.0.3"]}), name_of=NAMES.get)
    assert peers == {"kv-1": "10.0.0.2:50051"}


def test_literal_entries_are_named_by_entry_and_keep_their_port():
    peers = discover(["127.0.0.1:7001", "127.0.0.1:7002", "localhost"], default_port=50051,
                     own_targets={"127.0.0.1:7002"},
                     resolve=fake_dns({"127.0.0.1": ["127.0.0.1"], "localhost": ["127.0.0.1"]}),
                     name_of=lambda address: "should-not-be-used")
    assert peers == {"127.0.0.1:7001": "127.0.0.1:7001", "localhost:50051": "127.0.0.1:50051"}


def test_unresolvable_name_is_skipped_and_unnamed_address_falls_back_to_itself():
    peers = discover(["gone", "kv:7000"], default_port=50051, own_targets=set(),
                     resolve=fake_dns({"kv": ["10.0.0.9"]}), name_of=NAMES.get)
    assert peers == {"10.0.0.9": "10.0.0.9:7000"}


def test_a_machine_is_named_the_same_under_compose_and_swarm():
    from nodes.common.peers import machine_name_from

    assert machine_name_from("distlab-kv-2") == "kv-2"  # Compose: <project>-<service>-<n>
    assert machine_name_from("distlab_kv.2.4j787ie5gxwg8uiieom8o93t2") == "kv-2"  # a task
    assert machine_name_from("distlab_data-master.1.abc123") == "data-master-1"
    assert machine_name_from("standalone") == "standalone"
