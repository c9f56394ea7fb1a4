"""Fuzzing a BitTorrent peer's gRPC service (nodes.peer: PeerStatus) on a real node on loopback.

Status takes an empty request, so every body is unknown fields or garbage:
with the credential each is answered cleanly, without it each is refused
UNAUTHENTICATED. Then bodies at the message-size boundary; afterwards the
seeder still reports itself complete.
"""

from __future__ import annotations

import pytest

from nodes.peer.__main__ import SPEC as PEER_SPEC
from nodes.rpc import peer_pb2, peer_pb2_grpc
from tests.integration.fuzz.support import KINDS, Target, check_size_limit, fuzz, methods_of

LIMIT = 64 * 1024
METHODS = methods_of(peer_pb2.DESCRIPTOR.services_by_name["PeerStatus"])


@pytest.fixture(scope="module")
def seeder(shared_lab, tmp_path_factory):
    directory = tmp_path_factory.mktemp("peer-fuzz")
    return shared_lab.start("seeder-fuzz", spec=PEER_SPEC, data_dir=str(directory / "data"),
                            PEER_TORRENT=directory / "content.torrent",
                            PEER_SEED_PATH=directory / "content.bin", PEER_SEED_BYTES=64 * 1024,
                            PEER_TRACKER_URL="http://127.0.0.1:9/announce", PEER_PORT=0,
                            PEER_ANNOUNCE_RETRY_SECONDS=60, MAX_MESSAGE_BYTES=LIMIT)


def still_seeds(lab, node) -> None:
    status = peer_pb2_grpc.PeerStatusStub(lab.channel(node)).Status
    lab.wait_until(lambda: status(peer_pb2.StatusRequest(), timeout=5).complete,
                   what="the seeder complete")


@pytest.mark.parametrize("kind", KINDS)
def test_status_answers_every_body_cleanly(shared_lab, seeder, kind):
    fuzz(Target("peer", shared_lab.channel(seeder), METHODS), kind)
    fuzz(Target("peer-bare", shared_lab.bare_channel(seeder), METHODS, credentialed=False,
                protected=frozenset(PEER_SPEC.protected)), kind, examples=10)
    still_seeds(shared_lab, seeder)


def test_bodies_at_the_size_limit(shared_lab, seeder):
    check_size_limit(Target("peer", shared_lab.channel(seeder), METHODS), LIMIT)
    still_seeds(shared_lab, seeder)
