"""`distlab cluster` on four test hosts over real SSH: bad hosts refused with nothing
made, a swarm of three made with its registry, images pulled through it, and destroy
leaving every host as it was."""

from __future__ import annotations

import json
import time

import pytest

from distlab.cluster.certificate import ssh_key_pair
from tests.cluster.conftest import distlab, show

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def _untouched(hosts, specs) -> None:
    """No cluster state, and no host's engine in a swarm (or no engine started at all)."""
    assert not (hosts.project / ".distlab" / "cluster.json").exists()
    for spec in specs:
        state = hosts.run(spec, "docker info --format '{{.Swarm.LocalNodeState}}' "
                                "2>/dev/null || echo no-engine", check=False).strip()
        assert state in ("inactive", "no-engine"), (spec, state)


def test_bad_hosts_are_refused_by_name_and_nothing_is_made(hosts):
    one, two, three, four = hosts.specs
    key = str(hosts.key)
    address = one.split("@")[1]

    refused = distlab(hosts.project, "cluster", "create", "-i", key, one, "root@127.0.0.1:1")
    assert refused.returncode == 1, show(refused)
    assert "root@127.0.0.1:1: cannot reach it over SSH" in refused.stderr, show(refused)
    assert "hint: check the address" in refused.stderr

    stranger = hosts.project / "stranger"
    stranger.write_bytes(ssh_key_pair()[0])
    stranger.chmod(0o600)
    wrong_key = distlab(hosts.project, "cluster", "create", "-i", str(stranger), one, two)
    assert wrong_key.returncode == 1, show(wrong_key)
    assert f"{one}: the key {stranger} was refused" in wrong_key.stderr, show(wrong_key)

    no_key = distlab(hosts.project, "cluster", "create", "-i", "/nonexistent/key", one)
    assert no_key.returncode == 1 and "no key file /nonexistent/key" in no_key.stderr

    not_root = distlab(hosts.project, "cluster", "create", "-i", key, f"student@{address}")
    assert not_root.returncode == 1, show(not_root)
    assert f"student@{address}: student is not root" in not_root.stderr, show(not_root)
    assert "NOPASSWD sudo" in not_root.stderr

    malformed = distlab(hosts.project, "cluster", "create", "root@@nowhere")
    assert malformed.returncode == 2 and "is not a host" in malformed.stderr, show(malformed)

    # A host already in a swarm of its own: named, and left in it.
    hosts.run(four, "nohup dockerd >/var/log/dockerd.log 2>&1 & for i in $(seq 60); do "
                    "docker info >/dev/null 2>&1 && break; sleep 0.5; done; "
                    "docker swarm init --advertise-addr 127.0.0.1 >/dev/null", timeout=120)
    taken = distlab(hosts.project, "cluster", "create", "-i", key, one, two, four)
    assert taken.returncode == 1, show(taken)
    assert f"{four}: its engine is already in a swarm (active)" in taken.stderr, show(taken)
    assert "docker swarm leave --force" in taken.stderr
    assert hosts.run(four, "docker info --format '{{.Swarm.LocalNodeState}}'").strip() == \
        "active"
    _untouched(hosts, [one, two, three])


def test_create_makes_one_swarm_with_a_registry(hosts):
    one, two, three, _ = hosts.specs
    made = distlab(hosts.project, "cluster", "create", "-i", str(hosts.key), one, two, three)
    assert made.returncode == 0, show(made)
    status = distlab(hosts.project, "cluster", "status")
    assert status.returncode == 0, show(status)
    rows = [line for line in status.stdout.splitlines() if "host-" in line]
    # Three hosts, three managers: the swarm outlives the loss of any one of them.
    assert [("manager" in r, "ready" in r) for r in rows] == [(True, True)] * 3, status.stdout
    state = json.loads((hosts.project / ".distlab" / "cluster.json").read_text())
    assert state["registry"] == f"{one.split('@')[1]}:5000"
    assert "running" in status.stdout.splitlines()[-1], status.stdout

    again = distlab(hosts.project, "cluster", "create", "-i", str(hosts.key), one)
    assert again.returncode == 1 and "a cluster exists already" in again.stderr


def test_a_worker_runs_the_lab_image_pulled_through_the_registry(hosts):
    """host-3 has never seen the node image: it pulls it from the manager's registry over
    TLS, with the manager's login handed over by the swarm (--with-registry-auth)."""
    one, _, three, _ = hosts.specs
    registry = json.loads((hosts.project / ".distlab" / "cluster.json").read_text())["registry"]
    assert "distlab/node" not in hosts.run(three, "docker images --format '{{.Repository}}'")
    hosts.run(one, f"docker service create -d --name pulled --with-registry-auth "
                   f"--no-healthcheck --restart-condition none "
                   f"--constraint node.labels.distlab.host==host-3 "
                   f"{registry}/distlab/node:dev python3 -c 'print(\"ran on host-3\")'")
    deadline = time.monotonic() + 180
    state = ""
    while time.monotonic() < deadline:
        state = hosts.run(one, "docker service ps pulled --format '{{.Node}} "
                               "{{.CurrentState}} {{.Error}}'").strip()
        if state.startswith("host-3 Complete") or "Rejected" in state or "Failed" in state:
            break
        time.sleep(1)
    assert state.startswith("host-3 Complete"), state
    assert f"{registry}/distlab/node" in hosts.run(three, "docker images --format "
                                                          "'{{.Repository}}'")


def test_destroy_leaves_every_host_as_it_was_found(hosts):
    done = distlab(hosts.project, "cluster", "destroy")
    assert done.returncode == 0, show(done)
    assert "every host left as it was found" in done.stdout
    assert not (hosts.project / ".distlab" / "cluster.json").exists()
    for spec in hosts.specs[:3]:
        left = hosts.run(spec, "docker info --format '{{.Swarm.LocalNodeState}}'; "
                               "docker ps -aq | wc -l; docker images -q | wc -l; "
                               "docker volume ls -q | wc -l; ls -A /etc/docker/certs.d | wc -l; "
                               "test -e /etc/distlab && echo etc-distlab || echo none")
        assert left.split() == ["inactive", "0", "0", "0", "0", "none"], (spec, left)
    status = distlab(hosts.project, "cluster", "status")
    assert status.returncode == 1 and "there is no cluster" in status.stderr
