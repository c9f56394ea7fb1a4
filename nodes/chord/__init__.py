"""The Chord role: a distributed hash table on a ring of identifiers (`python -m nodes.chord`).

`ring` (identifier maths, key ownership), `membership` (one node's view of the
ring and the protocol steps: lookup, join, stabilize, rectify, fix_fingers,
check_predecessor) and `keyspace` (stored entries and their versions) are
sans-I/O: the gRPC peer (`peer`) and the host-side simulator
(`distlab.chord.sim`) drive the very same classes.
"""
