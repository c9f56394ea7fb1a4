"""python -m nodes.peer — a BitTorrent peer machine, seeder or leecher (see --help)."""

import sys

from nodes.common.config import Setting, non_negative, one_of, port, positive
from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.peer.service import SERVICE_NAME, PeerNode

SPEC = RoleSpec(
    name="peer",
    summary="a BitTorrent peer (BEP 3 peer wire protocol, HTTP tracker announces): it trades "
            "the pieces of the torrent at PEER_TORRENT with the peers the tracker names and "
            "those that dial PEER_PORT, keeping them under DATA_DIR/NODE_NAME. A seeder is a "
            "peer whose data directory holds the whole file (or PEER_SEED_PATH, copied in); a "
            "restarted peer re-verifies what it has and fetches only the rest.",
    settings=(
        Setting("PEER_TORRENT", str, "", "path of the .torrent; when missing it is made from "
                "PEER_SEED_PATH, or waited for (a seeder elsewhere may write it)", required=True),
        Setting("PEER_SEED_PATH", str, "", "a file or directory to seed: copied into the data "
                "directory once, and made into PEER_TORRENT if that does not exist"),
        Setting("PEER_SEED_BYTES", int, 0, "when PEER_SEED_PATH does not exist, write this many "
                "random bytes there first (a lab's content without a file to mount)",
                non_negative),
        Setting("PEER_TRACKER_URL", str, "", "announce URL (http://); default: the torrent's "
                "own. Needed with PEER_SEED_PATH to make a torrent"),
        Setting("PEER_PIECE_BYTES", int, 0, "piece size when making a torrent (a power of two, "
                "16 KiB-64 MiB); 0: the smallest giving at most 2048 pieces", non_negative),
        Setting("PEER_PORT", int, 6881, "TCP port peers dial (0 picks a free one)", port),
        Setting("PEER_MODE", str, "normal", "normal; corrupt: serve blocks with a flipped byte "
                "(a test fault: others must ban it); free-rider: never upload. normal and "
                "corrupt also switch while the peer runs (Control Reconfigure)",
                one_of("normal", "corrupt", "free-rider")),
        Setting("PEER_UPLOAD_RATE_BYTES", int, 0, "upload cap of this machine in bytes/s "
                "(u_s or u_i); 0: none", non_negative),
        Setting("PEER_DOWNLOAD_RATE_BYTES", int, 0, "download cap of this machine in bytes/s "
                "(d_i); 0: none", non_negative),
        Setting("PEER_RECHOKE_SECONDS", float, 10.0, "tit-for-tat rechoke interval", positive),
        Setting("PEER_OPTIMISTIC_SECONDS", float, 30.0, "optimistic unchoke interval", positive),
        Setting("PEER_UPLOAD_SLOTS", int, 4, "peers unchoked by tit-for-tat at once, besides "
                "the optimistic one", positive),
        Setting("PEER_PIPELINE_DEPTH", int, 16, "16 KiB requests outstanding per peer",
                positive),
        Setting("PEER_KEEPALIVE_SECONDS", float, 90.0, "a keep-alive after this much of our "
                "own silence", positive),
        Setting("PEER_IDLE_TIMEOUT_SECONDS", float, 180.0, "a connection silent this long is "
                "closed", positive),
        Setting("PEER_MAX_PEERS", int, 50, "connections at once (dialled and accepted)",
                positive),
        Setting("PEER_NUMWANT", int, 50, "peers asked of the tracker per announce", positive),
        Setting("PEER_TICK_SECONDS", float, 1.0, "how often time-outs, keep-alives and the "
                "choker are looked at", positive),
        Setting("PEER_REDIAL_SECONDS", float, 5.0, "a known peer not connected is dialled "
                "again after this long", positive),
        Setting("PEER_ANNOUNCE_RETRY_SECONDS", float, 15.0, "after a failed announce, try "
                "again this much later (the tracker's interval otherwise)", positive),
    ),
    build=PeerNode,
    protected=frozenset({f"/{SERVICE_NAME}/Status"}),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
