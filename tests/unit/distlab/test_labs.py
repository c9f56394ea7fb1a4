"""Unit tests for distlab/labs.py: the lab catalogue read from the real compose.yaml."""

from pathlib import Path

import pytest

from distlab.errors import UnknownLab, UsageError
from distlab.labs import MAX_REPLICAS, load_catalogue

COMPOSE = Path(__file__).resolve().parents[3] / "compose.yaml"


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(COMPOSE)


def test_the_default_lab_is_tiers_with_switch_app_and_data_tier(catalogue):
    assert catalogue.default == "tiers"
    assert catalogue.lab(None) is catalogue.labs["tiers"]
    assert catalogue.labs["tiers"].services == ("switch", "app", "data", "data-spare",
                                                "data-master")
    assert catalogue.labs["kv"].services == ("kv",)
    assert all(lab.description for lab in catalogue.labs.values())


def test_prometheus_comes_with_every_lab_and_grafana_only_with_its_profile(catalogue):
    assert "prometheus" in catalogue.common_services
    assert "grafana" not in catalogue.common_services
    assert "kv" not in catalogue.common_services


def test_parse_scale_reads_service_counts(catalogue):
    kv = catalogue.lab("kv")
    assert catalogue.parse_scale(kv, ["kv=5"]) == {"kv": 5}
    assert catalogue.parse_scale(kv, ["kv=0"]) == {"kv": 0}
    assert catalogue.parse_scale(kv, []) == {}


@pytest.mark.parametrize("pair", ["kv", "kv=x", "kv=", "kv=-1", "kv=2.5"])
def test_a_scale_that_is_not_service_equals_n_says_how_to_write_one(catalogue, pair):
    with pytest.raises(UsageError) as raised:
        catalogue.parse_scale(catalogue.lab("kv"), [pair])
    assert repr(pair) in str(raised.value)
    assert "SERVICE=N" in str(raised.value)
    assert "--scale kv=2" in raised.value.hint


def test_a_scale_for_a_service_the_lab_lacks_names_its_services(catalogue):
    with pytest.raises(UsageError) as raised:
        catalogue.parse_scale(catalogue.lab("kv"), ["nosuch=2"])
    assert "'nosuch'" in str(raised.value)
    assert raised.value.hint == "its services: kv"


def test_a_scale_beyond_the_limit_says_the_limit(catalogue):
    with pytest.raises(UsageError) as raised:
        catalogue.parse_scale(catalogue.lab("kv"), ["kv=999"])
    assert f"0..{MAX_REPLICAS}" in str(raised.value)
    assert catalogue.parse_scale(catalogue.lab("kv"), [f"kv={MAX_REPLICAS}"]) == \
        {"kv": MAX_REPLICAS}


def test_an_unknown_lab_lists_the_labs(catalogue):
    with pytest.raises(UnknownLab) as raised:
        catalogue.lab("nosuchlab")
    assert "'nosuchlab'" in str(raised.value)
    assert raised.value.hint == ("labs: bittorrent, chord, kv, mapreduce, migration, serverless, "
                                 "tiers")
    assert isinstance(raised.value, UsageError)  # so the CLI exits 2, not 1


def test_a_lab_is_the_services_whose_profiles_name_it(tmp_path):
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        "x-distlab:\n"
        "  default-lab: chord\n"
        "  labs: {kv: key-value, chord: a ring}\n"
        "services:\n"
        "  kv: {profiles: [kv]}\n"
        "  chord: {profiles: [chord]}\n"
        "  client: {profiles: [kv, chord]}\n"
        "  prometheus: {}\n")
    catalogue = load_catalogue(compose)
    assert catalogue.default == "chord"
    assert catalogue.labs["kv"].services == ("kv", "client")
    assert catalogue.labs["chord"].services == ("chord", "client")
    assert catalogue.common_services == ("prometheus",)


def test_each_service_has_its_default_count_and_role_from_compose(catalogue):
    tiers = catalogue.labs["tiers"]
    assert tiers.replicas == {"switch": 1, "app": 3, "data": 3, "data-spare": 0,
                              "data-master": 1}
    assert tiers.roles == {"switch": "switch", "app": "app", "data": "data",
                           "data-spare": "data", "data-master": "data-master"}
    assert catalogue.labs["chord"].replicas == {"chord": 8}
    assert hash(tiers) == hash(catalogue.labs["tiers"])  # still usable as a dict key


def test_a_role_comes_from_the_label_in_either_compose_form_else_the_service(tmp_path):
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        "x-distlab:\n"
        "  labs: {kv: key-value}\n"
        "services:\n"
        "  kv: {profiles: [kv], labels: {distlab.role: store}, deploy: {replicas: 5}}\n"
        "  client: {profiles: [kv], labels: [distlab.lab=kv, distlab.role=loadgen]}\n"
        "  sidecar: {profiles: [kv]}\n")
    kv = load_catalogue(compose).labs["kv"]
    assert kv.roles == {"kv": "store", "client": "loadgen", "sidecar": "sidecar"}
    assert kv.replicas == {"kv": 5, "client": 1, "sidecar": 1}


def test_a_lab_s_variables_include_those_its_health_checks_read(catalogue):
    # DISTLAB_CHORD_PROBE_INTERVAL: the chord peers' probe interval, which the 128-peer bench
    # sets (a scenario's `environment:` may too); environment variables are read as before.
    assert catalogue.lab("chord").variables == ("DISTLAB_CHORD_PROBE_INTERVAL",)
    assert "DISTLAB_SEEDER_UPLOAD_RATE" in catalogue.lab("bittorrent").variables
