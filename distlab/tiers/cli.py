"""`distlab tiers bank` (and its old name `distlab bank`): the bank workload and its verdict.

Registered by `distlab.tiers.lab`. Errors are DistlabErrors, which the main command
prints as one line and a hint; exit 0 when the invariants hold, 1 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import grpc
from rich.table import Table

from distlab.console import out
from distlab.errors import DistlabError, UsageError


@click.group()
def tiers() -> None:
    """The tiers lab: the bank workload through the switch (start it with `distlab up`)."""


def _bank(seconds: float, ops: int, processes: int, accounts: int, seed: int,
          history_path: str | None) -> None:
    """Run the bank workload through the switch and check the bank invariants.

    Random transfers, balance reads and audits over fresh accounts; then every
    indefinite transfer is resolved by replaying its idempotency key and the
    final balances are compared with every applied transfer. Exit 0 when the
    invariants hold, 1 when they do not or cannot be decided.
    """
    from distlab.testbed import Testbed
    from distlab.tiers.bank import BankConfig, BankWorkload

    if seconds <= 0 or ops <= 0 or processes <= 0 or accounts < 2:
        raise UsageError("--seconds, --ops and --processes must be > 0 and --accounts >= 2",
                         hint="distlab tiers bank --help")
    testbed = Testbed()
    workload = BankWorkload(testbed.client("switch"), BankConfig(
        accounts=accounts, processes=processes, max_ops=ops, seconds=seconds, seed=seed))
    try:
        workload.setup(deadline_seconds=30)
    except grpc.RpcError as exc:
        raise DistlabError(f"cannot open accounts through the switch: {exc.code().name}: "
                           f"{exc.details()}", hint="distlab status") from None
    out.print(f"running {processes} clients for up to {seconds:g} s / {ops} operations ...")
    workload.run()
    verdict = workload.check()
    if history_path:
        workload.history.write(Path(history_path))
    table = Table(title=f"bank: {verdict.outcome}", title_justify="left")
    for column in ("operation", "ok", "fail", "info (indefinite)"):
        table.add_column(column)
    for name, row in sorted(workload.history.counts().items()):
        table.add_row(name, str(row["ok"]), str(row["fail"]), str(row["info"]))
    out.print(table)
    for problem in verdict.problems:
        out.print(f"  {problem}", markup=False)
    if verdict.valid is not True:
        sys.exit(1)


def bank_command(name: str) -> click.Command:
    """The bank command under `name` (`tiers bank`, and `bank` for scripts that knew it)."""
    options = (
        click.option("--seconds", default=20.0, show_default=True,
                     help="how long the clients run"),
        click.option("--ops", default=5000, show_default=True,
                     help="at most this many operations"),
        click.option("--processes", default=4, show_default=True, help="concurrent clients"),
        click.option("--accounts", default=8, show_default=True,
                     help="accounts to transfer between"),
        click.option("--seed", default=0, show_default=True,
                     help="same seed, same operations"),
        click.option("--history", "history_path", type=click.Path(dir_okay=False),
                     default=None, help="write every operation to this history.jsonl"),
    )
    command = _bank
    for option in reversed(options):
        command = option(command)
    return click.command(name=name)(command)


tiers.add_command(bank_command("bank"))
bank = bank_command("bank")  # `distlab bank`, as before the tiers group existed


@tiers.command(name="migrate-replica")
@click.argument("replica")
@click.option("--to", "to", required=True, help="the spare it moves into (data-spare-1)")
@click.option("--strategy", type=click.Choice(("pre-copy", "stop-and-copy")),
              default="pre-copy", show_default=True)
@click.option("--rate", type=click.FloatRange(min=0.1), default=None,
              help="pre-copy: first round's rate limit, MiB/s [default: the replica's]")
@click.option("--max-rate", type=click.FloatRange(min=0.1), default=None,
              help="highest rate, and the final round's, MiB/s [default: the replica's]")
@click.option("--max-rounds", type=click.IntRange(1, 1000), default=None,
              help="pre-copy: rounds before the final stop-and-copy [default: 29]")
def migrate_replica(replica: str, to: str, strategy: str, rate: float | None,
                    max_rate: float | None, max_rounds: int | None) -> None:
    """Move data REPLICA (data-2, or chain:head|middle|tail) live into a spare replica
    while the chain serves: its keys by dirty hash slots, then a short pause, then the
    spare takes its place in the chain and REPLICA is fenced."""
    from distlab.testbed import Testbed
    from distlab.tiers.replicas import ReplicaMover, summary

    def show(progress) -> None:
        if progress.phase != shown[-1]:
            shown.append(progress.phase)
            out.print(f"{progress.phase:<10} round {progress.round:>3}  units left "
                      f"{progress.units_left:>6}  {progress.bytes_per_second / 1e6:>7.1f} MB/s",
                      markup=False)

    shown = [""]
    mover = ReplicaMover(Testbed().machines())
    source = mover.source(replica).name
    result = mover.migrate(source, to, strategy=strategy, min_rate_mib=rate or 0.0,
                           max_rate_mib=max_rate or 0.0, max_rounds=max_rounds or 0,
                           on_progress=show)
    out.print(summary(source, to, result), markup=False)
