"""distlab.scenarios.exporter: a real FaultExporter on 127.0.0.1, scraped over HTTP the way
Prometheus scrapes it; its file_sd document; and the choice of the address it binds to."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from distlab.errors import DistlabError
from distlab.runtime.compose import machine_info
from distlab.scenarios.exporter import (
    FAULT_ACTIVE,
    RUNNER_TARGETS_PATH,
    RUNNING,
    FaultExporter,
    lab_gateway,
)

LOOPBACK = "127.0.0.1"


@pytest.fixture
def exporter() -> Iterator[FaultExporter]:
    serving = FaultExporter("failover")
    serving.start(LOOPBACK)
    try:
        yield serving
    finally:
        serving.stop()


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Metric name -> [(labels, value)], from /metrics as Prometheus would read it."""
    response = requests.get(f"http://{LOOPBACK}:{port}/metrics", timeout=2)
    response.raise_for_status()
    return {family.name: [(sample.labels, sample.value) for sample in family.samples]
            for family in text_string_to_metric_families(response.text)}


def faults(port: int) -> dict[str, tuple[dict[str, str], float]]:
    """Fault id -> (labels, value) of distlab_scenario_fault_active."""
    return {labels["fault"]: (labels, value) for labels, value in scrape(port)[FAULT_ACTIVE]}


# --------------------------------------------------------------------------- serving


def test_a_started_fault_is_scraped_as_1_with_its_labels(exporter: FaultExporter) -> None:
    exporter.fault_started("f1", "kill", ["kv-2"])
    exporter.fault_started("f2", "partition", ["kv-1", "kv-3"])
    assert faults(exporter.port) == {
        "f1": ({"scenario": "failover", "fault": "f1", "kind": "kill", "machines": "kv-2"}, 1.0),
        "f2": ({"scenario": "failover", "fault": "f2", "kind": "partition",
                "machines": "kv-1,kv-3"}, 1.0),
    }
    assert scrape(exporter.port)[RUNNING] == [({"scenario": "failover"}, 1.0)]


def test_an_ended_fault_keeps_its_series_at_0(exporter: FaultExporter) -> None:
    exporter.fault_started("f1", "pause", ["kv-1"])
    exporter.fault_started("f2", "kill", ["kv-2"])
    exporter.fault_ended("f1")
    values = {fault: value for fault, (_, value) in faults(exporter.port).items()}
    assert values == {"f1": 0.0, "f2": 1.0}


def test_a_fault_can_be_started_again_after_it_ended(exporter: FaultExporter) -> None:
    exporter.fault_started("f1", "pause", ["kv-1"])
    exporter.fault_ended("f1")
    exporter.fault_started("f1", "pause", ["kv-1"])
    assert faults(exporter.port)["f1"][1] == 1.0


def test_no_faults_yet_means_no_fault_series(exporter: FaultExporter) -> None:
    assert scrape(exporter.port).get(FAULT_ACTIVE, []) == []


def test_stop_frees_the_port_and_is_safe_to_repeat() -> None:
    exporter = FaultExporter("s")
    port = exporter.start(LOOPBACK)
    assert exporter.port == port
    assert requests.get(f"http://{LOOPBACK}:{port}/metrics", timeout=2).ok
    exporter.stop()
    assert exporter.port is None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{LOOPBACK}:{port}/metrics", timeout=2)
    again = FaultExporter("s")  # nothing holds the port any more
    try:
        assert again.start(LOOPBACK, port) == port
    finally:
        again.stop()
    exporter.stop()


def test_start_on_a_given_port(exporter: FaultExporter) -> None:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        free = sock.getsockname()[1]
    other = FaultExporter("s")
    try:
        assert other.start(LOOPBACK, free) == free
    finally:
        other.stop()


def test_a_port_in_use_is_a_clear_error(exporter: FaultExporter) -> None:
    with pytest.raises(DistlabError, match=f"cannot listen on 127.0.0.1:{exporter.port}"):
        FaultExporter("s").start(LOOPBACK, exporter.port)


def test_starting_twice_is_refused(exporter: FaultExporter) -> None:
    with pytest.raises(DistlabError, match="already serves"):
        exporter.start(LOOPBACK)


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", "", " "])
def test_every_interface_is_refused(wildcard: str) -> None:
    exporter = FaultExporter("s")
    with pytest.raises(DistlabError, match="must not listen"):
        exporter.start(wildcard)
    assert exporter.port is None


def test_metrics_stay_off_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    exporter = FaultExporter("isolated")
    exporter.fault_started("f1", "kill", ["kv-1"])
    assert REGISTRY.get_sample_value(FAULT_ACTIVE, {"scenario": "isolated", "fault": "f1",
                                                    "kind": "kill", "machines": "kv-1"}) is None


