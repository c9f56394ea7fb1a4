"""`distlab cluster ...`: make a swarm of hosts over SSH, look at it, undo it.

The steps (and Fabric, paramiko, cryptography under them) are imported by the command
that needs them: every other `distlab` command starts a quarter second sooner."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from distlab.console import err, out
from distlab.errors import ClusterError

ROOT = Path(".")


def _say(line: str) -> None:
    err.print(f"[cluster] {line}", markup=False, soft_wrap=True)


@click.group()
def cluster() -> None:
    """Several hosts as one: a Docker Swarm set up over SSH (docs/cluster.md)."""


@cluster.command()
@click.argument("hosts", nargs=-1, required=True, metavar="USER@HOST[:PORT]...")
@click.option("--identity", "-i", type=click.Path(dir_okay=False, path_type=Path),
              help="the SSH private key to log in with (default: your SSH agent and ~/.ssh)")
def create(hosts: tuple[str, ...], identity: Path | None) -> None:
    """Set up HOSTS (key-based SSH, root or passwordless sudo) as one swarm; the first is
    the manager and runs the image registry."""
    from distlab.cluster import cluster as steps
    from distlab.cluster.hosts import parse_hosts

    made = steps.create(ROOT, parse_hosts(hosts), identity=identity, on_step=_say)
    out.print(f"cluster of {len(made.hosts)} hosts: manager {made.manager.name} "
              f"({made.manager.address}), registry {made.registry}", markup=False)
    _print(*steps.status(ROOT))


@cluster.command()
def status() -> None:
    """Each host: reachable, engine version, swarm role, node state; the registry."""
    from distlab.cluster import cluster as steps

    made, hosts, registry_state = steps.status(ROOT)
    _print(made, hosts, registry_state)
    if not all(h.reachable for h in hosts):
        raise SystemExit(1)


def _print(made, hosts, registry_state: str) -> None:
    table = Table("host", "ssh", "address", "reachable", "engine", "swarm role", "node")
    for host in hosts:
        table.add_row(host.name, host.spec, host.address, "yes" if host.reachable else "NO",
                      host.engine, host.role, host.node_state)
    out.print(table)
    out.print(f"registry {made.registry or '-'}: {registry_state}", markup=False)
    for host in hosts:
        if host.problem:
            out.print(f"{host.name}: {host.problem}", markup=False, soft_wrap=True)


@cluster.command()
def destroy() -> None:
    """Leave every host as create found it: out of the swarm, no registry, no images or
    containers distlab put there (the Docker engine setup-host.sh installed stays)."""
    from distlab.cluster import cluster as steps

    leftovers = steps.destroy(ROOT, on_step=_say)
    if leftovers:
        for line in leftovers:
            err.print(f"left: {line}", markup=False, soft_wrap=True)
        raise ClusterError(f"{len(leftovers)} hosts could not be cleaned; they stay in "
                           ".distlab/cluster.json",
                           hint="bring them back and run `distlab cluster destroy` again")
    out.print("cluster destroyed: every host left as it was found", markup=False)


@cluster.command(name="test-hosts")
@click.argument("count", type=int, default=3)
@click.option("--remove", is_flag=True, help="remove the test hosts instead")
def test_hosts(count: int, remove: bool) -> None:
    """Start COUNT test hosts on this machine (containers with sshd and a Docker engine)
    and print the `distlab cluster create` command that uses them."""
    from distlab.cluster import testhosts

    if remove:
        out.print(f"removed {testhosts.remove(ROOT)} test hosts", markup=False)
        return
    specs = testhosts.make(ROOT, count)
    key = testhosts.key_path(ROOT)
    out.print(f"{len(specs)} test hosts: {' '.join(specs)}", markup=False)
    out.print(f"distlab cluster create --identity {key} {' '.join(specs)}", markup=False,
              soft_wrap=True)
