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


# A client's answer to a busy or rerouting peer: ask again. A wrong value or NOT_FOUND is not
# retried: that is what a lost or stale key looks like.
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def unread_keys(testbed, values: dict[str, bytes], peers: list[str], *, tries: int = 3,
                timeout: float = 5.0) -> list[str]:
    """The reads of `values` through `peers` that did not return the value stored, each as
    "peer key: why" (empty: every key readable from every peer). A peer that is slow under
    CPU starvation, or answers UNAVAILABLE while ownership moves, is asked up to `tries`
    times before its read counts as failed."""
    failed = []
    for name in peers:
        stub = stub_of(testbed, name)
        for key, value in values.items():
            for attempt in range(tries):
                try:
                    got = stub.Get(chord_pb2.GetRequest(key=key), timeout=timeout).value
                    if got != value:
                        failed.append(f"{name} {key}: read {got!r}, stored {value!r}")
                    break
                except grpc.RpcError as exc:
                    if exc.code() not in TRANSIENT or attempt == tries - 1:
                        failed.append(f"{name} {key}: {exc.code().name} after {attempt + 1} "
                                      f"tries: {exc.details()}")
                        break
    return failed
