"""nodes/data/service.py: which ack_at a Reconfigure or DATA_ACK_AT may ask for."""

import pytest

from nodes.common.config import ConfigError
from nodes.common.role import RoleError
from nodes.common.server import NodeServer
from nodes.data.__main__ import SPEC
from nodes.data.service import ack_mode_from


@pytest.mark.parametrize("settings, expected", [
    ({"ack_at": "tail"}, "tail"),
    ({"ack_at": "head"}, "head"),
    ({}, None),  # asks for no change: Reconfigure only reports the mode
])
def test_the_two_modes_are_taken(settings, expected):
    assert ack_mode_from(settings) == expected


@pytest.mark.parametrize("settings, fragment", [
    ({"ack_at": "Head"}, "ack_at 'Head' is not one of tail"),
    ({"ack_at": ""}, "deliberately broken"),
    ({"policy": "x"}, "unknown setting 'policy': the data replica takes only ack_at"),
    ({"ack_at": "head", "b": "1", "a": "2"}, "unknown setting 'a', 'b'"),
])
def test_anything_else_is_refused_with_what_is_allowed(settings, fragment):
    with pytest.raises(RoleError, match=fragment):
        ack_mode_from(settings)


def test_a_bad_data_ack_at_is_refused_at_start(tmp_path):
    environ = {"NODE_NAME": "data-1", "DATA_DIR": str(tmp_path), "DATA_ACK_AT": "middle"}
    with pytest.raises(ConfigError, match="DATA_ACK_AT='middle' must be one of tail, head"):
        NodeServer(SPEC, environ)
