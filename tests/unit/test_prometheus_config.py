"""prometheus/: the config, the rules and the rule unit tests pass promtool
(from the lab's own Prometheus image; see tests/support/promtool.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.promtool import UNAVAILABLE, promtool_argv, run_promtool

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*_test.yml"))

needs_promtool = pytest.mark.skipif(promtool_argv() is None, reason=UNAVAILABLE)
_promtool = run_promtool


@needs_promtool
def test_promtool_check_config() -> None:
    done = _promtool("check", "config", str(CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    # rule_files is relative to the config, so the rules are checked too.
    assert f"{len(RULES)} rule files found" in done.stdout + done.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    assert RULES, "no rule files in prometheus/rules"
    done = _promtool("check", "rules", *map(str, RULES))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    assert RULE_TESTS, "no promtool rule tests in prometheus/tests"
    done = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_config_matches_the_lab_contract() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["global"] == {
        "scrape_interval": "5s",
        "scrape_timeout": "4s",
        "evaluation_interval": "5s",
    }
    assert "alerting" not in config
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"nodes", "prometheus", "scenario"}
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]
    (file_sd,) = jobs["nodes"]["file_sd_configs"]
    assert file_sd["files"] == ["/distlab/targets/*.json"]
    assert file_sd["refresh_interval"] == "5s"
    assert "static_configs" not in jobs["nodes"]
    # The scenario runner's fault gauge: its own files, so it is never counted as a machine.
    (runner_sd,) = jobs["scenario"]["file_sd_configs"]
    assert runner_sd["files"] == ["/distlab/targets/*.yml"]


def test_rule_directory_holds_only_rule_files() -> None:
    """Prometheus loads rules/*.yml; a promtool test file there would stop it starting."""
    for path in RULES:
        content = yaml.safe_load(path.read_text())
        assert set(content) == {"groups"}, f"{path} is not a rule file"


def test_expected_rules_exist() -> None:
    names = set()
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                names.add(rule.get("record") or rule.get("alert"))
    assert {
        "role:distlab_rpc_server_requests:rate30s",
        "role:distlab_rpc_server_errors:rate30s",
        "role:distlab_rpc_server_latency_seconds:p50",
        "role:distlab_rpc_server_latency_seconds:p99",
        "MachineDown",
        "FaultActive",
    } <= names
