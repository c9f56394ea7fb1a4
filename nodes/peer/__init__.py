"""The BitTorrent peer role: `python -m nodes.peer`, a seeder or leecher of one torrent.

`service` is the node (the torrent, the data directory, gRPC status, metrics),
`engine` the asyncio adapter that drives the sans-I/O session cores
(nodes.bittorrent.session) over TCP and announces to the tracker (`announce`),
`limits` the token buckets behind the rate caps, `pieces` the counting store and
the test modes (corrupt, free-rider).
"""
