"""Reading a Chord lab in containers from the host: the ring check, the peers running,
a stub per peer, and whether every key reads back from every peer. Shared by the chord
e2e module and the scale test (tests/scale)."""

from __future__ import annotations

import grpc

from distlab.chord.ringmap import check_ring, fetch_states
from nodes.rpc import chord_pb2, chord_pb2_grpc


def one_ring(testbed, size: int):
    """The ring check when every running peer answers and they form one ring of `size`."""
    states, silent = fetch_states(testbed.machines())
    check = check_ring(states)
    return check if check.ok and not silent and len(check.ordered) == size else None


def running_peers(testbed) -> list[str]:
    return sorted((m.name for m in testbed.machines()
                   if m.info.role == "chord" and m.info.state == "running"),
                  key=lambda name: int(name.rsplit("-", 1)[1]))


def stub_of(testbed, name: str) -> chord_pb2_grpc.ChordStub:
    return chord_pb2_grpc.ChordStub(testbed.machine(name).refresh().channel())


def readable_everywhere(testbed, values: dict[str, bytes], peers: list[str]) -> bool:
    for name in peers:
        stub = stub_of(testbed, name)
        for key, value in values.items():
            try:
                if stub.Get(chord_pb2.GetRequest(key=key), timeout=5).value != value:
                    return False
            except grpc.RpcError:
                return False
    return True
