"""The Chord lab's commands: `distlab chord ring` and `distlab sim chord`.

distlab.chord.lab registers `chord` (a group) on the main command and
`sim_chord` under its `sim` group. Errors are `DistlabError`s, which the main
command prints as one line and a hint; bad options are click usage errors
(exit 2). `ring` reads the machines through the Testbed, all at once within a few
seconds however many there are, and writes one PNG;
`sim chord` runs in this process and writes its report directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from distlab.chord import sim
from distlab.chord.ringmap import (
    DEFAULT_PNG,
    OVERALL_TIMEOUT_SECONDS,
    STATE_TIMEOUT_SECONDS,
    Verdict,
    assess_ring,
    draw_ring,
    fetch_states,
    ring_rows,
)
from distlab.console import out
from distlab.errors import DistlabError
from distlab.testbed import Testbed


@click.group()
def chord() -> None:
    """The Chord lab: look at the running ring (start it with `distlab up chord`)."""


@chord.command()
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_PNG,
              show_default=True, help="where to draw the ring")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=OVERALL_TIMEOUT_SECONDS,
              show_default=True, help="seconds to wait for all the peers' answers")
def ring(png: Path, timeout: float) -> None:
    """Every chord machine's state by id, whether they form one ordered ring, and a PNG.

    Peers are asked at once, each for at most 2 s: those that do not answer are marked,
    and the verdict says whether the ring is one, several, still mending, or not known."""
    states, silent = fetch_states(Testbed().machines(), overall=timeout,
                                  per_peer=min(STATE_TIMEOUT_SECONDS, timeout))
    if not states:
        detail = f": {'; '.join(map(str, silent))}" if silent else ""
        raise DistlabError(f"no chord machine answered{detail}",
                           hint="distlab up chord --scale chord=16" if not silent else
                           "the peers may be starting or starved: run it again, or see "
                           "`distlab status`")
    view = assess_ring(states, silent)
    table = Table(title=f"Chord ring: {len(view.check.ordered)} members, "
                        f"2^{states[0].bits} ids")
    for column in ("id", "machine", "address", "predecessor", "successor list",
                   "keys (+replicas)"):
        table.add_column(column)
    for row in ring_rows(view.check, view.unread):
        table.add_row(*row)
    out.print(table)
    for quiet in silent:
        out.print(f"[yellow]did not answer:[/] {quiet}", markup=True)
    drawn = draw_ring(states, png)
    if view.verdict is Verdict.ONE:
        out.print(f"[green]{view.headline()}[/]; drawn in {drawn}")
        return
    for reason in view.reasons:
        out.print(f"[red]{view.verdict.value}:[/] {reason}")
    for problem in view.check.problems:
        out.print(f"[red]problem:[/] {problem}")
    out.print(f"{view.headline()}; drawn in {drawn}")
    if view.verdict is Verdict.UNKNOWN:
        raise DistlabError(f"ring not yet known: {len(silent)} of {view.asked} chord peers "
                           f"did not answer within {timeout:.0f} s",
                           hint="starved peers answer late: run it again, or with --timeout 15")
    raise DistlabError(f"not one consistent ring: {view.verdict.value}, "
                       f"{len(view.check.problems)} problem(s)",
                       hint="stabilization mends a ring within a few CHORD_STABILIZE_SECONDS: "
                            "run it again")


@click.command(name="chord")
@click.option("--nodes", type=click.IntRange(8, 1 << 16), default=1024, show_default=True,
              help="ring size: path lengths for N = 8, 16, ... up to it; failures and load "
                   "balance at it")
@click.option("--lookups", type=click.IntRange(1, 1_000_000), default=2000, show_default=True,
              help="random lookups per table row")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=sim.DEFAULT_OUT, show_default=True, help="report directory")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON, not tables")
def sim_chord(nodes: int, lookups: int, seed: int, out: Path, as_json: bool) -> None:
    """Simulate Chord in one process with the peers' own code: path length vs N, lookups
    after failures, keys per node with virtual nodes (SIGCOMM 2001, ToN 2003)."""
    report = sim.run(nodes, lookups=lookups, seed=seed)
    try:
        written = sim.write_report(report, out)
    except OSError as exc:
        raise DistlabError(f"cannot write the report to {out}: {exc}",
                           hint="choose another directory with --out") from None
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(sim.format_tables(report), nl=False)
    click.echo(f"\nwrote {', '.join(str(p) for p in written)}")
