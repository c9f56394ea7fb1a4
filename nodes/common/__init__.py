"""The node contract, implemented once: config, logs, metrics, RPC faults, server and client."""
