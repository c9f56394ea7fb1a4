"""python -m nodes.chord — a Chord peer: a distributed hash table on a ring (see --help)."""

import sys

from nodes.chord.peer import ChordPeer
from nodes.chord.ring import MAX_BITS
from nodes.common.auth import service_methods
from nodes.common.config import Setting, comma_list, non_negative, parse_bool, positive
from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.rpc import chord_pb2

#: Peer-only methods: see "who may call what" in nodes/chord/__init__.py.
PROTECTED = service_methods(chord_pb2.DESCRIPTOR.services_by_name["Chord"], "Route",
                            "Neighbours", "Rectify", "Store", "Fetch", "Transfer", "Leave")


def _bits(value: int) -> str | None:
    return None if 1 <= value <= MAX_BITS else f"must be between 1 and {MAX_BITS}"


SPEC = RoleSpec(
    name="chord",
    summary="a Chord peer (Zave's correct Chord): Lookup/Put/Get/Delete from any peer, keys "
            "at their owner and replicated on the next CHORD_REPLICAS successors, in memory.",
    settings=(
        Setting("CHORD_BITS", int, 160, "identifiers are SHA-1 cut to this many bits "
                "(8 draws nicely; hashed ids may then collide: set CHORD_ID)", _bits),
        Setting("CHORD_SUCCESSORS", int, 8, "successor list length r (about 2*log2 of the "
                "ring size)", positive),
        Setting("CHORD_REPLICAS", int, 3, "copies of each key on the successors after its "
                "owner (<= CHORD_SUCCESSORS)", non_negative),
        Setting("CHORD_JOIN", comma_list, (), "peers to join through: DNS names or host:port "
                "(a Compose service name gives every replica); empty: found a ring alone"),
        Setting("CHORD_ID", str, "", "this peer's identifier in hex (default: SHA-1 of its "
                "advertised address)"),
        Setting("CHORD_ADVERTISE_HOST", str, "", "host other peers reach this one at "
                "(default: this machine's IP); the port is GRPC_PORT's"),
        Setting("CHORD_STABILIZE_SECONDS", float, 1.0, "period of stabilize", positive),
        Setting("CHORD_FIX_FINGERS_SECONDS", float, 0.5, "period of fix_fingers (one lookup "
                "each)", positive),
        Setting("CHORD_CHECK_PREDECESSOR_SECONDS", float, 2.0, "period of check_predecessor",
                positive),
        Setting("CHORD_MERGE_CHECK_SECONDS", float, 2.0, "how often a member asks a random "
                "CHORD_JOIN peer which ring it is in: rings born in a startup race merge, "
                "cycles left by a healed partition are woven together", positive),
        Setting("CHORD_HOP_TIMEOUT_SECONDS", float, 0.5, "deadline of routing and maintenance "
                "RPCs to a peer whose round trips are not measured yet; after that each "
                "peer's deadline is srtt + 4 rttvar of its answers (doubled after a timeout)",
                positive),
        Setting("CHORD_HOP_TIMEOUT_MIN_SECONDS", float, 0.1, "the shortest such deadline: how "
                "soon a dead peer is given up on", positive),
        Setting("CHORD_HOP_TIMEOUT_MAX_SECONDS", float, 2.0, "the longest: how long a peer "
                "starved of CPU is waited for", positive),
        Setting("CHORD_MAX_VALUE_BYTES", int, 64 * 1024, "largest value accepted", positive),
        Setting("CHORD_TOMBSTONE_GRACE_SECONDS", float, 300.0, "how long a deleted key's "
                "tombstone is kept (the owner also waits for a repair that reached every "
                "replica); more than 2 x 30 x CHORD_STABILIZE_SECONDS. A peer away longer "
                "can bring a deleted key back", positive),
        Setting("CHORD_GRACEFUL_LEAVE", parse_bool, True, "on SIGTERM hand owned keys to the "
                "successor and tell both neighbours (false: leave like a crash)"),
    ),
    build=ChordPeer,
    protected=PROTECTED,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
