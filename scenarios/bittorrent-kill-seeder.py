"""Kill the only seeder once every piece exists somewhere among the leechers.

What YAML cannot say: the moment of the kill is a state of the swarm, not a
time - the first poll at which the leechers' verified pieces, put together,
cover the whole torrent (PeerStatus.have). Killed earlier, a piece might be
lost with the seeder; killed later, the leechers would be done already.
"""

import time

from distlab.bittorrent.download import SEEDER_SERVICE
from distlab.bittorrent.swarm import fetch_swarm, pieces_spread
from distlab.errors import DistlabError

SCENARIO = """
name: bittorrent-kill-seeder
description: >
  Every leecher starts its download with the run; the seeder's upload is
  capped at 512 KiB/s and each leecher's at 128 KiB/s, so the seeder hands out
  each piece about once and the leechers trade the rest. As soon as every piece
  is held by at least one leecher, the seeder (the only one) is killed (kill -9)
  and stays down to the end of the run. Expect the leechers to finish among
  themselves, every one with the seed's bytes (the pieces check compares each
  one's SHA-256 with the one the seeder reported at the start).
lab: bittorrent
environment:
  DISTLAB_SEEDER_UPLOAD_RATE: 524288
  DISTLAB_LEECHER_UPLOAD_RATE: 65536
seed: 32
duration: 90s
short_duration: 40s
workloads:
  - type: download
checks: [pieces]
"""

SPREAD_WAIT_SECONDS = 45.0
POLL_SECONDS = 0.5


def run(ctx):
    deadline = ctx.now() + SPREAD_WAIT_SECONDS
    while ctx.now() < deadline:
        machines = ctx.lab_machines()
        seeders = [m.name for m in machines if m.info.service == SEEDER_SERVICE]
        views, _ = fetch_swarm(m for m in machines if m.info.service != SEEDER_SERVICE)
        held, total = pieces_spread(views)
        if total and held == total:
            if all(view.status.complete for view in views):
                raise DistlabError("the leechers finished before the seeder could be killed",
                                   hint="lower DISTLAB_SEEDER_UPLOAD_RATE in the scenario")
            progress = ", ".join(f"{view.machine} {view.status.progress:.0%}"
                                 for view in sorted(views, key=lambda v: v.machine))
            ctx.say(f"t={ctx.now():6.1f}s  every piece is at some leecher ({progress})")
            for seeder in seeders:
                ctx.fault("kill", seeder)
            return
        time.sleep(POLL_SECONDS)
    raise DistlabError(f"the pieces had not spread to the leechers after "
                       f"{SPREAD_WAIT_SECONDS:g} s: not killing the only seeder",
                       hint="see `distlab bt swarm`")
