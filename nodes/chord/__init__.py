"""The Chord role: a distributed hash table on a ring of identifiers (`python -m nodes.chord`).

`ring` (identifier maths, key ownership), `membership` (one node's view of the
ring and the protocol steps: lookup, join, stabilize, rectify, fix_fingers,
check_predecessor) and `keyspace` (stored entries and their versions) are
sans-I/O: the gRPC peer (`peer`) and the host-side simulator
(`distlab.chord.sim`) drive the very same classes.

Who may call what: clients call Lookup, Put, Get, Delete and State on any
peer, open to all (State is what the host's ring map reads). The rest is
called by peers only, and needs the lab credential (`PROTECTED` in
__main__.py): Route and Neighbours (steps of a lookup, stabilize),
Rectify and Leave (they change a peer's neighbours), Store, Fetch and
Transfer (they write or read entries as the owner or a replica, past the
client path's checks).
"""
