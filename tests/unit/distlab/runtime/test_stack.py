"""Unit tests for distlab/runtime/stack.py: the real compose.yaml, adapted to a Swarm stack.

The project comes from compose.yaml itself, rendered here the way `docker compose
--profile LAB config` renders it as far as the adapter cares (the x-node anchor merged by
PyYAML, `${VAR:-default}` filled with its default, bind sources made absolute, only the
lab's and the common services), so these tests follow the file as labs change. One test
feeds the long syntax Compose's JSON really prints.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from distlab.errors import UsageError
from distlab.runtime.stack import (
    HOST_LABEL,
    MACHINE_SERVICE_LABEL,
    Stack,
    UnsupportedOnSwarm,
    cluster_image,
    project_files,
    to_stack,
)

REPO = Path(__file__).resolve().parents[4]
REGISTRY = "10.0.0.2:5000"
TIERS = ("switch", "app", "data", "data-spare", "data-master")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")

# What Docker 20.10's `docker stack deploy` both accepts (config_schema_v3.9.json) and
# applies (not in types.UnsupportedProperties / DeprecatedProperties, converted by
# cli/compose/convert): a stack file key outside these is dropped, warned about or refused.
HONOURED_SERVICE_KEYS = {
    "cap_add", "cap_drop", "command", "configs", "credential_spec", "deploy", "dns",
    "dns_search", "entrypoint", "environment", "extra_hosts", "healthcheck", "hostname",
    "image", "init", "isolation", "labels", "logging", "networks", "ports", "read_only",
    "secrets", "stdin_open", "stop_grace_period", "stop_signal", "sysctls", "tty", "ulimits",
    "user", "volumes", "working_dir",
}
DEPLOY_KEYS = {"mode", "endpoint_mode", "replicas", "labels", "rollback_config",
               "update_config", "resources", "restart_policy", "placement"}
PORT_KEYS = {"mode", "target", "published", "protocol"}
MOUNT_KEYS = {"type", "source", "target", "read_only", "consistency", "bind", "volume", "tmpfs"}
NETWORK_KEYS = {"name", "driver", "driver_opts", "ipam", "external", "internal", "attachable",
                "labels"}
VOLUME_KEYS = {"name", "driver", "driver_opts", "external", "labels"}
SECRET_KEYS = {"name", "file", "external", "labels", "driver", "driver_opts", "template_driver"}


def _fill(value):
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [_fill(item) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item) for key, item in value.items()}
    return value


def _absolute(entry):
    source, sep, rest = entry.partition(":")
    if sep and source.startswith("."):
        return f"{(REPO / source).resolve()}:{rest}"
    return entry


def project(lab: str) -> dict:
    """compose.yaml rendered for `lab`, the way `docker compose config` would."""
    document = _fill(yaml.safe_load((REPO / "compose.yaml").read_text()))
    services = {name: spec for name, spec in document["services"].items()
                if not spec.get("profiles") or lab in spec["profiles"]}
    for spec in services.values():
        if spec.get("volumes"):
            spec["volumes"] = [_absolute(entry) for entry in spec["volumes"]]
    secrets = {name: {"file": str((REPO / spec["file"]).resolve())}
               for name, spec in document["secrets"].items()}
    return {"name": document["name"], "services": services, "networks": document["networks"],
            "volumes": document["volumes"], "secrets": secrets}


def lab_services(lab: str) -> list[str]:
    return list(project(lab)["services"])


@pytest.fixture(scope="module")
def tiers() -> Stack:
    return to_stack(project("tiers"), services=[*TIERS, "prometheus"], scale={},
                    registry=REGISTRY)


def services_of(stack: Stack) -> dict:
    return stack.file["services"]


def test_the_stack_holds_exactly_the_labs_services_in_format_3_9(tiers):
    assert tiers.file["version"] == "3.9"
    assert list(services_of(tiers)) == [*TIERS, "prometheus"]
    assert set(tiers.file) == {"version", "services", "networks", "volumes", "secrets"}


def test_images_come_from_the_cluster_registry(tiers):
    assert services_of(tiers)["app"]["image"] == f"{REGISTRY}/distlab/node:dev"
    assert services_of(tiers)["prometheus"]["image"] == f"{REGISTRY}/prom/prometheus:v2.53.2"


@pytest.mark.parametrize("image, expected", [
    ("distlab/node:dev", "10.0.0.2:5000/distlab/node:dev"),
    ("busybox", "10.0.0.2:5000/busybox"),
    ("ghcr.io/owner/tool:1.0", "10.0.0.2:5000/owner/tool:1.0"),
    ("localhost:5000/distlab/node:dev", "10.0.0.2:5000/distlab/node:dev"),
])
def test_cluster_image_puts_the_registry_in_front_and_replaces_a_foreign_one(image, expected):
    assert cluster_image(image, REGISTRY) == expected


@pytest.mark.parametrize("registry", ["", "http://10.0.0.2:5000", "  "])
def test_a_registry_that_is_not_host_port_is_refused(registry):
    with pytest.raises(UsageError, match="registry"):
        to_stack(project("kv"), services=["kv"], scale={}, registry=registry)


def test_every_service_uses_dns_round_robin_since_there_is_no_ipvs(tiers):
    assert {s["deploy"]["endpoint_mode"] for s in services_of(tiers).values()} == {"dnsrr"}


def test_replicas_follow_scale_then_compose_then_one():
    stack = to_stack(project("tiers"), services=TIERS, scale={"app": 5, "data-spare": 1},
                     registry=REGISTRY)
    replicas = {name: s["deploy"]["replicas"] for name, s in services_of(stack).items()}
    assert replicas == {"switch": 1, "app": 5, "data": 3, "data-spare": 1, "data-master": 1}


def test_data_spare_keeps_its_zero_replicas_unless_scaled(tiers):
    assert services_of(tiers)["data-spare"]["deploy"]["replicas"] == 0


@pytest.mark.parametrize("scale", [{"nope": 1}, {"app": -1}])
def test_a_scale_for_no_service_of_the_lab_or_below_zero_is_refused(scale):
    with pytest.raises(UsageError):
        to_stack(project("tiers"), services=TIERS, scale=scale, registry=REGISTRY)


def test_by_default_every_service_spreads_over_the_hosts(tiers):
    for service in services_of(tiers).values():
        assert service["deploy"]["placement"] == {
            "preferences": [{"spread": f"node.labels.{HOST_LABEL}"}]}


def test_a_pinned_service_gets_a_host_constraint_and_the_others_still_spread():
    stack = to_stack(project("tiers"), services=TIERS, scale={}, registry=REGISTRY,
                     placement={"data-master": "host-2"})
    assert services_of(stack)["data-master"]["deploy"]["placement"] == {
        "constraints": ["node.labels.distlab.host == host-2"]}
    assert "preferences" in services_of(stack)["app"]["deploy"]["placement"]


def test_placement_of_a_service_the_lab_does_not_have_is_a_usage_error_naming_it():
    with pytest.raises(UsageError, match="'chord'") as caught:
        to_stack(project("tiers"), services=TIERS, scale={}, registry=REGISTRY,
                 placement={"chord": "host-1"})
    assert "app" in caught.value.hint


def test_placement_on_something_that_is_not_a_host_name_is_refused():
    with pytest.raises(UsageError, match="not a host name"):
        to_stack(project("tiers"), services=TIERS, scale={}, registry=REGISTRY,
                 placement={"data": "host-1 || node.role == manager"})


def test_published_ports_are_host_mode_and_a_port_without_a_number_stays_ephemeral(tiers):
    services = services_of(tiers)
    assert services["switch"]["ports"] == [
        {"target": 50051, "published": 50051, "protocol": "tcp", "mode": "host"}]
    # 127.0.0.1::50051 under Compose: each replica gets a free host port from the engine.
    assert services["app"]["ports"] == [{"target": 50051, "protocol": "tcp", "mode": "host"}]


def test_the_lost_127_0_0_1_binding_is_noted_once_and_reported_per_service(tiers):
    [note] = [n for n in tiers.notes if "host IP 127.0.0.1" in n]
    assert all(service in note for service in (*TIERS, "prometheus"))
    assert any("127.0.0.1" in loss for loss in tiers.weakened["switch"])


def test_tcp_and_udp_on_one_port_stay_two_entries():
    stack = to_stack(project("bittorrent"), services=["tracker"], scale={}, registry=REGISTRY)
    assert {(p["target"], p["protocol"]) for p in services_of(stack)["tracker"]["ports"]} == {
        (50051, "tcp"), (6969, "tcp"), (6969, "udp")}


def test_containers_and_services_carry_compose_labels_and_the_machine_service(tiers):
    for name, service in services_of(tiers).items():
        for labels in (service["labels"], service["deploy"]["labels"]):
            assert labels[MACHINE_SERVICE_LABEL] == name
            assert labels["distlab.lab"] == ("common" if name == "prometheus" else "tiers")
    assert services_of(tiers)["data-spare"]["labels"]["distlab.role"] == "data"


def test_each_task_knows_its_machine_name_from_its_slot(tiers):
    app = services_of(tiers)["app"]
    assert app["hostname"] == "app-{{.Task.Slot}}"
    assert app["environment"]["NODE_NAME"] == "app-{{.Task.Slot}}"
    assert app["environment"]["DATA_MASTER"] == "data-master:50051"


def test_restart_policy_is_any_when_compose_gives_none(tiers):
    assert {s["deploy"]["restart_policy"]["condition"]
            for s in services_of(tiers).values()} == {"any"}


@pytest.mark.parametrize("restart, policy", [
    ("always", {"condition": "any"}),
    ("unless-stopped", {"condition": "any"}),
    ("on-failure", {"condition": "on-failure"}),
    ("on-failure:3", {"condition": "on-failure", "max_attempts": 3}),
    ("no", {"condition": "none"}),
])
def test_compose_restart_becomes_a_swarm_restart_policy(restart, policy):
    rendered = project("kv")
    rendered["services"]["kv"]["restart"] = restart
    stack = to_stack(rendered, services=["kv"], scale={}, registry=REGISTRY)
    assert services_of(stack)["kv"]["deploy"]["restart_policy"] == policy
    assert "restart" not in services_of(stack)["kv"]


def test_resource_limits_keep_their_deploy_form_with_strings_where_3_9_wants_them(tiers):
    assert services_of(tiers)["switch"]["deploy"]["resources"] == {
        "limits": {"cpus": "1.00", "memory": "256M", "pids": 256}}


def test_service_level_limits_move_into_deploy_resources():
    rendered = project("kv")
    spec = rendered["services"]["kv"]
    del spec["deploy"]["resources"]
    spec.update(mem_limit="128m", cpus=0.5, pids_limit=64, mem_reservation="64m")
    stack = to_stack(rendered, services=["kv"], scale={}, registry=REGISTRY)
    assert services_of(stack)["kv"]["deploy"]["resources"] == {
        "limits": {"memory": "128m", "cpus": "0.5", "pids": 64},
        "reservations": {"memory": "64m"}}
    assert not {"mem_limit", "cpus", "pids_limit"} & services_of(stack)["kv"].keys()


def test_capabilities_reach_the_containers_so_network_faults_keep_working(tiers):
    app = services_of(tiers)["app"]
    assert (app["cap_drop"], app["cap_add"]) == (["ALL"], ["NET_ADMIN"])
    assert tiers.lost_capabilities == frozenset()


def test_the_node_contract_settings_survive(tiers):
    app = services_of(tiers)["app"]
    assert app["read_only"] is True and app["init"] is True
    assert app["stop_grace_period"] == "10s"
    assert app["healthcheck"]["test"][-1] == "/app/nodes/common/healthcheck.py"


def test_a_health_check_on_swarm_is_a_patient_liveness_probe(tiers):
    # Swarm kills a task whose check fails: a slow machine must not fail it.
    check = services_of(tiers)["app"]["healthcheck"]
    assert (check["interval"], check["timeout"], check["retries"]) == ("10s", "10s", 3)
    assert check["start_period"] == "30s"
    assert any("replaced after 3 failures" in note for note in tiers.notes)
    given = {"interval": "1m30s", "timeout": "500ms", "retries": 20}
    patient = {"services": {"a": {"image": "x", "healthcheck": {"test": ["CMD", "t"],
                                                                **given}}}}
    kept = to_stack(patient, services=["a"], scale={}, registry=REGISTRY)
    assert kept.file["services"]["a"]["healthcheck"] == {
        "test": ["CMD", "t"], "interval": "90s", "timeout": "10s", "retries": 20}
    patient["services"]["a"]["healthcheck"]["interval"] = "soon"
    with pytest.raises(UsageError, match="not like 3s"):
        to_stack(patient, services=["a"], scale={}, registry=REGISTRY)


def test_tmpfs_becomes_sized_tmpfs_mounts(tiers):
    mounts = [m for m in services_of(tiers)["app"]["volumes"] if m["type"] == "tmpfs"]
    assert mounts == [{"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 16 * 2**20}},
                      {"type": "tmpfs", "target": "/run", "tmpfs": {"size": 2**20}}]


def test_a_tmpfs_option_swarm_cannot_apply_is_reported():
    stack = to_stack(project("migration"), services=["host"], scale={}, registry=REGISTRY)
    assert {"type": "tmpfs", "target": "/data", "tmpfs": {"size": 16 * 2**20}} in (
        services_of(stack)["host"]["volumes"])
    assert any("uid=10001" in loss for loss in stack.weakened["host"])


def test_every_data_replica_gets_its_own_volume_per_task(tiers):
    data = services_of(tiers)["data"]
    [mount] = [m for m in data["volumes"] if m["type"] == "volume"]
    assert mount == {"type": "volume", "source": "data-data_data", "target": "/data"}
    volumes = tiers.file["volumes"]
    assert volumes["data-data_data"] == {"name": "distlab_data-data_data-{{.Task.Slot}}",
                                         "labels": {"distlab.lab": "tiers"}}
    assert volumes["data-data_data-spare"]["name"] == "distlab_data-data_data-spare-{{.Task.Slot}}"
    assert any("each task has its own" in note and "data-spare" in note for note in tiers.notes)


def test_a_bind_mount_is_kept_and_reported_as_needing_its_path_on_the_host(tiers):
    prometheus = services_of(tiers)["prometheus"]
    assert {"type": "bind", "source": str(REPO / "prometheus"), "target": "/etc/prometheus",
            "read_only": True} in prometheus["volumes"]
    assert any("must exist" in loss for loss in tiers.weakened["prometheus"])


def test_a_bind_mount_of_the_projects_files_mounts_the_copy_every_host_has():
    rendered = project("tiers")
    copies = project_files(rendered, list(TIERS) + ["prometheus"], str(REPO) + "/",
                           "/etc/distlab/stack/files")
    assert copies == {str(REPO / "prometheus"): "/etc/distlab/stack/files/prometheus"}
    adapted = to_stack(rendered, services=list(TIERS) + ["prometheus"], scale={},
                       registry=REGISTRY, copies=copies)
    prometheus = services_of(adapted)["prometheus"]
    assert {"type": "bind", "source": "/etc/distlab/stack/files/prometheus",
            "target": "/etc/prometheus", "read_only": True} in prometheus["volumes"]
    # It runs on whichever host Swarm picks.
    assert not any("must exist" in loss for loss in adapted.weakened["prometheus"])
    assert any("its copy on every host" in note for note in adapted.notes)


def test_only_bind_mounts_inside_the_project_are_copied():
    rendered = {"services": {"a": {"image": "x", "volumes": [
        {"type": "bind", "source": "/srv/conf", "target": "/conf"},
        {"type": "bind", "source": "/work/labx/conf", "target": "/c"},  # a sibling, not in
        {"type": "volume", "source": "/work/lab/data", "target": "/d"},
        "/work/lab/rules:/rules:ro"]}}}
    assert project_files(rendered, ["a"], "/work/lab", "/h") == {
        "/work/lab/rules": "/h/rules"}


def test_the_credential_stays_a_file_secret_readable_by_the_node_user(tiers):
    assert tiers.file["secrets"] == {
        "distlab_credential": {"file": str(REPO / ".distlab" / "secrets" / "credential")}}
    assert services_of(tiers)["app"]["secrets"] == [
        {"source": "distlab_credential", "mode": 0o444}]
    assert "secrets" not in services_of(tiers)["prometheus"]


def test_the_lab_network_is_an_attachable_overlay_keeping_its_labels(tiers):
    assert tiers.file["networks"] == {"lab": {
        "name": "distlab_lab", "driver": "overlay", "attachable": True,
        "labels": {"distlab.lab": "common"}}}
    assert services_of(tiers)["app"]["networks"] == {"lab": None}


def test_an_internal_network_stays_internal():
    stack = to_stack(project("serverless"), services=lab_services("serverless"), scale={},
                     registry=REGISTRY)
    assert stack.file["networks"]["functions"]["internal"] is True
    assert stack.file["networks"]["functions"]["name"] == "distlab-functions"


def test_what_stack_deploy_ignores_is_left_out_with_one_note_per_kind(tiers):
    for service in services_of(tiers).values():
        assert not {"depends_on", "profiles", "tmpfs", "security_opt"} & service.keys()
    assert len(tiers.notes) == len(set(tiers.notes))
    [depends] = [note for note in tiers.notes if note.startswith("depends_on")]
    assert depends.endswith("(switch, app, data, data-spare)")  # data-master has none


def test_security_opt_is_lost_on_swarm_and_reported(tiers):
    assert any("security_opt" in loss for loss in tiers.weakened["prometheus"])
    assert "app" in tiers.weakened  # 127.0.0.1 only; app has no security_opt
    assert not any("security_opt" in loss for loss in tiers.weakened["app"])


def test_an_unknown_key_never_reaches_stack_deploy_and_is_noted():
    rendered = project("kv")
    rendered["services"]["kv"]["post_start"] = [{"command": "true"}]
    stack = to_stack(rendered, services=["kv"], scale={}, registry=REGISTRY)
    assert "post_start" not in services_of(stack)["kv"]
    assert "post_start: unknown to the stack adapter, left out (kv)" in stack.notes


@pytest.mark.parametrize("key, value", [("network_mode", "host"), ("pid", "host"),
                                        ("privileged", True), ("ipc", "host")])
def test_a_service_swarm_cannot_run_is_refused_naming_the_service_and_the_key(key, value):
    rendered = project("tiers")
    rendered["services"]["app"][key] = value
    with pytest.raises(UnsupportedOnSwarm) as caught:
        to_stack(rendered, services=TIERS, scale={}, registry=REGISTRY)
    assert isinstance(caught.value, UsageError)
    assert (caught.value.service, caught.value.key) == ("app", key)
    assert "'app'" in str(caught.value) and key in str(caught.value)


def test_the_project_is_not_changed_by_the_adapter_nor_by_changing_its_stack():
    rendered = project("tiers")
    before = copy.deepcopy(rendered)
    stack = to_stack(rendered, services=TIERS, scale={"app": 2}, registry=REGISTRY)
    assert rendered == before
    services_of(stack)["app"]["healthcheck"]["test"].append("--changed")
    stack.file["volumes"]["data-data_data"]["labels"]["changed"] = "yes"
    assert rendered == before


def test_the_stack_file_dumps_as_plain_yaml_without_anchors(tiers):
    assert "&id" not in yaml.safe_dump(tiers.file)


@pytest.mark.parametrize("lab", ["tiers", "kv", "chord", "bittorrent", "mapreduce",
                                 "serverless", "migration"])
def test_every_lab_becomes_a_stack_file_of_keys_stack_deploy_applies(lab):
    stack = to_stack(project(lab), services=lab_services(lab), scale={}, registry=REGISTRY)
    assert yaml.safe_load(yaml.safe_dump(stack.file)) == stack.file
    for name, service in services_of(stack).items():
        assert set(service) <= HONOURED_SERVICE_KEYS, name
        assert set(service["deploy"]) <= DEPLOY_KEYS, name
        assert all(set(port) <= PORT_KEYS for port in service.get("ports", ())), name
        assert all(set(mount) <= MOUNT_KEYS for mount in service.get("volumes", ())), name
        for mount in service.get("volumes", ()):
            if mount["type"] == "volume" and "source" in mount:
                assert mount["source"] in stack.file["volumes"], name
    assert all(set(n) <= NETWORK_KEYS for n in stack.file.get("networks", {}).values())
    assert all(set(v) <= VOLUME_KEYS for v in stack.file.get("volumes", {}).values())
    assert all(set(s) <= SECRET_KEYS for s in stack.file.get("secrets", {}).values())
    assert len(stack.notes) == len(set(stack.notes))


def test_services_sharing_a_volume_to_hand_over_files_are_reported():
    stack = to_stack(project("bittorrent"), services=lab_services("bittorrent"), scale={},
                     registry=REGISTRY)
    assert any("bittorrent-data" in loss for loss in stack.weakened["seeder"])
    assert any("bittorrent-data" in loss for loss in stack.weakened["leecher"])


def rendered_app() -> dict:
    """Service `app` as `docker compose config --format json` prints it (long syntax)."""
    return {
        "name": "distlab",
        "services": {"app": {
            "profiles": ["tiers"],
            "image": "distlab/node:dev",
            "command": ["python", "-m", "nodes.app"],
            "cap_add": ["NET_ADMIN"], "cap_drop": ["ALL"],
            "depends_on": {"data-master": {"condition": "service_healthy", "required": True,
                                           "restart": False}},
            "deploy": {"replicas": 3, "resources": {"limits": {
                "cpus": 0.5, "memory": "268435456", "pids": 256}}},
            "entrypoint": None,
            "environment": {"DATA_MASTER": "data-master:50051", "EMPTY": None},
            "init": True,
            "labels": {"distlab.lab": "tiers", "distlab.role": "app"},
            "networks": {"lab": None},
            "ports": [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 50051,
                       "published": "", "protocol": "tcp"},
                      {"mode": "ingress", "host_ip": "127.0.0.1", "target": 8080,
                       "published": "8080", "protocol": "tcp"}],
            "read_only": True,
            "secrets": [{"source": "distlab_credential",
                         "target": "/run/secrets/distlab_credential"}],
            "stop_grace_period": "10s",
            "tmpfs": ["/tmp:size=16m"],
            "volumes": [{"type": "volume", "source": "data-data", "target": "/data",
                         "volume": {}},
                        {"type": "bind", "source": "/srv/conf", "target": "/conf",
                         "read_only": True, "bind": {"create_host_path": True}}],
            "x-debug": True,
        }},
        "networks": {"lab": {"name": "distlab_lab", "ipam": {},
                             "labels": {"distlab.lab": "common"}}},
        "volumes": {"data-data": {"name": "distlab_data-data",
                                  "labels": {"distlab.lab": "tiers"}}},
        "secrets": {"distlab_credential": {"name": "distlab_distlab_credential",
                                           "file": "/srv/distlab/.distlab/secrets/credential"}},
        "x-distlab": {"default-lab": "tiers"},
    }


def test_the_long_syntax_compose_prints_is_adapted_the_same_way():
    stack = to_stack(rendered_app(), services=["app"], scale={}, registry=REGISTRY)
    app = services_of(stack)["app"]
    assert app["ports"] == [
        {"target": 50051, "protocol": "tcp", "mode": "host"},
        {"target": 8080, "published": 8080, "protocol": "tcp", "mode": "host"}]
    assert app["volumes"] == [
        {"type": "volume", "source": "data-data_app", "target": "/data"},
        {"type": "bind", "source": "/srv/conf", "target": "/conf", "read_only": True},
        {"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 16 * 2**20}}]
    assert stack.file["volumes"]["data-data_app"]["name"] == "distlab_data-data_app-{{.Task.Slot}}"
    assert app["secrets"] == [{"source": "distlab_credential", "mode": 0o444}]
    assert stack.file["secrets"]["distlab_credential"]["name"] == "distlab_distlab_credential"
    assert app["deploy"]["resources"] == {"limits": {"cpus": "0.5", "memory": "268435456",
                                                     "pids": 256}}
    assert app["environment"]["EMPTY"] is None
    assert "entrypoint" not in app and "x-debug" not in app
    assert stack.file["networks"]["lab"] == {"name": "distlab_lab", "driver": "overlay",
                                             "attachable": True,
                                             "labels": {"distlab.lab": "common"}}
    assert set(stack.file) == {"version", "services", "networks", "volumes", "secrets"}
    assert any(note.startswith("ports: ingress mode became host mode") for note in stack.notes)
    assert any(note.startswith("name:") for note in stack.notes)


def test_a_fixed_port_on_a_scaled_service_is_noted_as_one_task_per_host():
    stack = to_stack(rendered_app(), services=["app"], scale={}, registry=REGISTRY)
    assert any("one task of the service run on each host" in note for note in stack.notes)


def test_a_global_service_keeps_one_volume_name_and_cannot_be_scaled():
    rendered = rendered_app()
    rendered["services"]["app"]["deploy"] = {"mode": "global"}
    stack = to_stack(rendered, services=["app"], scale={}, registry=REGISTRY)
    app = services_of(stack)["app"]
    assert app["deploy"]["mode"] == "global" and "replicas" not in app["deploy"]
    assert app["hostname"] == "app-{{.Node.Hostname}}"
    assert stack.file["volumes"]["data-data"]["name"] == "distlab_data-data"
    with pytest.raises(UsageError, match="global"):
        to_stack(rendered, services=["app"], scale={"app": 2}, registry=REGISTRY)


def test_a_port_range_is_refused_naming_the_service():
    rendered = rendered_app()
    rendered["services"]["app"]["ports"] = ["127.0.0.1:7000-7002:7000-7002"]
    with pytest.raises(UnsupportedOnSwarm, match="'app'.*ports"):
        to_stack(rendered, services=["app"], scale={}, registry=REGISTRY)


def test_a_service_the_project_lacks_is_a_usage_error():
    with pytest.raises(UsageError, match="'kv'"):
        to_stack(project("tiers"), services=[*TIERS, "kv"], scale={}, registry=REGISTRY)


def test_an_external_volume_keeps_its_own_name_on_every_host():
    rendered = rendered_app()
    rendered["volumes"]["data-data"] = {"external": True}
    rendered["services"]["app"]["volumes"][0]["volume"] = {"subpath": "app"}
    stack = to_stack(rendered, services=["app"], scale={}, registry=REGISTRY)
    assert stack.file["volumes"] == {"data-data": {"name": "data-data", "external": True}}
    assert services_of(stack)["app"]["volumes"][0]["source"] == "data-data"
    assert "volumes: volume.subpath is not in the 3.9 format, left out (app)" in stack.notes
