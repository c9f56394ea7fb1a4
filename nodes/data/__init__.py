"""The data role: one replica of the tiers lab's chain-replicated data tier.

store.py (the key-value state machine), chain.py (one replica's view of the
chain), wal.py (its durable files), service.py (gRPC and the membership
thread), client.py (what the app tier calls). The chain's configuration is
kept by nodes.datamaster.
"""
