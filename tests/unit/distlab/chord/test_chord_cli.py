"""distlab/chord/cli.py: `sim chord` and `chord ring` as click commands (the main `distlab`
group that registers them turns DistlabError into one line and a hint)."""

import json

import pytest
from click.testing import CliRunner

from distlab.chord import cli
from distlab.errors import DistlabError


def test_sim_chord_prints_tables_and_writes_the_report(tmp_path):
    result = CliRunner().invoke(cli.sim_chord, ["--nodes", "16", "--lookups", "20", "--seed",
                                                "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Path length vs ring size" in result.output
    assert f"wrote {tmp_path / 'chord-sim.json'}" in result.output
    assert (tmp_path / "path_length.png").exists()


def test_sim_chord_json_is_machine_readable(tmp_path):
    result = CliRunner().invoke(cli.sim_chord, ["--nodes", "8", "--lookups", "10", "--json",
                                                "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["nodes"] == 8 and report["path_lengths"][0]["nodes"] == 8


@pytest.mark.parametrize("args, fragment", [
    (["--nodes", "4"], "4 is not in the range 8<=x<=65536"),
    (["--lookups", "0"], "0 is not in the range"),
])
def test_sim_chord_refuses_bad_options_as_usage_errors(tmp_path, args, fragment):
    result = CliRunner().invoke(cli.sim_chord, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert fragment in result.output


def test_sim_chord_says_when_it_cannot_write(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli.sim_chord, ["--nodes", "8", "--lookups", "5", "--out",
                                                str(blocker / "sub")])
    assert isinstance(result.exception, DistlabError)
    assert "cannot write the report" in str(result.exception)


def test_chord_ring_without_chord_machines_says_how_to_start_them(monkeypatch):
    class NoMachines:
        def machines(self):
            return []

    monkeypatch.setattr(cli, "Testbed", NoMachines)
    result = CliRunner().invoke(cli.chord, ["ring"])
    assert isinstance(result.exception, DistlabError)
    assert str(result.exception) == "no chord machine answered"
    assert result.exception.hint == "distlab up chord --scale chord=16"
