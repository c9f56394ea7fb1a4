"""python -m nodes.datamaster — the data tier's chain configuration master (see --help)."""

import sys

from nodes.common.auth import service_methods
from nodes.common.config import Setting, non_negative, one_of, positive
from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.datamaster.service import DataMasterNode
from nodes.rpc import chain_pb2

#: Every method: see "who may call what" in nodes/datamaster/__init__.py.
PROTECTED = service_methods(chain_pb2.DESCRIPTOR.services_by_name["Master"])

SPEC = RoleSpec(
    name="datamaster",
    summary="the data tier's master: keeps the chain configuration (epoch and members, head "
            "first) on disk, lets replicas register and join at the tail, health-checks members "
            "and takes out the ones that fail, and pushes every change to the chain.",
    settings=(
        Setting("CHAIN_CHECK_INTERVAL_SECONDS", float, 0.2,
                "how often every chain member is health-checked (and unacknowledged "
                "configurations pushed again)", positive),
        Setting("CHAIN_CHECK_TIMEOUT_SECONDS", float, 0.5,
                "deadline of one health check of a member (past it, the check is silence)",
                positive),
        Setting("CHAIN_CHECK_DETECTOR", str, "phi",
                "phi: phi accrual for silence, CHAIN_CHECK_FALL for refusals; fixed: every "
                "failed or timed-out check counts, CHAIN_CHECK_FALL in a row (the old "
                "detector, for comparison)", one_of("phi", "fixed")),
        Setting("CHAIN_CHECK_FALL", int, 1,
                "checks answered no in a row (connection refused, an error, not serving) "
                "before a member is taken out of the chain", positive),
        Setting("CHAIN_CHECK_PHI_THRESHOLD", float, 8.0,
                "suspicion (phi) at which a silent member is taken out", positive),
        Setting("CHAIN_CHECK_ACCEPTABLE_PAUSE_SECONDS", float, 1.0,
                "silence forgiven on top of a member's usual rhythm before phi grows",
                non_negative),
        Setting("CHAIN_CONFIGURE_TIMEOUT_SECONDS", float, 10.0,
                "deadline of one configuration push (it includes the member bringing its new "
                "successor up to date)", positive),
    ),
    build=DataMasterNode,
    protected=PROTECTED,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
