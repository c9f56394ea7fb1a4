"""The kv role: a small durable key-value store, the foundation lab's machine."""
