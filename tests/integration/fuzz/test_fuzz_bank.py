"""Fuzzing the app role's Bank and KV services: threaded and asyncio servers, direct and
through the switch, over a real data tier on loopback.

Every input kind against every method of both services, on each app server
directly and through a switch in front of both; then bodies at the
message-size boundary. Afterwards each app server still opens an account
and reads its balance, and the switch still holds both backends healthy
with no ejection: a caller's garbage is the caller's fault.
"""

from __future__ import annotations

import random

import grpc
import pytest

from nodes.rpc import bank_pb2, bank_pb2_grpc, control_pb2, kv_pb2
from nodes.switch.__main__ import SPEC as SWITCH_SPEC
from tests.integration.app_support import AppTier
from tests.integration.fuzz.support import (
    KINDS,
    Target,
    call_raw,
    check_size_limit,
    fuzz,
    methods_of,
    rss_bytes,
)

LIMIT = 64 * 1024
METHODS = methods_of(bank_pb2.DESCRIPTOR.services_by_name["Bank"],
                     kv_pb2.DESCRIPTOR.services_by_name["KV"])
# One data-tier Read returns what an Audit or a KV List may ask for (1000 each).
APP_TIER = AppTier({"DATA_MAX_TXN_OPS": "16", "DATA_MAX_READ_LIMIT": "1000"},
                   MAX_MESSAGE_BYTES=LIMIT, APP_AUDIT_MAX_ACCOUNTS=1000)
tier, _ = APP_TIER.fixtures()


def cheap(method, body: bytes) -> bool:
    """Work costs what it asks for by design (up to 1 s of CPU, 10 s of waiting, the caps
    its own tests check): the fuzz keeps the bodies that ask for little."""
    if method.name != "Work":
        return True
    try:
        request = bank_pb2.WorkRequest.FromString(body)
    except Exception:  # noqa: BLE001 - undecodable bodies are the point of the fuzz
        return True
    return request.cpu_millis <= 20 and request.io_millis <= 100


@pytest.fixture(scope="module")
def apps(shared_lab, tier):
    return {architecture: APP_TIER.start_app(shared_lab, tier, f"app-{architecture}",
                                             architecture)
            for architecture in ("threaded", "async")}


@pytest.fixture(scope="module")
def switch(shared_lab, apps):
    lab = shared_lab
    node = lab.start("switch-fuzz", spec=SWITCH_SPEC, MAX_MESSAGE_BYTES=LIMIT,
                     SWITCH_BACKENDS=",".join(lab.address(app) for app in apps.values()),
                     SWITCH_HEALTH_INTERVAL_SECONDS=0.2, SWITCH_HEALTH_TIMEOUT_SECONDS=0.5)
    lab.wait_until(lambda: switch_state(lab, node)["backends"] == "2/2", what="both healthy")
    return node


def switch_state(lab, switch) -> dict[str, str]:
    return dict(lab.control(switch).Status(control_pb2.StatusRequest(), timeout=5).state)


@pytest.fixture(scope="module", params=["threaded", "async", "switch"])
def target(request, shared_lab, apps, switch):
    node = switch if request.param == "switch" else apps[request.param]
    return Target(request.param, shared_lab.bare_channel(node), METHODS, credentialed=False)


def still_serves(lab, node, account: str) -> None:
    bank = bank_pb2_grpc.BankStub(lab.bare_channel(node))
    try:
        bank.OpenAccount(bank_pb2.OpenAccountRequest(account=account, initial_cents=7),
                         timeout=10)
    except grpc.RpcError as error:  # opened by an earlier test of this module
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
    assert bank.Balance(bank_pb2.BalanceRequest(account=account), timeout=10).balance_cents == 7


def no_backend_ejected(lab, switch, apps) -> None:
    state = switch_state(lab, switch)
    metrics = lab.scrape(switch)
    for app in apps.values():
        assert state[f"backend.{lab.address(app)}"] == "healthy"
        assert metrics.get("distlab_switch_ejections_total", backend=lab.address(app)) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_bank_answers_every_body_cleanly(shared_lab, apps, switch, target, kind):
    fuzz(target, kind, keep=cheap)
    for node in (*apps.values(), switch):
        still_serves(shared_lab, node, f"fuzz-{target.name}")
    no_backend_ejected(shared_lab, switch, apps)


def test_bank_bodies_at_the_size_limit(shared_lab, apps, switch, target):
    check_size_limit(target, LIMIT, keep=cheap)
    still_serves(shared_lab, switch, "fuzz-boundary")
    no_backend_ejected(shared_lab, switch, apps)


def garbage_calls(channel, count: int, rng: random.Random) -> None:
    """`count` calls through `channel` of bodies no server can decode (field number 0 is
    illegal) or that only read, each answered cleanly."""
    readers = [m for m in METHODS if m.name in ("Balance", "Statement", "Get", "List")]
    for _ in range(count):
        method = rng.choice(METHODS if rng.random() < 0.5 else readers)
        if method in readers and rng.random() < 0.5:
            body = READ_BODIES[method.name]
        else:
            body = b"\x00" + rng.randbytes(rng.randrange(0, 512))
        outcome = call_raw(channel, method, body)
        outcome.check()


READ_BODIES = {
    "Balance": bank_pb2.BalanceRequest(account="nobody").SerializeToString(),
    "Statement": bank_pb2.StatementRequest(account="nobody", offset=3).SerializeToString(),
    "Get": kv_pb2.GetRequest(key="nothing").SerializeToString(),
    "List": kv_pb2.ListRequest(prefix="nothing/", limit=5).SerializeToString(),
}


def test_memory_stays_flat_across_thousands_of_calls_through_the_switch(shared_lab, apps,
                                                                         switch):
    """The switch, both app servers and the data tier run in this process: its RSS is theirs.
    After a warm-up, thousands more calls leave it where it was, give or take allocator
    noise (a leak of one request body per call would add megabytes)."""
    channel = shared_lab.bare_channel(switch)
    rng = random.Random(18)
    garbage_calls(channel, 500, rng)
    after_warm_up = rss_bytes()
    peaks = []
    for _ in range(3):
        garbage_calls(channel, 1000, rng)
        peaks.append(rss_bytes())
    growth = max(peaks) - after_warm_up
    print(f"\nRSS after warm-up {after_warm_up / 2**20:.1f} MiB, then "
          f"{[round(p / 2**20, 1) for p in peaks]} MiB every 1000 calls")
    assert growth < 8 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over 3000 calls"
    no_backend_ejected(shared_lab, switch, apps)
