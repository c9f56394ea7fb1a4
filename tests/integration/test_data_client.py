"""DataClient and AsyncDataClient against a real data tier: routing, refresh, failures."""

import asyncio

import pytest

from nodes.common.server import NodeServer
from nodes.data.client import AsyncDataClient, DataClient, DataUnavailable
from nodes.rpc import chain_pb2
from tests.integration.chain_support import client_channels, free_port, put, start_tier
from tests.integration.conftest import address_of


def test_a_stale_configuration_is_refreshed_when_the_head_is_gone(lab):
    tier = start_tier(lab)
    client = tier.client()
    client.txn(put(("a", b"1")))
    assert client.config().chain[0].name == "data-1"
    tier.kill("data-1")
    tier.wait_for_chain(["data-2", "data-3"])
    assert client.txn(put(("b", b"2"))).succeeded  # data-1 refuses to connect: retried
    assert client.config().chain[0].name == "data-2"
    found = client.read(chain_pb2.ReadRequest(keys=["a", "b"]))
    assert [entry.key for entry in found.found] == ["a", "b"]


def test_without_a_master_the_client_fails_definitely():
    channels = client_channels()
    try:
        client = DataClient(f"127.0.0.1:{free_port()}", channels, timeout=1.0, attempts=3)
        with pytest.raises(DataUnavailable) as caught:
            client.txn(put(("a", b"1")))
    finally:
        channels.close()
    assert caught.value.definite
    assert "data-master" in str(caught.value)


def test_the_async_client_routes_and_survives_a_new_tail(lab):
    tier = start_tier(lab)

    async def scenario(master: NodeServer):
        client = AsyncDataClient(address_of(master), timeout=5.0, attempts=8, caller="app-1",
                                 credential=lab.credential)
        try:
            first = await client.txn(put(("a", b"1")))
            assert (await client.config()).epoch == tier.master_config().epoch
            await asyncio.to_thread(tier.kill, "data-3")
            await asyncio.to_thread(tier.wait_for_chain, ["data-1", "data-2"])
            found = await client.read(chain_pb2.ReadRequest(keys=["a"]))
            assert [(e.key, e.version) for e in found.found] == [("a", first.seq)]
            assert (await client.txn(put(("b", b"2")))).seq == first.seq + 1
        finally:
            await client.close()

    asyncio.run(scenario(tier.master))
