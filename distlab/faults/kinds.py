"""The nemesis's fault kinds as a table: each kind declared once, with everything it needs.

For each kind: the fields a scenario writes for it and how they are read (on the
scenario parser, distlab.scenarios.spec), how the runner injects it (through the
`Nemesis`, which journals how to undo it, so healing needs nothing more here),
whether the random nemesis may draw it, and its `distlab chaos` verb. The registry
(distlab.registry) starts from `FAULT_KINDS`; a lab adds a kind of its own with a
`FaultKind` in its plugin, in one place too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import click
import grpc
from yaml.nodes import Node

from distlab.console import out
from distlab.faults.network import RATE, SHAPES
from distlab.registry import FaultKind, Injection
from distlab.scenarios.model import Fault
from distlab.scenarios.reader import Entries, join
from nodes.common.faults import EXEMPT_PREFIX, MAX_DELAY_SECONDS

if TYPE_CHECKING:
    from distlab.faults.nemesis import FaultRecord
    from distlab.scenarios.spec import ScenarioParser

RPC_ACTIONS = ("delay", "error", "drop")
STATUS_CODES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)
RATE_FORM = "a number and one of bit kbit mbit gbit bps kbps mbps gbps, e.g. 1mbit, 500kbit"


def cli_nemesis():
    """The nemesis of the lab on this host, for a `distlab chaos` verb."""
    from distlab.testbed import Testbed  # the CLI's; kinds are declared before any Testbed

    return Testbed().nemesis


def report_fault(record: FaultRecord) -> None:
    out.print(f"fault {record.id}: {record.kind} on {', '.join(record.machines)} "
              f"{record.params or ''}".rstrip())


def _targeted(parse_rest: Callable[[ScenarioParser, Fault, Entries, Node, str], Fault]
              | None = None):
    """A parse for kinds aimed at one machine: `target`, then the kind's own fields."""
    def parse(parser: ScenarioParser, fault: Fault, entries: Entries, node: Node,
              path: str) -> Fault:
        fault = replace(fault, target=parser.required(entries, node, path, "target",
                                                      parser.single_ref))
        return parse_rest(parser, fault, entries, node, path) if parse_rest else fault
    return parse


# -- process faults: kill, stop, pause, restart ----------------------------------------------


def _process_kind(name: str, help_text: str, *, instant: bool = False) -> FaultKind:
    @click.command(name=name, help=help_text)
    @click.argument("machine")
    def command(machine: str) -> None:
        report_fault(getattr(cli_nemesis(), name)(machine))

    return FaultKind(name, ("target",), _targeted(),
                     lambda i: getattr(i.nemesis, name)(i.target), command,
                     instant=instant, drawn=lambda nemesis: {})


# -- partition --------------------------------------------------------------------------------


def _parse_partition(parser: ScenarioParser, fault: Fault, entries: Entries, node: Node,
                     path: str) -> Fault:
    shape = parser.required(entries, node, path, "shape",
                            lambda n, p: parser.choice(n, p, SHAPES))
    if shape is None:
        return fault
    # network.partition takes a target only for isolate and groups only for groups.
    for name, wanted in (("target", "isolate"), ("groups", "groups")):
        if name in entries and shape != wanted:
            parser.problem(entries[name][0], path,
                           f"field '{name}' is not used by a partition of shape '{shape}'")
    fault = replace(fault, shape=shape)
    if shape == "isolate":
        fault = replace(fault, target=parser.required(entries, node, path, "target",
                                                      parser.single_ref))
    if shape == "groups":
        fault = replace(fault, groups=parser.required(
            entries, node, path, "groups", lambda n, p: _groups(parser, n, p)) or ())
    if "machines" in entries:
        fault = replace(fault, machines=parser.refs(entries["machines"][1],
                                                    join(path, "machines")) or ())
    return fault


def _groups(parser: ScenarioParser, node: Node, path: str):
    nodes = parser.sequence(node, path, minimum=1)
    if nodes is None:
        return None
    groups = tuple(parser.refs(group, join(path, index)) for index, group in enumerate(nodes))
    seen: dict[str, int] = {}
    for index, group in enumerate(groups):
        for ref in group or ():
            if ref.kind == "name" and seen.setdefault(ref.value, index) != index:
                parser.problem(nodes[index], join(path, index), f"machine '{ref}' is also "
                               f"in group {seen[ref.value]}; groups must be disjoint")
    if any(group is None for group in groups):
        return None
    return groups


