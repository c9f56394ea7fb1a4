"""The data role: one replica of the tiers lab's chain-replicated data tier.

store.py (the key-value state machine), chain.py (one replica's view of the
chain), wal.py (its durable files), service.py (gRPC and the membership
thread), client.py (what the app tier calls). The chain's configuration is
kept by nodes.datamaster.

Who may call what (`PROTECTED` in __main__.py needs the lab credential):
every method. `Replica` (Forward, Sync, Install, Configure) is called by
the predecessor, a joiner and the data-master only. `Data` (Txn, Read) is
the app tier's database, called by app servers and the host's tests: as a
real service's database, it is not open to the lab's clients (who reach the
Bank and KV services of the app tier), and left open it would let anyone
set a balance with one Txn, whatever Forward refuses.
"""
