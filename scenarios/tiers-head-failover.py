"""Kill the data chain's head and measure how long writes stay unacknowledged.

What YAML cannot say: the fault's target is whoever is head at that moment,
and the verdict is a measurement taken from the history - the time from the
kill to the first write acknowledged after it - held against a limit.
"""

from distlab.checkers import Verdict
from distlab.history import OK

SCENARIO = """
name: tiers-head-failover
description: >
  Kill -9 whichever data replica is the chain's head, keep it down, and
  measure how long after the kill the first write is acknowledged again
  (the data-master must notice, promote the successor, and clients must
  learn the new configuration). Expect writes back within 10 s, and the
  register linearizable throughout.
lab: tiers
seed: 7
duration: 30s
short_duration: 18s
workloads:
  - type: register
    processes: 3
    keys: 2
    rate: 60
checks: [linearizable]
"""

KILL_AT_SECONDS = 4.0
LIMIT_SECONDS = 10.0


def run(ctx):
    ctx.sleep_until(KILL_AT_SECONDS)
    window = ctx.fault("kill", "chain:head")
    ctx.sleep_until(window.start + LIMIT_SECONDS + 2)
    acknowledged = sorted(op.complete for op in ctx.history.of("write", OK)
                          if op.invoke >= window.start)
    name = f"writes acknowledged again within {LIMIT_SECONDS:g} s of killing the head"
    if not acknowledged:
        ctx.check(Verdict(name, False, [f"no write acknowledged in the "
                                        f"{ctx.now() - window.start:.1f} s after the kill"]))
        return
    gap = acknowledged[0] - window.start
    verdict = Verdict(name, gap <= LIMIT_SECONDS,
                      [] if gap <= LIMIT_SECONDS else [f"the first took {gap:.2f} s"],
                      {"first_write_after_kill_seconds": round(gap, 3),
                       "killed": ",".join(window.machines)})
    ctx.check(verdict)
