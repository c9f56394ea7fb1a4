"""Chord beyond one engine (issue 14): 64 peers spread over a swarm of three test hosts
form one correct ring (every successor and predecessor right), and a key put at one
peer is read back from every peer, across hosts, over the overlay network."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from distlab import testbed as testbeds
from distlab.cluster import testhosts
from distlab.cluster.state import STATE_PATH
from distlab.testbed import RUNTIME_CHOICE
from nodes.rpc import chord_pb2
from tests.cluster.conftest import distlab, show
from tests.e2e.chord_support import one_ring, running_peers, stub_of, unread_keys
from tests.e2e.conftest import REPO, _engine_answers, eventually

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500)]
PEERS = 64
HOSTS = 3
RING_SECONDS = 300  # from healthy to one ring: three engines share this machine's 2 cores
KEYS = {f"swarm-{n}": f"value {n}".encode() for n in range(12)}


@pytest.fixture(scope="module")
def chord():
    if not _engine_answers():
        pytest.fail("no Docker engine answers: run scripts/setup-host.sh")
    if (REPO / STATE_PATH).exists():
        pytest.fail(f"{REPO / STATE_PATH} exists: `distlab cluster destroy` it first")
    testhosts.remove(REPO)
    specs = testhosts.make(REPO, HOSTS)
    try:
        made = distlab(REPO, "cluster", "create", "-i", str(testhosts.key_path(REPO)), *specs)
        assert made.returncode == 0, show(made)
        started = time.monotonic()
        up = distlab(REPO, "up", "chord", "--runtime", "swarm", "--scale", f"chord={PEERS}",
                     "--timeout", "900", timeout=1200)
        assert up.returncode == 0, show(up)
        print(f"\nchord={PEERS} on {HOSTS} test hosts healthy in "
              f"{time.monotonic() - started:.0f} s")
        yield testbeds.Testbed(root=REPO)
    finally:
        distlab(REPO, "down")
        distlab(REPO, "cluster", "destroy")
        testhosts.remove(REPO)
        (REPO / RUNTIME_CHOICE).unlink(missing_ok=True)


def test_sixty_four_peers_over_three_hosts_form_one_ring(chord):
    healthy = time.monotonic()
    eventually(lambda: one_ring(chord, PEERS), timeout=RING_SECONDS, interval=3,
               what=f"one correct ring of {PEERS} peers over {HOSTS} hosts")
    formed = time.monotonic() - healthy
    peers = running_peers(chord)
    assert len(peers) == PEERS
    spread = Counter(m.info.host for m in chord.machines() if m.info.role == "chord")
    assert len(spread) == HOSTS and min(spread.values()) >= PEERS // (2 * HOSTS), spread
    print(f"one ring {formed:.0f} s after healthy; peers per host {dict(sorted(spread.items()))}")
    rng = random.Random(14)
    for key, value in KEYS.items():
        stub_of(chord, rng.choice(peers)).Put(chord_pb2.PutRequest(key=key, value=value),
                                              timeout=10)
    assert not unread_keys(chord, KEYS, peers)
    ring = distlab(REPO, "chord", "ring")
    assert f"one consistent ring of {PEERS} peers" in ring.stdout, show(ring)