def _inject_partition(injection: Injection) -> FaultRecord:
    fault = injection.fault
    return injection.nemesis.partition(
        fault.shape, injection.names(fault.machines), target=injection.target,
        groups=[injection.names(group) for group in fault.groups] or None, seed=injection.seed)


@click.command(name="partition")
@click.argument("shape", type=click.Choice(SHAPES))
@click.option("--machines", default="", help="comma-separated machines (default: every lab "
              "machine)")
@click.option("--target", default=None, help="the machine to isolate (isolate)")
@click.option("--group", "groups", multiple=True, help="a,b  one group (groups; repeatable)")
@click.option("--seed", type=int, default=None, help="shuffle machines with this seed")
def partition_command(shape: str, machines: str, target: str | None, groups: tuple[str, ...],
                      seed: int | None) -> None:
    """Cut the network into SHAPE: isolate, halves, majorities-ring, bridge, groups."""
    names = [n for n in machines.split(",") if n]
    parsed = [[n for n in g.split(",") if n] for g in groups] or None
    report_fault(cli_nemesis().partition(shape, names, target=target, groups=parsed, seed=seed))


# -- loss, bandwidth, delay -----------------------------------------------------------------


def _parse_loss(parser, fault, entries, node, path) -> Fault:
    return replace(fault, probability=parser.required(entries, node, path, "probability",
                                                      parser.probability))


@click.command(name="loss")
@click.argument("machine")
@click.argument("probability", type=float)
def loss_command(machine: str, probability: float) -> None:
    """Drop each packet MACHINE receives with PROBABILITY (0 < p <= 1)."""
    report_fault(cli_nemesis().loss(machine, probability))


def _parse_bandwidth(parser, fault, entries, node, path) -> Fault:
    return replace(fault, rate=parser.required(entries, node, path, "rate",
                                               lambda n, p: parse_rate(parser, n, p)))


def parse_rate(parser: ScenarioParser, node: Node, path: str) -> str | None:
    rate = parser.string(node, path)
    if rate is not None and not RATE.fullmatch(rate):
        parser.problem(node, path, f"'{rate}' is not a rate: {RATE_FORM}")
        return None
    return rate


@click.command(name="bandwidth")
@click.argument("machine")
@click.argument("rate")
def bandwidth_command(machine: str, rate: str) -> None:
    """Cap what MACHINE sends to RATE (tc tbf), e.g. 1mbit."""
    report_fault(cli_nemesis().bandwidth(machine, rate))


def _parse_delay(parser, fault, entries, node, path) -> Fault:
    get = parser.getter(entries, path)
    return replace(fault, delay=parser.required(entries, node, path, "delay",
                                                parser.positive_duration),
                   jitter=get("jitter", 0.0, parser.duration_value))


@click.command(name="delay")
@click.argument("machine")
@click.argument("milliseconds", type=float)
@click.option("--jitter", type=float, default=0.0, help="milliseconds of uniform jitter")
def delay_command(machine: str, milliseconds: float, jitter: float) -> None:
    """Delay what MACHINE sends (tc netem; needs a kernel with sch_netem)."""
    report_fault(cli_nemesis().delay(machine, milliseconds, jitter))


# -- RPC-level faults -------------------------------------------------------------------------


def _parse_rpc(parser: ScenarioParser, fault: Fault, entries: Entries, node: Node,
               path: str) -> Fault:
    get = parser.getter(entries, path)
    action = parser.required(entries, node, path, "action",
                             lambda n, p: parser.choice(n, p, RPC_ACTIONS))
    # Defaults for every action, so the runner can pass them all to Nemesis.rpc.
    fault = replace(fault, action=action, method=get("method", "*",
                                                     lambda n, p: _method(parser, n, p)),
                    probability=get("probability", 1.0, parser.probability),
                    outbound=get("outbound", False, parser.boolean), code="UNAVAILABLE")
    unused = {"delay": ("code",), "error": ("delay", "jitter"),
              "drop": ("delay", "jitter", "code")}.get(action or "", ())
    for name in unused:
        if name in entries:
            parser.problem(entries[name][0], path,
                           f"field '{name}' is not used by an rpc fault with action '{action}'")
    if action == "delay":
        delay = parser.required(entries, node, path, "delay", parser.positive_duration)
        jitter = get("jitter", 0.0, parser.duration_value)
        if delay is not None and jitter is not None and delay + jitter > MAX_DELAY_SECONDS:
            parser.problem(entries["delay"][1], join(path, "delay"),
                           f"delay + jitter must be at most {MAX_DELAY_SECONDS:g}s")
        return replace(fault, delay=delay, jitter=jitter)
    if action == "error":
        return replace(fault, code=get("code", "UNAVAILABLE",
                                       lambda n, p: parser.choice(n, p, STATUS_CODES)))
    return fault


