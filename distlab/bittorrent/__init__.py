"""The BitTorrent lab on the host: `distlab bt ...` and, later, its workloads and checks.

`torrents` makes .torrent files (`distlab bt make-torrent`) with the codec and metainfo
model the machines use (nodes.bittorrent), `swarm` reads every peer machine's PeerStatus
(`distlab bt swarm`), `cli` is the `bt` command group, and `lab` registers it with
distlab.registry. The machines are nodes.tracker and nodes.peer.
"""