def test_a_given_registry_is_used() -> None:
    registry = CollectorRegistry()
    exporter = FaultExporter("mine", registry=registry)
    exporter.fault_started("f1", "stop", ["kv-1", "kv-2"])
    labels = {"scenario": "mine", "fault": "f1", "kind": "stop", "machines": "kv-1,kv-2"}
    assert registry.get_sample_value(FAULT_ACTIVE, labels) == 1.0
    exporter.fault_ended("f1")
    assert registry.get_sample_value(FAULT_ACTIVE, labels) == 0.0


# --------------------------------------------------------------------------- bad calls


def test_ending_an_unknown_fault_names_the_known_ones() -> None:
    exporter = FaultExporter("s")
    exporter.fault_started("f1", "kill", ["kv-1"])
    with pytest.raises(DistlabError, match=r"'nope' was never started \(faults started: f1\)"):
        exporter.fault_ended("nope")


def test_one_id_cannot_name_two_different_faults() -> None:
    exporter = FaultExporter("s")
    exporter.fault_started("f1", "kill", ["kv-1"])
    with pytest.raises(DistlabError, match=r"started as kill on \[kv-1\], not pause on \[kv-2\]"):
        exporter.fault_started("f1", "pause", ["kv-2"])


@pytest.mark.parametrize(("fault_id", "kind", "machines", "reason"), [
    ("", "kill", ["kv-1"], "needs an id and a kind"),
    ("f1", "", ["kv-1"], "needs an id and a kind"),
    ("f1", "kill", "kv-1", "list of names, not the string 'kv-1'"),
])
def test_bad_faults_are_refused(fault_id: str, kind: str, machines, reason: str) -> None:
    with pytest.raises(DistlabError, match=reason):
        FaultExporter("s").fault_started(fault_id, kind, machines)


def test_a_scenario_needs_a_name() -> None:
    with pytest.raises(DistlabError, match="scenario name"):
        FaultExporter(" ")


# --------------------------------------------------------------------------- file_sd


def test_target_document_points_prometheus_at_the_exporter(exporter: FaultExporter) -> None:
    assert RUNNER_TARGETS_PATH == "/distlab/targets/runner.yml"
    document = json.loads(exporter.target_document("172.20.0.1"))
    assert document == [{"targets": [f"172.20.0.1:{exporter.port}"],
                         "labels": {"machine": "runner", "role": "runner", "lab": "common"}}]


def test_target_document_carries_the_lab() -> None:
    exporter = FaultExporter("s", lab="tiers")
    port = exporter.start(LOOPBACK)
    try:
        (group,) = json.loads(exporter.target_document(LOOPBACK))
    finally:
        exporter.stop()
    assert group["targets"] == [f"127.0.0.1:{port}"]
    assert group["labels"]["lab"] == "tiers"


def test_target_document_before_start_is_refused() -> None:
    with pytest.raises(DistlabError, match="call start"):
        FaultExporter("s").target_document("172.20.0.1")


# --------------------------------------------------------------------------- lab_gateway


def test_lab_gateway_is_a_running_lab_machines_gateway(make_info) -> None:
    from dataclasses import replace

    machines = [
        replace(make_info("prometheus-1", lab="common", role="prometheus"),
                gateways=("172.30.0.1",)),
        replace(make_info("kv-1", state="exited"), gateways=("172.21.0.1",)),
        replace(make_info("kv-2", state="paused"), gateways=("172.22.0.1",)),
        make_info("kv-3"),  # running, but no gateway known
        replace(make_info("kv-4"), gateways=("172.20.0.1", "172.23.0.1")),
        replace(make_info("kv-5"), gateways=("172.24.0.1",)),
    ]
    assert lab_gateway(machines) == "172.20.0.1"


def test_no_running_lab_machine_has_no_gateway(make_info) -> None:
    from dataclasses import replace

    common = replace(make_info("prometheus-1", lab="common", role="prometheus"),
                     gateways=("172.20.0.1",))
    assert lab_gateway([common]) is None
    assert lab_gateway([]) is None


def test_gateway_comes_from_what_docker_reports() -> None:
    summary = {  # one entry of the sparse container listing ComposeRuntime reads
        "Names": ["/distlab-kv-1"], "State": "running", "Status": "Up 1 minute (healthy)",
        "Labels": {"distlab.lab": "kv", "distlab.role": "kv",
                   "com.docker.compose.service": "kv"},
        "NetworkSettings": {"Networks": {"distlab_lab": {"IPAddress": "172.20.0.11",
                                                         "Gateway": "172.20.0.1"}}},
        "Ports": [],
    }
    info = machine_info(summary)
    assert info.addresses == ("172.20.0.11",)
    assert info.gateways == ("172.20.0.1",)
    assert lab_gateway([info]) == "172.20.0.1"
