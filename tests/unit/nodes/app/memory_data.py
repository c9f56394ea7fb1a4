"""An in-memory data tier with protos/chain.proto's Txn and Read semantics, for the bank
core's unit tests, and `drive`, which runs a core operation against it. Test code only:
the app never ships a stand-in for the data tier.

`MemoryData.outages` scripts how the next Txns fail: "lost" applies the Txn
and loses its answer, "maybe" loses the Txn before it applies (both raise
DataTierDown(definite=False)), "refused" fails it certainly unapplied.
`read_outages` counts Reads that fail. `before_txn` runs before each Txn (a
competing writer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodes.app.bank import DataTierDown, Operation, Pause
from nodes.rpc import chain_pb2

READ_LIMIT = 10_000


@dataclass
class MemoryData:
    seq: int = 0
    data: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    outages: list[str] = field(default_factory=list)
    read_outages: int = 0
    before_txn: Callable[[MemoryData], None] | None = None
    txns: int = 0
    reads: int = 0
    pauses: list[float] = field(default_factory=list)

    def txn(self, request: chain_pb2.TxnRequest) -> chain_pb2.TxnReply:
        self.txns += 1
        if self.before_txn is not None:
            self.before_txn(self)
        outage = self.outages.pop(0) if self.outages else "ok"
        if outage == "refused":
            raise DataTierDown("injected: refused", definite=True)
        if outage == "maybe":
            raise DataTierDown("injected: lost before applying", definite=False)
        reply = self.apply(request)
        if outage == "lost":
            raise DataTierDown("injected: applied, answer lost", definite=False)
        return reply

    def apply(self, request: chain_pb2.TxnRequest) -> chain_pb2.TxnReply:
        for compare in request.compares:
            value, version = self.data.get(compare.key, (None, 0))
            if compare.target == chain_pb2.Compare.VERSION and version != compare.version:
                return chain_pb2.TxnReply(succeeded=False)
            if compare.target == chain_pb2.Compare.VALUE and value != compare.value:
                return chain_pb2.TxnReply(succeeded=False)
        self.seq += 1
        for put in request.puts:
            self.data[put.key] = (put.value, self.seq)
        for key in request.deletes:
            self.data.pop(key, None)
        return chain_pb2.TxnReply(succeeded=True, seq=self.seq)

    def read(self, request: chain_pb2.ReadRequest) -> chain_pb2.ReadReply:
        self.reads += 1
        if self.read_outages:
            self.read_outages -= 1
            raise DataTierDown("injected: read failed", definite=True)
        found = {key: self.data[key] for key in request.keys if key in self.data}
        truncated = False
        if request.prefix:
            matching = sorted(key for key in self.data if key.startswith(request.prefix))
            limit = request.limit or READ_LIMIT
            truncated = len(matching) > limit
            found.update({key: self.data[key] for key in matching[:limit]})
        return chain_pb2.ReadReply(
            found=[chain_pb2.KeyValue(key=key, value=value, version=version)
                   for key, (value, version) in found.items()],
            seq=self.seq, truncated=truncated)

    def answer(self, request: Any) -> Any:
        if isinstance(request, Pause):
            self.pauses.append(request.seconds)  # conflict backoff: no real wait in unit tests
            return None
        if isinstance(request, chain_pb2.TxnRequest):
            return self.txn(request)
        return self.read(request)


class Stepper:
    """One operation driven a step at a time, so a test can interleave several."""

    def __init__(self, operation: Operation[Any], data: MemoryData) -> None:
        self.operation = operation
        self.data = data
        self.pending: Any = None
        self.done = False
        self.result: Any = None
        self._resume(None, None)

    def step(self) -> None:
        """Answer the pending request (or fail it, as the data tier's script says)."""
        try:
            reply = self.data.answer(self.pending)
        except DataTierDown as down:
            self._resume(None, down)
        else:
            self._resume(reply, None)

    def _resume(self, reply: Any, down: DataTierDown | None) -> None:
        try:
            self.pending = (self.operation.throw(down) if down is not None
                            else self.operation.send(reply))
        except StopIteration as finished:
            self.done, self.result, self.pending = True, finished.value, None


def drive(operation: Operation[Any], data: MemoryData) -> Any:
    """Run `operation` to its end against `data`; BankError propagates."""
    stepper = Stepper(operation, data)
    while not stepper.done:
        stepper.step()
    return stepper.result
