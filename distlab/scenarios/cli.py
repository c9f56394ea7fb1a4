"""`distlab run SCENARIO`: the scenario runner's command line.

Exit codes (documented in docs/scenarios.md, what CI acts on): 0 every check
valid; 1 a check invalid; 2 a check unknown, no check at all, an invalid
scenario file, or the run itself failed (lab would not come up, Ctrl-C, ...).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from distlab.console import out, print_error
from distlab.errors import DistlabError
from distlab.scenarios.runner import RunOptions, ScenarioRunner, load
from distlab.testbed import Testbed

RUN_FAILED = 2
OUTCOME_STYLES = {"valid": "green", "invalid": "red", "unknown": "yellow"}


@click.command(name="run")
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=None,
              help="seed of the fault schedule and the operations (default: the file's)")
@click.option("--keep", is_flag=True, help="leave the lab up afterwards (to look at it)")
@click.option("--short", is_flag=True,
              help="run for the file's short_duration (what `make test` does)")
@click.option("--reports", "reports_root", type=click.Path(path_type=Path),
              default=Path("reports"), show_default=True, help="where report directories go")
def run(scenario: Path, seed: int | None, keep: bool, short: bool, reports_root: Path) -> None:
    """Run SCENARIO (scenarios/NAME.yaml or .py): workloads, faults, checks, a report.

    Exit code: 0 every check valid, 1 a check invalid, 2 unknown or the run failed."""
    testbed = Testbed()
    try:
        spec, script = load(scenario, testbed)
    except DistlabError as exc:  # ScenarioError too: one line per problem of the file
        print_error(str(exc), exc.hint, console=out)  # the run's story is all on stdout
        sys.exit(RUN_FAILED)
    options = RunOptions(seed=seed, keep=keep, short=short, reports_root=reports_root)
    chosen_seed = spec.seed if seed is None else seed
    command = shlex.join(["distlab", "run", str(scenario), "--seed", str(chosen_seed)]
                         + (["--short"] if short else []))
    runner = ScenarioRunner(testbed, spec, script, options=options, command=command,
                    say=lambda line: out.print(line, markup=False, soft_wrap=True))
    result = runner.run()
    summary = result.summary
    for verdict in summary.verdicts:
        style = OUTCOME_STYLES[verdict.outcome]
        out.print(f"[{style}]{verdict.outcome:>7}[/]  {verdict.name}")
        for problem in verdict.problems[:12]:
            out.print(f"         {problem}", markup=False, soft_wrap=True)
    if summary.error:
        out.print(f"[red]  error[/]  {summary.error}", soft_wrap=True)
    out.print(f"verdict: {summary.verdict} (exit {summary.exit_code}); "
                  f"report: {result.directory / 'report.html'}")
    out.print(f"reproduce: {command}", markup=False)
    sys.exit(summary.exit_code)
