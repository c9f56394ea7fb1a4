"""python -m nodes.tracker — a BitTorrent HTTP tracker machine (see --help)."""

import sys

from nodes.common.config import Setting, port, positive
from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.tracker.service import TrackerNode

SPEC = RoleSpec(
    name="tracker",
    summary="a BitTorrent tracker: HTTP announce (BEP 3, compact peers BEP 23) and scrape "
            "(BEP 48) on TRACKER_HTTP_PORT, UDP (BEP 15) on TRACKER_UDP_PORT; swarms in "
            "memory, peers forgotten after missed announces; swarm status over gRPC.",
    settings=(
        Setting("TRACKER_HTTP_PORT", int, 6969, "port of the HTTP tracker (/announce, "
                "/scrape)", port),
        Setting("TRACKER_UDP_PORT", int, 6969, "port of the UDP tracker (BEP 15)", port),
        Setting("TRACKER_INTERVAL_SECONDS", int, 120, "`interval` told to clients: seconds "
                "between their announces", positive),
        Setting("TRACKER_MIN_INTERVAL_SECONDS", int, 30, "`min interval` told to clients",
                positive),
        Setting("TRACKER_MISSED_ANNOUNCES", int, 2, "a peer silent for this many intervals "
                "past its due announce is forgotten (defaults: after 360 s, longer than "
                "libtorrent's 300 s floor between announces)", positive),
        Setting("TRACKER_DEFAULT_NUMWANT", int, 50, "peers given when a client does not "
                "say how many", positive),
        Setting("TRACKER_MAX_NUMWANT", int, 200, "most peers given whatever numwant asks",
                positive),
        Setting("TRACKER_MAX_SCRAPE_HASHES", int, 100, "most info_hash values in one scrape",
                positive),
        Setting("TRACKER_MAX_SWARMS", int, 1000, "most swarms (torrents) tracked at once",
                positive),
        Setting("TRACKER_MAX_PEERS_PER_SWARM", int, 1000, "most peers tracked in one swarm",
                positive),
        Setting("TRACKER_HTTP_MAX_CONNECTIONS", int, 128, "HTTP requests served at once; "
                "more are closed at once", positive),
        Setting("TRACKER_HTTP_TIMEOUT_SECONDS", float, 10.0, "an HTTP connection silent this "
                "long is closed", positive),
    ),
    build=TrackerNode,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
