"""Unit tests for distlab/observe.py: the file_sd target list Prometheus reads."""

import dataclasses
import json

from distlab.observe import LOCAL_HOST, METRICS_PORT, targets_document


def test_every_lab_machine_is_a_target_stopped_ones_included(make_info):
    infos = [make_info("kv-1"), make_info("kv-2", state="exited"),
             make_info("kv-3", state="paused"),
             make_info("prometheus-1", lab="common", role="prometheus"),
             make_info("grafana-1", lab="common", role="grafana")]
    groups = json.loads(targets_document(infos))
    assert groups == [
        {"targets": [f"distlab-kv-{n}:{METRICS_PORT}"],
         "labels": {"machine": f"kv-{n}", "role": "kv", "lab": "kv", "host": LOCAL_HOST}}
        for n in (1, 2, 3)]
    assert METRICS_PORT == 9100


def test_a_machine_on_a_cluster_host_carries_the_hosts_name(make_info):
    info = dataclasses.replace(make_info("kv-1"), container="distlab_kv.1.x0", host="host-2")
    [group] = json.loads(targets_document([info]))
    assert group == {"targets": [f"distlab_kv.1.x0:{METRICS_PORT}"],
                     "labels": {"machine": "kv-1", "role": "kv", "lab": "kv", "host": "host-2"}}


def test_no_machines_is_an_empty_list_not_an_invalid_file():
    assert json.loads(targets_document([])) == []
