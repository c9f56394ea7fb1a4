"""Ports a test can name before the node that listens on them starts.

A port the kernel hands out for `bind(0)` comes from the ephemeral range, the
same range every outgoing connection's local port is drawn from: between
closing the probe and the node's bind, any connection (another peer joining,
a gRPC channel) may take it, and the node fails with "Failed to bind". These
helpers pick ports below the ephemeral range, which no outgoing connection
uses, and check each one is free now.
"""

from __future__ import annotations

import random
import socket

LOWEST = 20000  # clear of the well-known and registered ports most services sit on


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, spacing: int = 0) -> list[int]:
    """`count` consecutive free ports (and, with `spacing`, the same count again that many
    above each: a node's metrics port beside its gRPC port)."""
    top = _ephemeral_start() - count - spacing
    if top <= LOWEST:
        raise AssertionError(f"no room below the ephemeral range (starts at {top})")
    for _ in range(200):
        base = random.randrange(LOWEST, top)
        wanted = [*range(base, base + count)]
        if spacing:
            wanted += [port + spacing for port in wanted]
        if all(_free(port) for port in wanted):
            return list(range(base, base + count))
    raise AssertionError(f"no {count} free ports below {top}")


def free_port() -> int:
    return free_ports(1)[0]
