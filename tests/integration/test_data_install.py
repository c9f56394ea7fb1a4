"""Install (a predecessor pushing its whole state) is bounded: a stale sender is refused on
its first chunk, a stream past DATA_INSTALL_MAX_BYTES is refused, a normal one still works.

What a user would notice: a replica whose memory grows by the size of a stream it
should have refused at once, or a replica that took a removed head's state.
"""

import grpc
import pytest

from nodes.rpc import chain_pb2
from tests.integration.chain_support import put, start_tier

CHUNK_VALUE = b"x" * 1000  # REPLICA_ENV caps values at 1024 bytes and messages at 64 KiB
ENTRIES_PER_CHUNK = 60


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class Stream:
    """`count` chunks of about 60 KB each, made one at a time; counts what gRPC took."""

    def __init__(self, count: int, *, epoch: int, seq: int) -> None:
        self.count, self.epoch, self.seq = count, epoch, seq
        self.taken = 0

    def __iter__(self):
        for n in range(self.count):
            self.taken += 1
            yield chain_pb2.SyncChunk(
                entries=[chain_pb2.KeyValue(key=f"i/{n}/{e}", value=CHUNK_VALUE, version=1)
                         for e in range(ENTRIES_PER_CHUNK)],
                seq=self.seq, epoch=self.epoch, last=n == self.count - 1)


def test_a_stale_install_is_refused_at_its_first_chunk_without_reading_the_rest(lab):
    tier = start_tier(lab, ("data-1", "data-2"))
    config = tier.wait_for_chain(["data-1", "data-2"])
    assert config.epoch >= 2
    before = rss_bytes()
    stream = Stream(1500, epoch=config.epoch - 1, seq=10**6)  # about 90 MB if all read
    with pytest.raises(grpc.RpcError) as caught:
        tier.replica("data-2").Install(iter(stream), timeout=30)
    grown = rss_bytes() - before
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "first chunk" in caught.value.details()
    assert "stale epoch" in caught.value.details()
    # The server stopped reading: flow control kept the rest at the sender, unmade.
    assert stream.taken < 150, f"{stream.taken} of 1500 chunks were read"
    assert grown < 40 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB"
    assert tier.status(tier.replicas["data-2"])["last_seq"] == "0"


def test_an_install_past_the_byte_cap_is_refused_and_nothing_of_it_is_kept(lab):
    tier = start_tier(lab, ("data-1",), replica_env={"DATA_INSTALL_MAX_BYTES": "300000"})
    config = tier.wait_for_chain(["data-1"])
    stream = Stream(200, epoch=config.epoch, seq=5)
    with pytest.raises(grpc.RpcError) as caught:
        tier.replica("data-1").Install(iter(stream), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "DATA_INSTALL_MAX_BYTES=300000" in caught.value.details()
    assert stream.taken < 50
    status = tier.status(tier.replicas["data-1"])
    assert (status["last_seq"], status["keys"]) == ("0", "0")


def test_a_normal_install_replaces_the_state(lab):
    tier = start_tier(lab, ("data-1",))
    config = tier.wait_for_chain(["data-1"])
    tier.client().txn(put(("old", b"1")))
    reply = tier.replica("data-1").Install(iter(Stream(3, epoch=config.epoch, seq=7)),
                                           timeout=30)
    assert reply.last_seq == 7
    found = tier.data("data-1").Read(chain_pb2.ReadRequest(keys=["old", "i/0/0", "i/2/59"]),
                                     timeout=5)
    assert [entry.key for entry in found.found] == ["i/0/0", "i/2/59"] and found.seq == 7
    assert tier.status(tier.replicas["data-1"])["keys"] == str(3 * ENTRIES_PER_CHUNK)
