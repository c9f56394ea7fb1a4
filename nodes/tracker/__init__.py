"""The tracker role: the BitTorrent lab's HTTP tracker (`python -m nodes.tracker`).

`swarm` (who is in which swarm; announce, scrape, expiry) and `protocol` (query
strings in, bencoded replies out) are sans-I/O; `http` serves them as BEP 3 announce
and BEP 48 scrape on TRACKER_HTTP_PORT (6969) and `udp` as BEP 15 on TRACKER_UDP_PORT
(6969/udp), so real clients (aria2, libtorrent) use this tracker as they would any
other; `service` is the node: the HTTP tracker,
metrics, and the gRPC `Tracker` status service.

Who may call what: announce and scrape (HTTP and UDP) are open to every client, as trackers
are. The gRPC `Tracker` service is read-only and open too: it says what announce and
scrape already tell anyone on the network (swarm counts, peer addresses and ids).
Only `Control` needs the lab credential.
"""
