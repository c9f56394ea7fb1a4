"""python -m nodes.switch — the tiers lab's gRPC L7 load balancer (see --help).

The cluster's only entry point: clients call the switch, never a backend.
Run it with WORKERS well above the calls you expect in flight at once (the
tiers lab uses 64): each forwarded call holds a server thread while it waits.
"""

import sys

from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.switch.config import SETTINGS
from nodes.switch.node import SwitchNode

SPEC = RoleSpec(
    name="switch",
    summary="a gRPC L7 load balancer: forwards any method, as raw bytes, to SWITCH_BACKENDS "
            "(re-resolved, health-checked, outliers ejected) by round robin, least outstanding "
            "or consistent hash; retries idempotent methods within a budget; re-pointed at run "
            "time by Control.Reconfigure {backends, policy}. Set WORKERS to the calls in flight "
            "you expect (64 in the tiers lab).",
    settings=SETTINGS,
    build=SwitchNode,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
