"""nodes/chord/peer.py: the pure helpers of the gRPC peer (the peer itself runs in
tests/integration/test_chord_*.py)."""

import pytest

from nodes.chord.__main__ import SPEC
from nodes.chord.keyspace import Entry
from nodes.chord.peer import TRANSFER_BATCH_BYTES, address_order, batches
from nodes.common.config import ConfigError
from nodes.common.server import NodeServer


def test_addresses_sort_numerically_by_ip_then_port():
    addresses = ["10.0.0.10:50051", "10.0.0.9:50051", "10.0.0.9:7", "chord:1"]
    assert sorted(addresses, key=address_order) == \
        ["10.0.0.9:7", "10.0.0.9:50051", "10.0.0.10:50051", "chord:1"]


def test_transfers_are_cut_into_bounded_batches():
    big = [Entry(f"k{i}", i, b"x" * (TRANSFER_BATCH_BYTES // 3), 1) for i in range(7)]
    sent = list(batches(big))
    assert [len(b) for b in sent] == [2, 2, 2, 1]
    assert [e for b in sent for e in b] == big
    assert list(batches([])) == []


@pytest.mark.parametrize("env, message", [
    ({"CHORD_REPLICAS": "9", "CHORD_SUCCESSORS": "4"}, "CHORD_REPLICAS=9 must not exceed"),
    ({"CHORD_ID": "zz"}, "CHORD_ID: id 'zz' is not a hex number"),
    ({"CHORD_BITS": "8", "CHORD_ID": "100"}, "CHORD_ID: id '100' is out of range"),
    ({"CHORD_BITS": "161"}, "CHORD_BITS='161' must be between 1 and 160"),
    ({"CHORD_TOMBSTONE_GRACE_SECONDS": "60"},  # 2 repairs of 30 x 1 s stabilize rounds
     "CHORD_TOMBSTONE_GRACE_SECONDS=60.0 must exceed 2 repair periods"),
])
def test_bad_settings_are_refused_naming_the_variable(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        NodeServer(SPEC, {"NODE_NAME": "c", "DATA_DIR": str(tmp_path), **env})
