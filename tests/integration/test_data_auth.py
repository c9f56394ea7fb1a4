"""The data tier against callers without the lab credential, and against bad internal requests.

Issue 17's attacks on the tiers lab, each replayed against a real data tier (and
a Bank over it) on loopback: a forged Replica.Forward, a forged Register moving a
member, a Control.Reconfigure into the broken mode. Each is refused, and what a
user would notice (the balance, every replica's keys and seq, the chain's
members and mode, deposits working) is unchanged. A caller holding the
credential still gets INVALID_ARGUMENT for what a client's txn could not do.
"""

from __future__ import annotations

import json
import time

import grpc
import pytest

from nodes.app.bank import account_key
from nodes.rpc import (
    bank_pb2,
    bank_pb2_grpc,
    chain_pb2,
    chain_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
)
from tests.integration.app_support import AppTier
from tests.integration.chain_support import free_port, put, start_tier

REPLICA_LIMITS = {"DATA_MAX_TXN_OPS": "16", "DATA_MAX_READ_LIMIT": "1000",
                  "DATA_MAX_VALUE_BYTES": "1024"}
APP_TIER = AppTier(REPLICA_LIMITS)
NAMES = ("data-1", "data-2")


@pytest.fixture
def tier(lab):
    tier = APP_TIER.start_tier(lab, NAMES)
    yield tier
    tier.close()


@pytest.fixture
def bank(lab, tier) -> bank_pb2_grpc.BankStub:
    app = APP_TIER.start_app(lab, tier, "app-1")
    stub = bank_pb2_grpc.BankStub(lab.channel(app))
    stub.OpenAccount(bank_pb2.OpenAccountRequest(account="alice", initial_cents=100), timeout=10)
    return stub


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    return caught.value


def every_replica(tier) -> tuple[dict[str, tuple[str, str]], dict[str, bytes]]:
    """Each replica's last seq and key count (its Status), and every key and value the
    tail holds (a full Sync from it)."""
    counts = {name: (status["last_seq"], status["keys"])
              for name in NAMES for status in [tier.status(tier.replicas[name])]}
    chunks = tier.replica(NAMES[-1]).Sync(chain_pb2.SyncRequest(), timeout=5)
    return counts, {entry.key: entry.value for chunk in chunks for entry in chunk.entries}


def next_update(tier, *puts: tuple[str, bytes]) -> chain_pb2.Update:
    """The update the head would send next, as a caller that read the chain's Status forges it."""
    status = tier.status(tier.replicas["data-2"])
    return chain_pb2.Update(seq=int(status["last_seq"]) + 1, epoch=int(status["epoch"]),
                            puts=[chain_pb2.KeyValue(key=k, value=v) for k, v in puts])


def test_a_forward_without_the_credential_leaves_the_balance_alone(lab, tier, bank):
    before = every_replica(tier)
    rich = json.dumps({"balance": 10**12, "lines": 1}).encode()
    forged = next_update(tier, (account_key("alice"), rich))
    stranger = chain_pb2_grpc.ReplicaStub(lab.bare_channel(tier.replicas["data-2"]))

    error = refused(stranger.Forward, forged)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "this call needs the lab credential"
    assert every_replica(tier) == before
    assert bank.Balance(bank_pb2.BalanceRequest(account="alice"), timeout=10).balance_cents == 100
    refusals = lab.scrape(tier.replicas["data-2"])
    assert refusals.get("distlab_auth_refused_total",
                        method="/distlab.chain.Replica/Forward") == 1


@pytest.mark.parametrize("pair, fragment", [
    (("", b"v"), "put key must not be empty"),
    (("k" * 5000, b"v"), "5000 characters; the limit is 256"),
    (("big", b"v" * 1025), "1025 bytes; the limit is 1024"),
], ids=["empty key", "5000-character key", "oversize value"])
def test_a_forward_with_the_credential_is_held_to_a_txns_limits(tier, pair, fragment):
    before = every_replica(tier)
    error = refused(tier.replica("data-2").Forward, next_update(tier, pair))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details() and "Traceback" not in error.details()
    assert every_replica(tier) == before


