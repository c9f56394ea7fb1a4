"""The swarm runtime's pure parts: machine names from task names, machines from
`docker inspect`, one task per slot, --place, and the host fault commands."""

from __future__ import annotations

import pytest

from distlab.errors import UsageError
from distlab.runtime.swarm import (
    HOST_CHAIN,
    Task,
    current_tasks,
    machine_name,
    partition_commands,
    placement_of,
    slow_link_commands,
    task_of,
)


def _inspected(task: str, *, status="running", health="healthy", port="30001",
               created="2026-12-07T15:00:00Z", paused=False) -> dict:
    return {
        "Created": created,
        "Config": {"Labels": {"com.docker.swarm.task.name": task,
                              "com.docker.swarm.service.name": task.split(".")[0],
                              "distlab.lab": "tiers", "distlab.role": "app"}},
        "State": {"Status": status, "Paused": paused, "Health": {"Status": health}},
        "NetworkSettings": {"Networks": {"distlab_lab": {"IPAddress": "10.0.1.7"}},
                            "Ports": {"50051/tcp": [{"HostIp": "0.0.0.0", "HostPort": port}],
                                      "9100/tcp": None}},
    }


def test_machines_keep_their_names_wherever_swarm_runs_them():
    assert machine_name("distlab_app.2.k3j4h5g6f7d8s9a0") == "app-2"
    assert machine_name("distlab_data-master.1.abc") == "data-master-1"


def test_a_task_container_becomes_a_machine_reached_at_its_hosts_address():
    task = task_of(_inspected("distlab_app.2.k3j4"), "host-3", "172.22.0.4")
    info = task.info
    assert (info.name, info.service, info.role, info.lab, info.host) == \
        ("app-2", "app", "app", "tiers", "host-3")
    assert info.grpc_endpoint == "172.22.0.4:30001"
    assert info.addresses == ("10.0.1.7",) and info.health == "healthy"
    paused = task_of(_inspected("distlab_app.2.k3j4", paused=True), "host-3", "172.22.0.4")
    assert paused.info.state == "paused" and paused.info.grpc_endpoint is None
    assert task_of({"Config": {"Labels": {}}}, "host-1", "x") is None  # not a task


def test_one_machine_per_slot_the_running_task_else_the_newest():
    old = task_of(_inspected("distlab_app.2.old", status="exited",
                             created="2026-12-07T15:00:00Z"), "host-2", "a")
    new = task_of(_inspected("distlab_app.2.new", created="2026-12-07T15:01:00Z"),
                  "host-3", "b")
    newer_dead = task_of(_inspected("distlab_app.2.dead", status="exited",
                                    created="2026-12-07T15:02:00Z"), "host-1", "c")
    (chosen,) = current_tasks([old, new, newer_dead])
    assert chosen.info.container == "distlab_app.2.new"
    (latest,) = current_tasks([old, newer_dead])
    assert latest.info.container == "distlab_app.2.dead"
    assert isinstance(chosen, Task)


def test_place_names_a_service_of_the_lab_and_a_host_of_the_cluster():
    hosts = ["host-1", "host-2"]
    assert placement_of(["data=host-2"], ["data", "app"], hosts) == {"data": "host-2"}
    for bad, said in (("data", "write SERVICE=HOST"), ("db=host-1", "no service 'db'"),
                      ("data=host-9", "no host 'host-9'")):
        with pytest.raises(UsageError, match=said):
            placement_of([bad], ["data", "app"], hosts)


def test_host_faults_are_plain_iptables_and_tc():
    cut = partition_commands(["10.0.0.2", "10.0.0.3"])
    assert f"iptables -A {HOST_CHAIN} -s 10.0.0.2 -j DROP" in cut
    assert f"iptables -A {HOST_CHAIN} -d 10.0.0.3 -j DROP" in cut
    slow = slow_link_commands("10.0.0.3", "1mbit")
    assert "tbf rate 1mbit" in slow and "match ip dst 10.0.0.3/32" in slow
