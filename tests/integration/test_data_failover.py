"""How fast and how calmly the data-master finds a failed chain member (nodes.common.phi).

What a user notices: after the head dies, how long writes fail; while a member
is merely slow, whether it is thrown out of the chain (it then has to sync and
rejoin, and the chain is one copy short meanwhile). The old detector
(CHAIN_CHECK_DETECTOR=fixed) runs beside the new one as the baseline each
assertion is about. The bounds are generous: speed is measured in bench.failover.
"""

import time

import pytest

from nodes.data.client import DataUnavailable
from nodes.rpc import control_pb2
from tests.integration.chain_support import Writer, put, start_tier

Rule = control_pb2.FaultRule
#: Checks this far apart: the old detector's 3 failed checks in a row then need more than
#: 2 x 1.5 = 3 s after the kill whatever the machine's load, while a refused check is
#: enough for the new one.
SLOW_CHECKS = {"CHAIN_CHECK_INTERVAL_SECONDS": "1.5", "CHAIN_CHECK_TIMEOUT_SECONDS": "0.5"}
DETECTORS = {"phi": {"CHAIN_CHECK_DETECTOR": "phi", "CHAIN_CHECK_FALL": "1"},
             "fixed": {"CHAIN_CHECK_DETECTOR": "fixed", "CHAIN_CHECK_FALL": "3"}}
FAILOVER_BOUND_SECONDS = 3.0


def seconds_to_first_write_after(tier, killed: float, *, limit: float = 15.0) -> float:
    client = tier.client(timeout=1.0, attempts=8)
    while time.monotonic() - killed < limit:
        try:
            client.txn(put(("after-kill", b"1")))
            return time.monotonic() - killed
        except DataUnavailable:
            continue
    pytest.fail(f"no write acknowledged within {limit} s of the kill")


@pytest.mark.parametrize("detector", ["phi", "fixed"])
def test_writes_succeed_again_soon_after_the_head_is_killed(lab, detector):
    tier = start_tier(lab, master_env={**SLOW_CHECKS, **DETECTORS[detector]})
    tier.client().txn(put(("before", b"1")))
    killed = time.monotonic()
    tier.kill("data-1")
    elapsed = seconds_to_first_write_after(tier, killed)
    tier.wait_for_chain(["data-2", "data-3"])
    if detector == "phi":
        assert elapsed < FAILOVER_BOUND_SECONDS, f"first write {elapsed:.2f} s after the kill"
    else:  # the baseline: three failed checks, 1.5 s apart, cannot be quicker
        assert elapsed > FAILOVER_BOUND_SECONDS
    assert lab.scrape(tier.master).get("distlab_chain_reconfigurations_total",
                                       reason="failure") == 1


#: Checks 0.2 s apart with a 0.5 s deadline; phi forgives 3 s of silence on top.
CALM_CHECKS = {"CHAIN_CHECK_INTERVAL_SECONDS": "0.2", "CHAIN_CHECK_TIMEOUT_SECONDS": "0.5",
               "CHAIN_CHECK_ACCEPTABLE_PAUSE_SECONDS": "3.0"}
#: Every call to the slow replica waits 0.8 s (past the check's deadline) for 1.5 s: about
#: 2 s without a timely answer, well inside the pause.
SLOW_SPELL = Rule(action=Rule.DELAY, method="*", delay_seconds=0.8, duration_seconds=1.5)


@pytest.mark.parametrize("detector, taken_out", [("phi", False), ("fixed", True)])
def test_a_live_but_slow_replica_is_not_suspected(lab, detector, taken_out):
    settings = {**CALM_CHECKS, **DETECTORS[detector]}
    if detector == "fixed":
        settings["CHAIN_CHECK_FALL"] = "2"  # two timed-out checks in a row, within the spell
    tier = start_tier(lab, master_env=settings)
    with Writer(tier.client(timeout=5, attempts=8), "slow/") as writer:
        writer.wait_for_more(5, lab)
        lab.control(tier.replicas["data-2"]).AddFaultRule(SLOW_SPELL, timeout=5)
        time.sleep(5.0)  # the spell, and twice as long again for a verdict to come
        writer.wait_for_more(5, lab)
    failures = lab.scrape(tier.master).get("distlab_chain_reconfigurations_total",
                                           reason="failure")
    if taken_out:  # the baseline: a fixed count of timeouts throws the slow replica out
        assert failures >= 1
    else:
        assert failures == 0
        assert [m.name for m in tier.master_config().chain] == ["data-1", "data-2", "data-3"]
    writer.check(tier.client())
