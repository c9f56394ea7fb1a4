"""The engine proxy in-process, in front of this machine's real Docker engine, driven by
the Docker SDK as the runner drives it: what the policy allows reaches the engine, what it
does not is refused with the reason before the engine sees it, and nothing passes without
the lab credential."""

from __future__ import annotations

import contextlib
import os

import docker
import docker.errors
import pytest

from nodes.serverless.engine import CREDENTIAL_HEADER
from nodes.serverless.engineproxy import SPEC as PROXY_SPEC

SOCKET = "/var/run/docker.sock"
LAB = "serverless-it"
IMAGE = "distlab/node:dev"
pytestmark = pytest.mark.skipif(not os.path.exists(SOCKET),
                                reason="no Docker engine socket (scripts/setup-host.sh)")


@pytest.fixture
def proxy(lab):
    node = lab.start("engine-proxy", spec=PROXY_SPEC, ENGINE_SOCKET=SOCKET,
                     ENGINE_PROXY_PORT=0, FN_LAB=LAB, FN_IMAGE=IMAGE,
                     FN_NETWORK="distlab-it-functions")
    return f"tcp://127.0.0.1:{node.role.port}"


def client(url: str, token: str | None) -> docker.DockerClient:
    sdk = docker.DockerClient(base_url=url, version="auto", timeout=30)
    if token is not None:
        sdk.api.headers[CREDENTIAL_HEADER] = token
    return sdk


@pytest.fixture
def sdk(lab, proxy):
    return client(proxy, lab.credential.metadata()[0][1])


def test_the_labs_listing_passes_and_reaches_the_engine(sdk):
    listed = sdk.api.containers(all=True, filters={"label": f"distlab.lab={LAB}"})
    assert all(c["Labels"]["distlab.lab"] == LAB for c in listed)


def test_without_the_lab_credential_nothing_passes(proxy):
    with pytest.raises(docker.errors.APIError) as raised:
        client(proxy, None).api.containers(filters={"label": f"distlab.lab={LAB}"})
    assert raised.value.status_code == 401
    assert "needs the lab credential" in str(raised.value.explanation)


def test_what_the_runner_does_not_need_is_refused_with_the_reason(sdk):
    for call, reason in ((lambda: sdk.images.list(), "not something the runner needs"),
                         (lambda: sdk.api.containers(all=True), "must filter on the label"),
                         (lambda: sdk.volumes.list(), "not something the runner needs")):
        with pytest.raises(docker.errors.APIError) as raised:
            call()
        assert raised.value.status_code == 403 and reason in str(raised.value.explanation)


def test_a_container_that_breaks_the_policy_is_refused_before_the_engine_sees_it(sdk):
    with pytest.raises(docker.errors.APIError) as raised:
        sdk.containers.create(IMAGE, ["true"], privileged=True, user="0",
                              volumes={"/": {"bind": "/host", "mode": "rw"}},
                              labels={"distlab.lab": LAB})
    explanation = str(raised.value.explanation)
    assert raised.value.status_code == 403
    for problem in ("the user must not be root", "Privileged is not allowed",
                    "the root filesystem must be read-only", "Binds is not allowed"):
        assert problem in explanation


def test_a_container_the_policy_allows_is_made_and_removed_through_it(sdk):
    if not docker.from_env().images.list(name=IMAGE):
        pytest.skip(f"{IMAGE} is not built (make images)")
    container = sdk.containers.create(
        IMAGE, ["true"], user="10001", labels={"distlab.lab": LAB},
        network="distlab-it-functions", read_only=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"], mem_limit=64 * 1024 * 1024,
        nano_cpus=500_000_000, pids_limit=32)
    try:
        assert sdk.api.inspect_container(container.id)["Config"]["Labels"]["distlab.lab"] == LAB
        sdk.api.remove_container(container.id, force=True, v=True)
        listed = sdk.api.containers(all=True, filters={"label": f"distlab.lab={LAB}"})
        assert container.id not in {c["Id"] for c in listed}
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker.from_env().api.remove_container(container.id, force=True, v=True)


def test_another_labs_container_is_not_the_runners_to_touch(sdk):
    with pytest.raises(docker.errors.APIError) as raised:
        sdk.api.kill("distlab-prometheus-1")
    assert raised.value.status_code == 403
    assert f"not a container of the lab {LAB}" in str(raised.value.explanation)
