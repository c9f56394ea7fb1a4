"""`distlab migrate VM --to HOST [--strategy ...]` and `distlab vms`: the migration lab.

Registered by `distlab.migration.lab`. `migrate` prints the migration's progress as it
goes (a line per phase or round, at most one a second between them: round, pages left,
dirty rate, MB/s), then what it cost: downtime, total time, bytes sent against the image
and, for pre-copy, Clark's per-round table. It exits 1 when the migration failed; the
error says where the vm runs then.
"""

from __future__ import annotations

import time

import click
from rich.table import Table

from distlab.console import out
from distlab.migration.client import MIB, STRATEGIES, Hypervisors, Limits
from nodes.rpc import vm_pb2

PAGE = 4096


def _hypervisors() -> Hypervisors:
    from distlab.testbed import Testbed

    return Hypervisors.of(Testbed())


class ProgressLines:
    """Prints a progress message when its phase or round changes, else once a second."""

    def __init__(self, every: float = 1.0) -> None:
        self._every = every
        self._last: tuple[str, int] | None = None
        self._printed = 0.0

    def __call__(self, progress: vm_pb2.MigrationProgress) -> None:
        key = (progress.phase, progress.round)
        now = time.monotonic()
        if key == self._last and now - self._printed < self._every:
            return
        self._last, self._printed = key, now
        out.print(f"{progress.phase:<10} round {progress.round:>3}  pages left "
                  f"{progress.pages_left:>8}  dirty {progress.dirty_pages_per_second:>8.0f} "
                  f"pages/s  {progress.bytes_per_second / 1e6:>7.1f} MB/s", markup=False)


def summary(name: str, to: str, result: vm_pb2.MigrationResult) -> str:
    sent = result.bytes_sent / result.image_bytes if result.image_bytes else 0.0
    why = f", stopped by {result.stop_reason}" if result.stop_reason else ""
    what = "store" if result.guest == "kv" else "image"
    return (f"{name} moved to {to} by {result.strategy}: downtime "
            f"{result.downtime_seconds * 1000:.1f} ms, total {result.total_seconds:.2f} s, "
            f"sent {sent:.2f}x the {size(result.image_bytes)} {what} in "
            f"{len(result.rounds)} rounds{why}")


def size(count: float) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.{0 if unit == 'MiB' else 1}f} {unit}"
    return f"{count:.0f} bytes"


def rounds_table(result: vm_pb2.MigrationResult) -> Table:
    """Clark's per-round bars as a table: what each round sent against what the guest
    dirtied meanwhile, down to the final stop-and-copy round. A kv guest's units are hash
    slots of keys: what it dirtied is counted in slots."""
    slots = result.guest == "kv"
    table = Table("round", "live", "rate MB/s", "sent MiB",
                  "dirtied slots" if slots else "dirtied MiB", "seconds")
    for r in result.rounds:
        table.add_row(str(r.number), "yes" if r.live else "paused (stop-and-copy)",
                      f"{r.rate / 1e6:.1f}" if r.rate else "-", f"{r.bytes_sent / MIB:.2f}",
                      str(r.pages_dirtied) if slots else f"{r.pages_dirtied * PAGE / MIB:.2f}",
                      f"{r.seconds:.3f}")
    return table


@click.command()
@click.argument("vm")
@click.option("--to", "to", required=True, help="the host it moves to (host-2)")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="pre-copy",
              show_default=True)
@click.option("--rate", type=click.FloatRange(min=0.1), default=None,
              help="pre-copy: first round's rate limit, MiB/s [default: the vm's, 32]")
@click.option("--max-rate", type=click.FloatRange(min=0.1), default=None,
              help="pre-copy: highest rate, and the final round's, MiB/s [default: the vm's]")
@click.option("--max-rounds", type=click.IntRange(1, 1000), default=None,
              help="pre-copy: rounds before the final stop-and-copy [default: 29, as Xen]")
def migrate(vm: str, to: str, strategy: str, rate: float | None, max_rate: float | None,
            max_rounds: int | None) -> None:
    """Move VM live to host TO while it runs and its clients call it through the switch."""
    limits = Limits(min_rate_mib=rate or 0.0, max_rate_mib=max_rate or 0.0,
                    max_rounds=max_rounds or 0)
    result = _hypervisors().migrate(vm, to, strategy=strategy, limits=limits,
                                    on_progress=ProgressLines())
    out.print(summary(vm, to, result), markup=False)
    if strategy == "pre-copy" and result.rounds:
        out.print(rounds_table(result))


@click.command()
@click.option("--checksum", is_flag=True, help="also hash each image (sha256)")
def vms(checksum: bool) -> None:
    """Where each vm of the migration lab runs, and what it holds."""
    hypervisors = _hypervisors()
    places = hypervisors.vms(checksum=checksum)
    table = Table("vm", "host", "state", "guest", "holds", "address",
                  *(["sha256"] if checksum else []))
    for place in sorted(places, key=lambda p: (p.name, p.host)):
        holds = (f"{place.keys} keys" if place.guest == "kv" else
                 f"{place.pages * PAGE / MIB:.0f} MiB, {place.guest_step} guest steps")
        table.add_row(place.name, place.host, place.state, place.guest, holds, place.address,
                      *([place.checksum[:16]] if checksum else []))
    out.print(table)
    for host, why in sorted(hypervisors.unreachable.items()):
        out.print(f"{host} did not answer: {why}", markup=False)
