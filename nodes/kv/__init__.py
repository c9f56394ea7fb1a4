"""The kv role: a small durable key-value store, the foundation lab's machine.

Who may call what: the `KV` service is the lab's data plane, open to every
client; only `Control` (snapshot, restore, faults) needs the lab credential.
"""
