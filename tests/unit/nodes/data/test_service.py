"""nodes/data/service.py: the address a replica advertises, and settings refused at start."""

import pytest

from nodes.common.config import ConfigError
from nodes.common.server import NodeServer
from nodes.data.__main__ import SPEC
from nodes.data.service import advertised_address


@pytest.mark.parametrize("configured, expected", [
    ("127.0.0.1", "127.0.0.1:50051"),
    ("data-2", "data-2:50051"),
    ("10.0.0.5:6000", "10.0.0.5:6000"),
])
def test_the_port_is_filled_in_when_the_setting_has_none(configured, expected):
    assert advertised_address(configured, 50051) == expected


def test_by_default_this_machines_address_and_the_listening_port():
    host, _, port = advertised_address("", 4321).rpartition(":")
    assert host and port == "4321"


def test_a_value_limit_that_cannot_fit_a_message_is_refused_at_start(tmp_path):
    environ = {"NODE_NAME": "data-1", "DATA_DIR": str(tmp_path), "MAX_MESSAGE_BYTES": "1000",
               "DATA_MAX_VALUE_BYTES": "600"}
    with pytest.raises(ConfigError, match="at most half of MAX_MESSAGE_BYTES=1000"):
        NodeServer(SPEC, environ)
