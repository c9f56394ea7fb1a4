"""distlab/mapreduce: the lab registers through its entry point, and `distlab mr` has its
verbs; job_request ships a module's source or names a built-in."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from distlab.cli import build_cli
from distlab.mapreduce.client import MapReduceError, job_request
from distlab.registry import load_registry


def test_the_lab_registers_its_workload_check_and_verbs():
    registry = load_registry()
    assert registry.labs["mapreduce"].entry_role == "mapreduce-master"
    assert registry.workloads["mapreduce"].ops == ("job",)
    assert registry.checks["output"].needs == "mapreduce"
    result = CliRunner().invoke(build_cli(registry), ["mr", "--help"])
    assert result.exit_code == 0
    assert all(verb in result.output for verb in ("submit", "status", "result"))


def test_a_job_is_a_builtin_name_or_a_module_file(tmp_path):
    assert job_request("wordcount") == {"builtin": "wordcount"}
    module = tmp_path / "mine.py"
    module.write_text("def map(k, v): return []\ndef reduce(k, vs): return 0\n")
    assert job_request(str(module)) == {"module_source": module.read_text(), "name": "mine"}
    with pytest.raises(MapReduceError, match="no job module"):
        job_request(str(tmp_path / "missing.py"))
