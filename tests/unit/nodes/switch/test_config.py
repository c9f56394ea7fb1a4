"""nodes/switch/config.py: the switch's settings and the parsers Reconfigure shares."""

import pytest

from nodes.common.config import ConfigError, load_settings
from nodes.switch.config import (
    BACKEND_PORT,
    SETTINGS,
    forwarded_methods,
    parse_backends,
    parse_metadata_key,
    parse_methods,
    parse_services,
)


def test_defaults_front_the_app_tiers_bank_and_kv_with_bank_reads_retried():
    config = load_settings(SETTINGS, {})
    assert config["SWITCH_BACKENDS"] == ("app",)
    assert config["SWITCH_POLICY"] == "round_robin"
    assert config["SWITCH_SERVICES"] == ("distlab.bank.Bank", "distlab.kv.KV")
    assert "/distlab.bank.Bank/Balance" in config["SWITCH_IDEMPOTENT_METHODS"]
    assert "/distlab.bank.Bank/Transfer" not in config["SWITCH_IDEMPOTENT_METHODS"]
    assert BACKEND_PORT == 50051


def test_backends_are_host_or_host_port():
    assert parse_backends(" app , 127.0.0.1:6000,data-1:50051") == (
        "app", "127.0.0.1:6000", "data-1:50051")


@pytest.mark.parametrize("raw, complaint", [
    ("", "at least one backend"),
    (" , ", "at least one backend"),
    ("app:0", "'app:0' is not host[:port]"),
    ("app:70000", "is not host[:port]"),
    ("app:http", "is not host[:port]"),
    ("ap p", "is not host[:port]"),
    ("app:1:2", "is not host[:port]"),
])
def test_bad_backends_are_refused_naming_the_entry(raw, complaint):
    with pytest.raises(ValueError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        parse_backends(raw)


def test_the_forwarded_methods_are_exactly_those_the_services_declare():
    methods = forwarded_methods(("distlab.bank.Bank", "distlab.kv.KV"))
    assert "/distlab.bank.Bank/Transfer" in methods
    assert "/distlab.kv.KV/Delete" in methods
    assert not any(method.startswith("/distlab.control.") for method in methods)
    assert len(methods) == 11 and not any(methods.values())  # all unary today
    streaming = forwarded_methods(("distlab.chain.Replica",))
    assert streaming["/distlab.chain.Replica/Sync"] is True
    assert streaming["/distlab.chain.Replica/Install"] is True
    assert streaming["/distlab.chain.Replica/Forward"] is False


@pytest.mark.parametrize("raw, complaint", [
    ("", "at least one service"),
    ("distlab.control.Control", "never forwarded"),
    ("grpc.health.v1.Health", "never forwarded"),
    ("grpc.reflection.v1alpha.ServerReflection", "never forwarded"),
    ("distlab.bank.Bnak", "'distlab.bank.Bnak' is not a service of this image's protos"),
])
def test_only_compiled_services_other_than_the_nodes_own_may_be_forwarded(raw, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_services(raw)


def test_methods_must_be_full_names():
    assert parse_methods("/distlab.kv.KV/Get, /distlab.kv.KV/List") == (
        "/distlab.kv.KV/Get", "/distlab.kv.KV/List")
    with pytest.raises(ValueError, match="'distlab.kv.KV/Get' is not /package.Service/Method"):
        parse_methods("distlab.kv.KV/Get")


def test_affinity_key_is_a_lowercase_text_metadata_key():
    assert parse_metadata_key("X-Session-Id") == "x-session-id"
    for bad in ("", "grpc-timeout", "trace-bin", "a b"):
        with pytest.raises(ValueError):
            parse_metadata_key(bad)


@pytest.mark.parametrize("name, value", [
    ("SWITCH_POLICY", "random"),
    ("SWITCH_BACKENDS", "app:99999"),
    ("SWITCH_MAX_EJECTED_PERCENT", "101"),
    ("SWITCH_HEALTH_RISE", "0"),
    ("SWITCH_IDEMPOTENT_METHODS", "Get"),
    ("SWITCH_SERVICES", "distlab.control.Control"),
])
def test_a_bad_setting_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings(SETTINGS, {name: value})
