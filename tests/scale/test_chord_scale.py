"""64 Chord peers on this 2-core machine (issue 15): one correct ring within 120 s of the lab
being healthy — every peer's successor and predecessor right, every key readable from every
peer — and still one ring, every key still readable, after 10 minutes, with Prometheus
still answering every panel of the chord dashboards. Long, so it is kept out of `make test`:
`make test-scale` runs it (and CI does).
"""

from __future__ import annotations

import random
import time

import pytest

from distlab.chord.ringmap import assess_ring, fetch_states
from nodes.rpc import chord_pb2
from tests.e2e.chord_support import one_ring, running_peers, stub_of, unread_keys
from tests.e2e.conftest import assert_dashboards_answer, eventually, lab_fixture

pytestmark = [pytest.mark.e2e, pytest.mark.scale]
PEERS = 64
FORM_SECONDS = 120  # from healthy to one correct ring
STABLE_SECONDS = 600  # and then one ring for this long
CHECK_EVERY_SECONDS = 30
KEYS = {f"scale-{n}": f"value {n}".encode() for n in range(24)}

# Coming up is slow at this size on 2 cores (a Python gRPC process per peer to start and
# health-check): the bound is for the engine, the 120 s is what the test is about.
testbed = lab_fixture("chord", scale=[f"chord={PEERS}"], timeout=480)


@pytest.mark.timeout(STABLE_SECONDS + 900)
def test_sixty_four_peers_form_one_ring_and_keep_it_for_ten_minutes(testbed):
    healthy = time.monotonic()
    eventually(lambda: one_ring(testbed, PEERS), timeout=FORM_SECONDS, interval=2,
               what=f"one correct ring of {PEERS} peers within {FORM_SECONDS} s of healthy")
    formed = time.monotonic() - healthy
    peers = running_peers(testbed)
    assert len(peers) == PEERS
    rng = random.Random(15)
    for key, value in KEYS.items():
        stub_of(testbed, rng.choice(peers)).Put(chord_pb2.PutRequest(key=key, value=value),
                                                timeout=10)
    # A read pass (64 peers x 24 keys) takes one to two minutes on 2 cores. A DHT's reads
    # converge with its ring: a replica written while its peer was starved arrives with the
    # next repair. So a miss on the first pass is printed (it shows in CI's log), and every
    # key must then read back from every peer on a second pass.
    missed = unread_keys(testbed, KEYS, peers)
    if missed:
        print(f"\nfirst read pass: {len(missed)} reads missed: {missed[:10]}")
        time.sleep(10)
        missed = unread_keys(testbed, KEYS, peers)
        assert not missed, f"reads still missed on a second pass: {missed[:10]}"

    views = []
    until = time.monotonic() + STABLE_SECONDS
    while time.monotonic() < until:
        time.sleep(CHECK_EVERY_SECONDS)
        states, silent = fetch_states(testbed.machines())
        view = assess_ring(states, silent)
        views.append(f"{view.verdict.name}: {len(states)} answered, {len(silent)} silent"
                     + (f" ({'; '.join(view.reasons)})" if view.reasons else ""))
        assert view.verdict.name == "ONE" and view.check.ok, views
        assert len(view.check.ordered) == PEERS, views  # unread members included
    assert one_ring(testbed, PEERS), views
    assert not unread_keys(testbed, KEYS, peers)
    # Prometheus survived the ring: at 64 peers it was once OOM-killed by N^2 client series
    # (METRICS_PEER_LABELS), and the dashboards went blank.
    assert_dashboards_answer("chord")
    print(f"\n{PEERS} peers: one ring {formed:.1f} s after healthy; "
          f"{len(views)} checks over {STABLE_SECONDS} s, all one ring")
