"""python -m nodes.data — one chain-replication replica of the data tier (see --help)."""

import sys

from nodes.common.auth import service_methods
from nodes.common.config import Setting, one_of, parse_bool, positive
from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.data.service import ACK_AT_TAIL, ACK_MODES, DataNode
from nodes.rpc import chain_pb2

#: Every method: see "who may call what" in nodes/data/__init__.py.
PROTECTED = (service_methods(chain_pb2.DESCRIPTOR.services_by_name["Replica"])
             | service_methods(chain_pb2.DESCRIPTOR.services_by_name["Data"]))

SPEC = RoleSpec(
    name="data",
    summary="a chain-replication replica (van Renesse & Schneider, OSDI 2004): Txn at the head, "
            "Read at the tail, every update fsync'd by every replica before the head answers; "
            "the chain's configuration comes from the data-master.",
    settings=(
        Setting("DATA_MASTER", str, "data-master:50051",
                "host:port of the data-master this replica registers with"),
        Setting("DATA_ADVERTISE_ADDRESS", str, "",
                "host or host:port the other replicas and clients reach this replica at "
                "(default: this machine's IP and the gRPC port it listens on)"),
        Setting("DATA_MAX_VALUE_BYTES", int, 1024 * 1024,
                "largest value a put (or a VALUE compare) may carry; at most half of "
                "MAX_MESSAGE_BYTES", positive),
        Setting("DATA_MAX_TXN_OPS", int, 128,
                "most compares, puts and deletes one Txn may hold together", positive),
        Setting("DATA_MAX_READ_LIMIT", int, 10000,
                "most keys one Read may name, and the largest prefix limit it may ask",
                positive),
        Setting("DATA_MEMBERSHIP_CHECK_SECONDS", float, 1.0,
                "how often the replica asks the data-master whether it is still in the chain "
                "(and retries registering while it is not)", positive),
        Setting("DATA_RECENT_UPDATES", int, 10000,
                "updates kept in memory to catch a lagging successor up; one further behind "
                "gets the whole state", positive),
        Setting("DATA_WAL_COMPACT_UPDATES", int, 10000,
                "updates appended to the write-ahead log before it is rewritten as one snapshot "
                "(and at least as many as there are keys)",
                positive),
        Setting("DATA_TRANSFER_TIMEOUT_SECONDS", float, 30.0,
                "deadline of a full-state transfer (Sync to a joiner, Install into a successor)",
                positive),
        Setting("DATA_INSTALL_MAX_BYTES", int, 512 * 1024 * 1024,
                "most bytes of state one full-state stream (Install from a predecessor, Sync "
                "from the tail) may carry; past it the stream is refused RESOURCE_EXHAUSTED "
                "and nothing of it is kept", positive),
        Setting("DATA_SPARE", parse_bool, False,
                "start as a spare: empty, registered with no master, serving nothing until a "
                "live migration (Replica.MigrateOut on a member) commits into it; a disk that "
                "holds a migrated-in state overrides it"),
        Setting("DATA_MIGRATION_TIMEOUT_SECONDS", float, 300.0,
                "deadline of a whole live migration out of this replica", positive),
        Setting("DATA_ACK_AT", str, ACK_AT_TAIL,
                "where a Txn is acknowledged: tail (correct: once every replica holds it) or "
                "head (DELIBERATELY BROKEN, for checking checkers: see docs/scenarios.md; "
                "stale reads and lost writes follow); Reconfigure ack_at changes it at run time",
                one_of(*ACK_MODES)),
    ),
    build=DataNode,
    protected=PROTECTED,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
