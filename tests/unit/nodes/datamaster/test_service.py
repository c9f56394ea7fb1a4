"""nodes/datamaster/service.py: the configuration file it starts from."""

import pytest

from nodes.common.config import ConfigError
from nodes.common.server import NodeServer
from nodes.datamaster.__main__ import SPEC


def test_a_configuration_file_that_does_not_parse_stops_the_start(tmp_path):
    (tmp_path / "data-master").mkdir()
    (tmp_path / "data-master" / "chain-config.binpb").write_bytes(b"\xff\xff not protobuf")
    with pytest.raises(ConfigError, match="is not a chain configuration"):
        NodeServer(SPEC, {"NODE_NAME": "data-master", "DATA_DIR": str(tmp_path)})
