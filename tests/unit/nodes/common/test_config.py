"""nodes/common/config.py: environment variables in, validated settings out."""

import pytest

from nodes.common.config import (
    COMMON_SETTINGS,
    ConfigError,
    Setting,
    comma_list,
    describe,
    load_settings,
    one_of,
    parse_bool,
    port,
    positive,
)


def test_defaults_when_nothing_is_set():
    values = load_settings(COMMON_SETTINGS, {})
    assert values["GRPC_PORT"] == 50051
    assert values["METRICS_PORT"] == 9100
    assert values["GRACE_SECONDS"] == 5.0
    assert values["PEERS"] == ()
    assert values["DATA_DIR"] == "/data"
    assert values["LOG_LEVEL"] == "info"
    assert set(values) == {setting.name for setting in COMMON_SETTINGS}


def test_empty_string_counts_as_unset():
    assert load_settings(COMMON_SETTINGS, {"GRPC_PORT": ""})["GRPC_PORT"] == 50051


def test_values_are_converted():
    values = load_settings(COMMON_SETTINGS, {
        "GRPC_PORT": "0", "GRACE_SECONDS": "1.5", "PEERS": " kv , 10.0.0.2:7000,,",
        "WORKERS": "4", "LOG_LEVEL": "debug",
    })
    assert values["GRPC_PORT"] == 0
    assert values["GRACE_SECONDS"] == 1.5
    assert values["PEERS"] == ("kv", "10.0.0.2:7000")
    assert values["WORKERS"] == 4
    assert values["LOG_LEVEL"] == "debug"


@pytest.mark.parametrize("raw, expected", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("False", False), ("no", False), ("off", False),
])
def test_bool_conversion(raw, expected):
    settings = (Setting("FLAG", parse_bool, False, "a flag"),)
    assert load_settings(settings, {"FLAG": raw}) == {"FLAG": expected}


@pytest.mark.parametrize("name, raw, fragment", [
    ("GRPC_PORT", "fifty", "is not an integer"),
    ("GRACE_SECONDS", "soon", "is not a number"),
    ("GRPC_PORT", "70000", "must be a TCP port"),
    ("METRICS_PORT", "-1", "must be a TCP port"),
    ("WORKERS", "0", "must be > 0"),
    ("GRACE_SECONDS", "-1", "must be >= 0"),
    ("LOG_LEVEL", "loud", "must be one of debug, info, warning, error"),
])
def test_bad_value_names_the_variable(name, raw, fragment):
    with pytest.raises(ConfigError) as caught:
        load_settings(COMMON_SETTINGS, {name: raw})
    message = str(caught.value)
    assert message.startswith(f"{name}={raw!r}")
    assert fragment in message


def test_bad_bool_names_the_variable():
    settings = (Setting("FLAG", parse_bool, False, "a flag"),)
    with pytest.raises(ConfigError, match=r"^FLAG='maybe' is not true or false"):
        load_settings(settings, {"FLAG": "maybe"})


def test_required_setting_missing():
    settings = (Setting("TOKEN", str, None, "who may call", required=True),)
    with pytest.raises(ConfigError, match="TOKEN is required: who may call"):
        load_settings(settings, {})
    assert load_settings(settings, {"TOKEN": "x"}) == {"TOKEN": "x"}


def test_checks_alone():
    assert port(0) is None and port(65535) is None and port(65536)
    assert positive(0.1) is None and positive(0)
    assert one_of("a", "b")("a") is None and one_of("a", "b")("c")
    assert comma_list("") == ()


def test_describe_lists_every_variable_with_its_default():
    settings = COMMON_SETTINGS + (Setting("TOKEN", str, None, "who may call", required=True),)
    text = describe(settings)
    lines = text.splitlines()
    assert lines[0] == "Environment variables:"
    assert len(lines) == len(settings) + 1
    for setting, line in zip(settings, lines[1:], strict=True):
        assert setting.name in line and setting.help in line
    assert "[default: 50051]" in text
    assert "(required)" in lines[-1]
