"""python -m nodes.kv — a durable key-value store machine (see --help)."""

import sys

from nodes.common.config import Setting, positive
from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.kv.service import KVNode

SPEC = RoleSpec(
    name="kv",
    summary="a durable key-value store: Put/Get/Delete/List over gRPC, every write fsync'd "
            "to a write-ahead log under DATA_DIR before it is acknowledged.",
    settings=(Setting("KV_MAX_VALUE_BYTES", int, 1024 * 1024, "largest value accepted",
                      positive),
              Setting("KV_WAL_COMPACT_BYTES", int, 1024 * 1024,
                      "bytes appended to the write-ahead log before it is rewritten as one "
                      "snapshot (and at least as many as the values stored)", positive)),
    build=KVNode,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
