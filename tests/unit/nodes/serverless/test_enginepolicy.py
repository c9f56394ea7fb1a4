"""The engine proxy's policy: an instance made the safe way passes; every way out of the
sandbox is refused with its reason; per-container calls pass only for labelled containers;
anything else the engine offers is refused."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.serverless.enginepolicy import Policy, decide

POLICY = Policy(lab="serverless", image="distlab/node:dev", network="distlab_functions",
                max_memory_bytes=256 << 20, max_nano_cpus=1_000_000_000, max_pids=64)

INSTANCE = {
    "Image": "distlab/node:dev",
    "User": "distlab",
    "Cmd": ["python", "-m", "nodes.fninstance"],
    "Labels": {"distlab.lab": "serverless", "distlab.function": "hello"},
    "HostConfig": {
        "NetworkMode": "distlab_functions", "ReadonlyRootfs": True, "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"], "Memory": 128 << 20,
        "NanoCpus": 500_000_000, "PidsLimit": 32, "Tmpfs": {"/tmp": "size=16m"},
        "IpcMode": "private", "CgroupnsMode": "private"},
}


def create(spec, target="/v1.41/containers/create?name=fn-1"):
    return decide(POLICY, "POST", target, json.dumps(spec).encode())


def changed(path, value):
    spec = copy.deepcopy(INSTANCE)
    *parents, last = path
    node = spec
    for key in parents:
        node = node[key]
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return spec


def test_an_instance_made_the_safe_way_is_created():
    assert create(INSTANCE).allowed


@pytest.mark.parametrize("path, value, reason", [
    (("Image",), "alpine", "the image must be distlab/node:dev"),
    (("Labels",), {}, "the label distlab.lab=serverless is missing"),
    (("User",), "root", "the user must not be root"),
    (("User",), None, "the user must not be root"),
    (("User",), "0:0", "the user must not be root"),
    (("HostConfig", "NetworkMode"), "host", "the network must be distlab_functions"),
    (("HostConfig", "ReadonlyRootfs"), False, "read-only"),
    (("HostConfig", "CapDrop"), [], "every capability must be dropped"),
    (("HostConfig", "CapAdd"), ["SYS_ADMIN"], "every capability must be dropped"),
    (("HostConfig", "SecurityOpt"), [], "no-new-privileges"),
    (("HostConfig", "Memory"), None, "Memory must be set"),
    (("HostConfig", "Memory"), 8 << 30, "Memory must be set, at most"),
    (("HostConfig", "PidsLimit"), True, "PidsLimit must be set"),
    (("HostConfig", "NanoCpus"), 0, "NanoCpus must be set"),
    (("HostConfig", "Privileged"), True, "Privileged is not allowed"),
    (("HostConfig", "Binds"), ["/var/run/docker.sock:/var/run/docker.sock"],
     "Binds is not allowed"),
    (("HostConfig", "Mounts"), [{"Type": "bind", "Source": "/", "Target": "/host"}],
     "Mounts is not allowed"),
    (("HostConfig", "Devices"), [{"PathOnHost": "/dev/kmsg"}], "Devices is not allowed"),
    (("HostConfig", "PortBindings"), {"80/tcp": [{"HostPort": "80"}]},
     "PortBindings is not allowed"),
    (("HostConfig", "PidMode"), "host", "PidMode is not allowed"),
    (("HostConfig", "IpcMode"), "host", "IpcMode must be private"),
    (("HostConfig", "CgroupnsMode"), "host", "CgroupnsMode must be private"),
    (("HostConfig", "Runtime"), "runc-debug", "Runtime is not allowed"),
    (("HostConfig", "OomKillDisable"), True, "OomKillDisable is not allowed"),
    (("Volumes",), {"/data": {}}, "Volumes is not allowed"),
])
def test_every_way_out_of_the_sandbox_is_refused_with_its_reason(path, value, reason):
    decision = create(changed(path, value))
    assert not decision.allowed
    assert reason in decision.reason


def test_a_body_that_is_not_a_json_object_is_refused():
    assert "not JSON" in decide(POLICY, "POST", "/containers/create", b"{nope").reason
    assert "not a JSON object" in decide(POLICY, "POST", "/containers/create", b"[]").reason
    assert "HostConfig is not an object" in create(changed(("HostConfig",), 3)).reason


@pytest.mark.parametrize("method, target", [
    ("POST", "/v1.41/containers/abc123/start"),
    ("POST", "/containers/abc123/pause"),
    ("POST", "/containers/abc123/unpause"),
    ("POST", "/containers/abc123/kill?signal=KILL"),
    ("POST", "/containers/abc123/wait"),
    ("GET", "/containers/abc123/json"),
    ("GET", "/containers/abc123/logs?stdout=1"),
    ("DELETE", "/containers/abc123?force=1"),
])
def test_a_call_on_one_container_passes_only_if_it_is_the_labs(method, target):
    decision = decide(POLICY, method, target)
    assert decision.allowed and decision.container == "abc123"


@pytest.mark.parametrize("method, target", [
    ("POST", "/containers/abc123/exec"),
    ("POST", "/containers/abc123/archive"),
    ("PUT", "/containers/abc123/archive?path=/"),
    ("GET", "/containers/abc123/start"),
    ("POST", "/images/create?fromImage=evil"),
    ("POST", "/build"),
    ("POST", "/volumes/create"),
    ("POST", "/networks/create"),
    ("GET", "/events"),
    ("POST", "/swarm/init"),
    ("POST", "/containers/../images/create"),
    ("GET", "/containers/json"),
    ("GET", '/containers/json?filters={"label":["distlab.lab=tiers"]}'),
])
def test_anything_else_is_refused(method, target):
    assert not decide(POLICY, method, target).allowed


def test_a_listing_filtered_on_the_labs_label_is_allowed():
    target = '/v1.41/containers/json?all=1&filters={"label":["distlab.lab=serverless"]}'
    assert decide(POLICY, "GET", target).allowed
    assert decide(POLICY, "GET", "/v1.41/_ping").allowed


@given(st.text(max_size=40), st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
       st.binary(max_size=200))
def test_any_request_gets_a_decision_never_an_exception(path, method, body):
    decision = decide(POLICY, method, "/" + path, body)
    assert decision.allowed or decision.reason