def test_a_forward_from_an_epoch_the_master_never_reached_is_refused(tier):
    before = every_replica(tier)
    forged = next_update(tier, ("rogue", b"x"))
    forged.epoch += 1000
    error = refused(tier.replica("data-2").Forward, forged)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"epoch {forged.epoch} is unknown" in error.details()
    assert every_replica(tier) == before


@pytest.mark.parametrize("method", ["Data/Txn", "Data/Read", "Replica/Sync", "Replica/Install",
                                    "Replica/Configure", "Master/GetConfig", "Master/Register"])
def test_every_data_tier_method_needs_the_credential(lab, tier, method):
    service, name = method.split("/")
    node = tier.master if service == "Master" else tier.replicas["data-1"]
    channel = lab.bare_channel(node)
    path = f"/distlab.chain.{service}/{name}"
    with pytest.raises(grpc.RpcError) as caught:
        if name == "Install":
            channel.stream_unary(path)(iter([b""]), timeout=5)
        elif name == "Sync":
            list(channel.unary_stream(path)(b"", timeout=5))
        else:
            channel.unary_unary(path)(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_forged_register_does_not_move_a_member_that_still_serves(lab, tier, bank):
    config = tier.master_config()
    forged = chain_pb2.RegisterRequest(
        member=chain_pb2.ChainMember(name="data-1", address=f"127.0.0.1:{free_port()}"),
        member_epoch=1)

    stranger = chain_pb2_grpc.MasterStub(lab.bare_channel(tier.master))
    assert refused(stranger.Register, forged).code() == grpc.StatusCode.UNAUTHENTICATED
    # Even with the credential: data-1 answers at its address as the head.
    master = chain_pb2_grpc.MasterStub(lab.channel(tier.master))
    error = refused(master.Register, forged)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "data-1 still serves at" in error.details()
    # Asking it to rejoin from scratch (no member state) is refused the same way.
    forged.member_epoch = 0
    assert refused(master.Register, forged).code() == grpc.StatusCode.FAILED_PRECONDITION

    assert tier.master_config() == config
    deposit = bank.Deposit(bank_pb2.DepositRequest(account="alice", amount_cents=5,
                                                   idempotency_key="after-forgery",
                                                   issued_at_unix_ms=int(time.time() * 1000)),
                           timeout=10)
    assert deposit.balance_cents == 105


def test_a_member_restarted_at_a_new_address_still_moves_there(lab):
    tier = start_tier(lab, NAMES, master_env={"CHAIN_CHECK_FALL": "100000"})  # kept listed
    tier.client().txn(put(("k", b"v")))
    old_address = tier.master_config().chain[0].address
    tier.kill("data-1")
    tier.start_replica("data-1")  # the same disk, a new port: its old address is dead

    config = tier.wait_for_chain(list(NAMES))
    assert config.chain[0].address == lab.address(tier.replicas["data-1"]) != old_address
    assert tier.client().txn(put(("k2", b"v"))).succeeded
    assert tier.client().read(chain_pb2.ReadRequest(keys=["k"])).found[0].value == b"v"


def test_reconfigure_and_restore_without_the_credential_change_nothing(lab, tier):
    client = tier.client()
    client.txn(put(("k", b"v")))
    head = tier.replicas["data-1"]
    control_stub = control_pb2_grpc.ControlStub(lab.bare_channel(head))
    error = refused(control_stub.Reconfigure,
                    control_pb2.ReconfigureRequest(settings={"ack_at": "head"}))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "ack_at" not in tier.status(head)  # still the correct mode
    assert lab.scrape(head).get("distlab_data_early_acks_total") == 0
    assert refused(control_stub.Restore, control_pb2.RestoreRequest(
        role="data", state=b"")).code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.read(chain_pb2.ReadRequest(keys=["k"])).found[0].value == b"v"
    assert client.txn(put(("k2", b"v"))).succeeded
