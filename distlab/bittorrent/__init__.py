"""The BitTorrent lab on the host: `distlab bt ...` and, later, its workloads and checks.

`torrents` makes .torrent files (`distlab bt make-torrent`) with the codec and metainfo
model the machines use (nodes.bittorrent), `cli` is the `bt` command group, and `lab`
registers both with distlab.registry. The tracker machine is nodes.tracker.
"""
