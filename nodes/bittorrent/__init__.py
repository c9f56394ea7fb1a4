"""What the BitTorrent lab's roles share: the bencoding codec and the metainfo (.torrent) model.

Sans-I/O: `bencode` turns values into bytes and back, `metainfo` builds, checks and
hashes a torrent's description, `content` lists and reads the files a torrent
describes. The tracker (`nodes.tracker`), the peers and the host's `distlab bt`
commands (`distlab.bittorrent`) all use these; nothing here imports `distlab`.

The peer's protocol cores, for the peer role: `layout` (pieces and 16 KiB blocks),
`wire` (BEP 3 messages), `picker`, `choker`, `store` (the one with file I/O, under
its own directory) and `session`, which ties them into events in, actions out.
"""
