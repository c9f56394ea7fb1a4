"""Faults that exist only with several hosts (the swarm runtime): a host's engine
stopped, a host cut off from the others, a slow link between two hosts. Each is done on
the host itself over SSH (distlab.runtime.swarm), journaled like every fault, and
undone by `distlab heal` (which also starts every stopped engine and clears every
host's network, whatever the journal says)."""

from __future__ import annotations

from dataclasses import replace

import click

from distlab.faults.kinds import cli_nemesis, parse_rate, report_fault
from distlab.registry import FaultKind, Injection


def _parse_host(parser, fault, entries, node, path):
    return replace(fault, params={"host": parser.required(entries, node, path, "host",
                                                          parser.string)})


def _parse_link(parser, fault, entries, node, path):
    required = parser.required
    return replace(fault, params={
        "host": required(entries, node, path, "host", parser.string),
        "other": required(entries, node, path, "other", parser.string),
        "rate": required(entries, node, path, "rate", lambda n, p: parse_rate(parser, n, p))})


@click.command(name="host-stop")
@click.argument("host")
def host_stop_command(host: str) -> None:
    """Stop HOST's Docker engine, and every machine on it (the swarm runs them elsewhere;
    heal starts the engine again)."""
    report_fault(cli_nemesis().host_stop(host))


@click.command(name="host-partition")
@click.argument("host")
def host_partition_command(host: str) -> None:
    """Cut HOST off from every other host of the cluster (iptables on the host)."""
    report_fault(cli_nemesis().host_partition(host))


@click.command(name="host-slow")
@click.argument("host")
@click.argument("other")
@click.argument("rate")
def host_slow_command(host: str, other: str, rate: str) -> None:
    """Cap the link between HOST and OTHER to RATE both ways (tc tbf), e.g. 1mbit."""
    report_fault(cli_nemesis().host_slow(host, other, rate))


def _inject(method: str, *fields: str):
    def inject(injection: Injection):
        params = injection.fault.params
        return getattr(injection.nemesis, method)(*(params[f] for f in fields))
    return inject


HOST_FAULT_KINDS = (
    FaultKind("host-stop", ("host",), _parse_host, _inject("host_stop", "host"),
              host_stop_command),
    FaultKind("host-partition", ("host",), _parse_host, _inject("host_partition", "host"),
              host_partition_command),
    FaultKind("host-slow", ("host", "other", "rate"), _parse_link,
              _inject("host_slow", "host", "other", "rate"), host_slow_command),
)