def _method(parser: ScenarioParser, node: Node, path: str) -> str | None:
    method = parser.string(node, path)
    if method is None or method == "*":
        return method
    if not (method.startswith("/") and method.count("/") == 2 and len(method) > 3):
        parser.problem(node, path, f"'{method}' is not a method: write '*', "
                                   "'/pkg.Service/*' or '/pkg.Service/Method'")
        return None
    if method.startswith(EXEMPT_PREFIX):
        parser.problem(node, path, "the Control service is exempt from RPC faults")
        return None
    return method


def _inject_rpc(injection: Injection) -> FaultRecord:
    fault = injection.fault
    return injection.nemesis.rpc(
        injection.target, fault.action, method=fault.method or "*",
        seconds=fault.delay or 0.0, jitter=fault.jitter,
        code=grpc.StatusCode[fault.code or "UNAVAILABLE"].value[0],
        probability=fault.probability or 1.0, outbound=fault.outbound)


@click.command(name="rpc")
@click.argument("machine")
@click.argument("action", type=click.Choice(RPC_ACTIONS))
@click.option("--method", default="*", show_default=True,
              help="'*', '/pkg.Service/*' or '/pkg.Service/Method'")
@click.option("--peer", default="", help="only calls from (or, with --outbound, to) this machine")
@click.option("--seconds", type=float, default=0.0, help="delay")
@click.option("--jitter", type=float, default=0.0, help="extra uniform delay, seconds")
@click.option("--code", type=int, default=14, show_default=True,
              help="gRPC status code for error (14 = UNAVAILABLE)")
@click.option("--probability", type=float, default=1.0, show_default=True)
@click.option("--duration", type=float, default=0.0, help="seconds until it expires (0: never)")
@click.option("--outbound", is_flag=True, help="act on calls MACHINE makes, not serves")
def rpc_command(machine: str, action: str, method: str, peer: str, seconds: float,
                jitter: float, code: int, probability: float, duration: float,
                outbound: bool) -> None:
    """RPC-level fault on MACHINE through its Control service (works on every kernel)."""
    report_fault(cli_nemesis().rpc(machine, action, method=method, peer=peer, seconds=seconds,
                         jitter=jitter, code=code, probability=probability,
                         duration=duration, outbound=outbound))


# -- the table ------------------------------------------------------------------------------

FAULT_KINDS = (
    _process_kind("kill", "kill -9 MACHINE (heal starts it again)"),
    _process_kind("stop", "stop MACHINE gracefully (SIGTERM, then SIGKILL after 10 s)"),
    _process_kind("pause", "freeze MACHINE (callers see timeouts, not resets)"),
    _process_kind("restart", "restart MACHINE", instant=True),
    FaultKind("partition", ("shape", "target", "groups", "machines"), _parse_partition,
              _inject_partition, partition_command, drawn=lambda nemesis: {"shape": "isolate"}),
    FaultKind("loss", ("target", "probability"), _targeted(_parse_loss),
              lambda i: i.nemesis.loss(i.target, i.fault.probability), loss_command,
              drawn=lambda nemesis: {"probability": nemesis.probability}),
    FaultKind("bandwidth", ("target", "rate"), _targeted(_parse_bandwidth),
              lambda i: i.nemesis.bandwidth(i.target, i.fault.rate), bandwidth_command),
    FaultKind("delay", ("target", "delay", "jitter"), _targeted(_parse_delay),
              lambda i: i.nemesis.delay(i.target, i.fault.delay * 1000,
                                        i.fault.jitter * 1000), delay_command),
    FaultKind("rpc", ("target", "action", "probability", "delay", "jitter", "method", "code",
                      "outbound"), _targeted(_parse_rpc), _inject_rpc, rpc_command),
)

