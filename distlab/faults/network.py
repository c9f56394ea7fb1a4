"""Network faults as plans: who drops whose packets, and the commands that do it.

The nemesis (and `distlab heal`) calls this module to turn a partition shape, a loss rate, a
bandwidth cap or a delay into a `Plan` per machine: argv lists to run inside that machine and
the argv lists that undo them. The module is sans-I/O: it runs nothing and touches nothing;
whoever executes a plan does it through the `Machine.exec` choke point.

Naming scheme, written once:
- a *grudge* maps every machine to the machines whose packets it drops (inbound), as in
  Jepsen's nemesis; the partition shapes below always return symmetric grudges, so dropping
  inbound only is enough to cut both directions;
- every iptables rule distlab adds lives in its own chain `DISTLAB`, jumped to from INPUT
  only (every fault here is on received packets), so healing flushes that chain and never
  touches anybody else's rules; loopback traffic is never matched;
- tc faults (tbf, netem) replace the root qdisc of one interface, `eth0` unless told.
"""

from __future__ import annotations

import ipaddress
import math
import numbers
import random
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class NetworkFaultError(ValueError):
    """A network fault was asked for with a bad shape or bad arguments."""


SHAPES = ("isolate", "halves", "majorities-ring", "bridge", "groups")

Grudge = dict[str, frozenset[str]]

CHAIN = "DISTLAB"

Argv = tuple[str, ...]


# --- partitions --------------------------------------------------------------------------------


def partition(
    shape: str,
    machines: Sequence[str],
    *,
    target: str | None = None,
    groups: Sequence[Sequence[str]] | None = None,
    rng: random.Random | None = None,
) -> Grudge:
    """Return the grudge for a partition `shape` over `machines`.

    - "isolate": `target` (or, when it is None, `rng.choice(machines)`) is cut from everyone.
    - "halves": the first floor(n/2) machines (after an `rng` shuffle, if given) against the rest.
    - "majorities-ring": every machine sees a strict majority (itself included) and no two
      machines see the same set; needs n >= 3. See `_majorities_ring_links` for the topology.
    - "bridge": two halves that cannot talk, and one machine between them that talks to both;
      needs n >= 3.
    - "groups": the explicit `groups`, plus one extra group of the machines in none of them;
      every group is cut from every other.

    Every machine is a key of the result, with an empty set when it drops nothing. `target` is
    only accepted for "isolate" and `groups` only for "groups", so a misplaced argument fails
    instead of being silently ignored.
    """
    if shape not in SHAPES:
        raise NetworkFaultError(
            f"unknown partition shape {shape!r}; allowed shapes: {', '.join(SHAPES)}"
        )
    members = _validate_machines(machines)
    if target is not None and shape != "isolate":
        raise NetworkFaultError(f"target= only applies to shape 'isolate', not {shape!r}")
    if groups is not None and shape != "groups":
        raise NetworkFaultError(f"groups= only applies to shape 'groups', not {shape!r}")

    if shape == "isolate":
        components = _isolate(members, target, rng)
        return _complete_grudge(members, components)
    if shape == "groups":
        return _complete_grudge(members, _explicit_groups(members, groups))

    order = list(members)
    if rng is not None:
        rng.shuffle(order)
    if shape == "halves":
        half = len(order) // 2
        return _complete_grudge(members, [order[:half], order[half:]])
    if shape == "bridge":
        return _bridge(members, order)
    return _majorities_ring(members, order)


def reachable(grudge: Grudge, a: str, b: str) -> bool:
    """True if `a` and `b` can exchange packets: neither drops the other."""
    for machine in (a, b):
        if machine not in grudge:
            raise NetworkFaultError(
                f"machine {machine!r} is not in the grudge; known machines: {sorted(grudge)}"
            )
    return b not in grudge[a] and a not in grudge[b]


def _validate_machines(machines: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; iterating it would partition its letters.
    if isinstance(machines, str):
        raise NetworkFaultError(f"machines must be a list of names, not the string {machines!r}")
    members = list(machines)
    for name in members:
        if not isinstance(name, str) or not name:
            raise NetworkFaultError(f"machine names must be non-empty strings, got {name!r}")
    duplicates = sorted({name for name in members if members.count(name) > 1})
    if duplicates:
        raise NetworkFaultError(f"machine names must be unique; repeated: {duplicates}")
    if len(members) < 2:
        raise NetworkFaultError(
            f"a partition needs at least 2 machines, got {len(members)}: {members}"
        )
    return members


def _complete_grudge(members: list[str], components: Sequence[Sequence[str]]) -> Grudge:
    # Jepsen's complete-grudge: each machine drops everybody outside its own component.
    everyone = frozenset(members)
    grudge: Grudge = {}
    for component in components:
        for machine in component:
            grudge[machine] = everyone - frozenset(component)
    return {machine: grudge.get(machine, frozenset()) for machine in members}


def _isolate(
    members: list[str], target: str | None, rng: random.Random | None
) -> list[list[str]]:
    if target is None:
        if rng is None:
            raise NetworkFaultError("shape 'isolate' needs target= (a machine name) or rng=")
        target = rng.choice(members)
    if target not in members:
        raise NetworkFaultError(
            f"isolate target {target!r} is not one of the machines: {members}"
        )
    return [[target], [m for m in members if m != target]]


def _explicit_groups(
    members: list[str], groups: Sequence[Sequence[str]] | None
) -> list[list[str]]:
    if groups is None:
        raise NetworkFaultError("shape 'groups' needs groups=, a list of lists of machine names")
    if isinstance(groups, str):
        raise NetworkFaultError(f"groups must be a list of lists of names, not {groups!r}")
    known = set(members)
    seen: dict[str, int] = {}
    result: list[list[str]] = []
    for index, group in enumerate(groups):
        if isinstance(group, str):
            raise NetworkFaultError(
                f"group {index} must be a list of machine names, not the string {group!r}"
            )
        group = list(group)
        if not group:
            raise NetworkFaultError(f"group {index} is empty; every group needs a machine")
        unknown = [name for name in group if name not in known]
        if unknown:
            raise NetworkFaultError(
                f"group {index} names unknown machines {unknown}; known machines: {members}"
            )
        for name in group:
            if name in seen:
                where = "twice" if seen[name] == index else f"also in group {seen[name]}"
                raise NetworkFaultError(
                    f"machine {name!r} in group {index} is {where}; groups must be disjoint"
                )
            seen[name] = index
        result.append(group)
    rest = [name for name in members if name not in seen]
    if rest:
        result.append(rest)
    if len(result) < 2:
        raise NetworkFaultError(
            f"groups must split the machines into at least 2 groups (machines left out of every "
            f"group form one more); got a single group {result[0] if result else []}"
        )
    return result


def _bridge(members: list[str], order: list[str]) -> Grudge:
    # Jepsen's bridge: bisect, then the first machine of the second half befriends everybody.
    if len(order) < 3:
        raise NetworkFaultError(
            f"shape 'bridge' needs at least 3 machines (two sides and a bridge), got {len(order)}"
        )
    half = len(order) // 2
    left, bridge, right = order[:half], order[half], order[half + 1 :]
    grudge = _complete_grudge(members, [left, [bridge], right])
    return {m: drops - {bridge} if m != bridge else frozenset() for m, drops in grudge.items()}


def _majorities_ring(members: list[str], order: list[str]) -> Grudge:
    n = len(order)
    if n < 3:
        raise NetworkFaultError(
            f"shape 'majorities-ring' needs at least 3 machines, got {n}: with 2, the only "
            f"majority is both machines"
        )
    links = _majorities_ring_links(n)
    everyone = frozenset(order)
    grudge = {
        order[i]: everyone - {order[j] for j in links[i]} - {order[i]} for i in range(n)
    }
    return {machine: grudge[machine] for machine in members}


def _majorities_ring_links(n: int) -> list[set[int]]:
    """Who sees whom in a majorities ring of n >= 3 positions (position -> other positions).

    Each position must see k = floor(n/2) others, so that with itself it sees a strict majority.
    The links are undirected, which keeps the grudge symmetric. Jepsen's "perfect" variant, a
    window of m = k+1 consecutive nodes centred on each node, is only symmetric when k is even
    (n = 4, 5, 8, 9, ...): then every node sees k/2 ring neighbours on each side, and so do we.
    When k is odd a window cannot be centred, so:
    - n even: k/2 rounded down on each side, plus the node opposite on the ring (n/2 away);
    - n odd (n = 2k+1: 3, 7, 11, ...): a k-regular graph on an odd number of nodes does not
      exist (the degree sum n*k would be odd), so one position sees one extra node. Positions
      0..k-1 are paired with k..2k-1 (ring distance k, past the (k-1)/2 ring neighbours), and
      the last position 2k is linked to k-1, which therefore sees k+1 others.
    For n = 3 that is the line order[1] - order[0] - order[2]: order[0] sees everybody, the two
    others see only order[0]; it is the only symmetric grudge on 3 machines where everyone sees
    a majority and no two see the same set (Jepsen's 3-node ring is a one-way cycle instead, in
    which no pair can exchange packets at all). Except in that odd case, every position links
    to the same ring offsets, and the visible sets differ because an arc of fewer than n
    positions, with or without its antipode, is not invariant under any rotation; the unit
    tests check distinctness and majorities for every n from 3 to 40.
    """
    k = n // 2
    links: list[set[int]] = [set() for _ in range(n)]

    def link(i: int, j: int) -> None:
        links[i].add(j)
        links[j].add(i)

    for i in range(n):
        for step in range(1, k // 2 + 1):
            link(i, (i + step) % n)
    if k % 2 == 1:
        if n % 2 == 0:
            for i in range(n // 2):
                link(i, i + n // 2)
        else:
            for i in range(k):
                link(i, i + k)
            link(2 * k, k - 1)
    return links


# --- plans -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to run in one machine to apply a fault (`apply`, in order) and what undoes it."""

    machine: str
    apply: tuple[Argv, ...]
    undo: tuple[Argv, ...]


def ensure_chain_commands() -> tuple[Argv, ...]:
    """Commands that create chain DISTLAB and jump to it first from INPUT, once.

    Run them in a machine before any iptables plan; running them again changes nothing. The
    check-then-insert needs a shell, so it is one `sh -c` argv. `set -e` makes it fail loudly
    when a jump cannot be inserted (no iptables, no NET_ADMIN) instead of pretending.
    """
    lines = ["set -e", f"iptables -w -N {CHAIN} 2>/dev/null || true"]
    # Position 1, so that no ACCEPT rule (say, for established connections) runs first; not
    # for loopback, so a machine's own health check and local calls are never cut.
    lines.append(
        f"iptables -w -C INPUT ! -i lo -j {CHAIN} 2>/dev/null"
        f" || iptables -w -I INPUT 1 ! -i lo -j {CHAIN}"
    )
    return (("sh", "-c", "\n".join(lines)),)


def partition_plans(grudge: Grudge, addresses: Mapping[str, Sequence[str]]) -> list[Plan]:
    """One Plan per machine that drops someone: a DROP rule per address of each dropped machine.

    `addresses` maps every machine of the grudge to its IPv4 addresses (all of them: a machine
    on several networks must be cut on each). Rules go to chain DISTLAB, so run
    `ensure_chain_commands()` in each machine first. Only inbound packets are matched, like
    Jepsen: the grudge being symmetric, both directions die.
    """
    for machine, drops in grudge.items():
        if machine in drops:
            raise NetworkFaultError(f"machine {machine!r} would drop its own packets")
    mentioned = set(grudge).union(*grudge.values())
    missing = sorted(mentioned - set(addresses))
    if missing:
        raise NetworkFaultError(
            f"no addresses given for machines {missing}; every machine in the grudge needs an "
            f"entry in addresses"
        )
    plans = []
    for machine, drops in grudge.items():
        rules = []
        for peer in sorted(drops):
            peer_addresses = _ipv4_list(addresses[peer], f"addresses of {peer!r}")
            if not peer_addresses:
                raise NetworkFaultError(
                    f"machine {peer!r} has no addresses, so {machine!r} cannot drop its packets"
                )
            rules.extend(("-s", address, "-j", "DROP") for address in peer_addresses)
        if rules:
            plans.append(_iptables_plan(machine, rules))
    return plans


def loss_plan(machine: str, probability: float, *, sources: Sequence[str] = ()) -> Plan:
    """Drop each inbound packet with `probability` (0 < p <= 1), from `sources` or from anyone.

    Without sources every packet received from another machine is at risk; loopback never
    is, since DISTLAB is not reached from `lo`.
    """
    _validate_machine(machine)
    if _real(probability, "loss probability") > 1:
        raise NetworkFaultError(f"loss probability must be in (0, 1], got {probability!r}")
    p = _positive_decimal(probability, "loss probability", places=6)
    statistic = ("-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP")
    source_list = _ipv4_list(sources, "loss sources")
    if source_list:
        rules = [("-s", address, *statistic) for address in source_list]
    else:
        rules = [statistic]
    return _iptables_plan(machine, rules)


_NUMBER = r"(?P<number>\d+(?:\.\d+)?)"
RATE = re.compile(_NUMBER + r"(?:bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)")
_SIZE = re.compile(_NUMBER + r"(?:b|k|kb|kbit|m|mb|mbit|g|gb|gbit)?")
_TIME = re.compile(_NUMBER + r"(?:s|ms|us)")
# Linux interface names: at most 15 bytes. We also keep them shell-safe, since heal_commands
# puts the name inside an `sh -c` script.
_INTERFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


def bandwidth_plan(
    machine: str,
    rate: str,
    *,
    interface: str = "eth0",
    burst: str = "32kbit",
    latency: str = "400ms",
) -> Plan:
    """Cap egress of `interface` to `rate` with a token bucket (tc tbf) as its root qdisc.

    It replaces whatever root qdisc the interface had, a delay_plan's netem included, and its
    undo deletes the root qdisc, which restores the kernel's default rather than a previous fault.
    """
    _validate_machine(machine)
    _validate_interface(interface)
    _check_tc_value(rate, RATE, "rate", "a number and one of bit kbit mbit gbit bps kbps mbps "
                    "gbps, e.g. 1mbit, 500kbit, 1.5mbps")
    _check_tc_value(burst, _SIZE, "burst", "a number and optionally one of b k kb kbit m mb "
                    "mbit g gb gbit, e.g. 32kbit")
    _check_tc_value(latency, _TIME, "latency", "a number and one of s ms us, e.g. 400ms")
    return Plan(
        machine=machine,
        apply=(
            ("tc", "qdisc", "replace", "dev", interface, "root", "tbf",
             "rate", rate, "burst", burst, "latency", latency),
        ),
        undo=(_tc_delete_root(interface),),
    )


def delay_plan(
    machine: str, delay_ms: float, *, jitter_ms: float = 0.0, interface: str = "eth0"
) -> Plan:
    """Delay egress of `interface` by `delay_ms` (+/- `jitter_ms`) with netem as its root qdisc.

    Needs the kernel's sch_netem, which some hosts lack (`distlab doctor` says so). Like
    bandwidth_plan it replaces the root qdisc, and its undo deletes it.
    """
    _validate_machine(machine)
    _validate_interface(interface)
    delay = _positive_decimal(delay_ms, "delay_ms", places=3)
    argv: Argv = ("tc", "qdisc", "replace", "dev", interface, "root", "netem",
                  "delay", f"{delay}ms")
    if _real(jitter_ms, "jitter_ms") < 0:
        raise NetworkFaultError(f"jitter_ms must be >= 0, got {jitter_ms!r}")
    jitter = _format_decimal(jitter_ms, 3)
    # A jitter that rounds to zero is no jitter; netem would be given a meaningless "0ms".
    if jitter != "0":
        argv += (f"{jitter}ms",)
    return Plan(machine=machine, apply=(argv,), undo=(_tc_delete_root(interface),))


def heal_commands(interface: str = "eth0") -> tuple[Argv, ...]:
    """Commands that undo every network fault distlab may have applied in a machine.

    Used by `distlab heal` and after a crash, when no record of the applied plans survives.
    Exits 0 when nothing was applied. If chain DISTLAB exists but cannot be flushed the
    machine is still partitioned, so that case exits 1 (after the qdisc is removed anyway).
    """
    _validate_interface(interface)
    lines = [
        "rc=0",
        f"if iptables -w -S {CHAIN} >/dev/null 2>&1; then iptables -w -F {CHAIN} || rc=1; fi",
        # Fails with no such qdisc, or on a default root qdisc: both mean nothing to undo.
        f"tc qdisc del dev {shlex.quote(interface)} root 2>/dev/null || true",
        "exit $rc",
    ]
    return (("sh", "-c", "\n".join(lines)),)


def _iptables_plan(machine: str, rules: Sequence[Argv]) -> Plan:
    apply = tuple(("iptables", "-w", "-A", CHAIN, *rule) for rule in rules)
    # Undo in reverse order, the usual discipline for stacked changes.
    undo = tuple(("iptables", "-w", "-D", CHAIN, *rule) for rule in reversed(rules))
    return Plan(machine=machine, apply=apply, undo=undo)


def _tc_delete_root(interface: str) -> Argv:
    return ("tc", "qdisc", "del", "dev", interface, "root")


def _validate_machine(machine: str) -> None:
    if not isinstance(machine, str) or not machine:
        raise NetworkFaultError(f"machine must be a non-empty name, got {machine!r}")


def _validate_interface(interface: str) -> None:
    if not isinstance(interface, str) or not _INTERFACE.fullmatch(interface):
        raise NetworkFaultError(
            f"interface must be 1-15 characters of letters, digits, '_', '.', '-' "
            f"(starting with a letter or digit), got {interface!r}"
        )


def _check_tc_value(value: str, pattern: re.Pattern[str], what: str, allowed: str) -> None:
    match = pattern.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise NetworkFaultError(f"{what} must be {allowed}; got {value!r}")
    if float(match["number"]) <= 0:
        raise NetworkFaultError(f"{what} must be greater than zero, got {value!r}")


def _ipv4_list(values: Sequence[str], what: str) -> list[str]:
    # A bare string would be read as a list of one-character "addresses".
    if isinstance(values, str):
        raise NetworkFaultError(f"{what} must be a list of IPv4 addresses, not {values!r}")
    result: list[str] = []
    for value in values:
        try:
            address = str(ipaddress.IPv4Address(value))
        except (ipaddress.AddressValueError, ValueError) as error:
            raise NetworkFaultError(
                f"{what}: {value!r} is not an IPv4 address like 172.18.0.2"
            ) from error
        # Two identical rules would need two deletions; one address, one rule.
        if address not in result:
            result.append(address)
    return result


def _real(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise NetworkFaultError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise NetworkFaultError(f"{what} must be finite, got {value!r}")
    return number


def _positive_decimal(value: float, what: str, *, places: int) -> str:
    """`value` formatted with at most `places` decimals; it must stay > 0 once rounded."""
    number = _real(value, what)
    text = _format_decimal(number, places)
    if number <= 0 or text == "0":
        raise NetworkFaultError(
            f"{what} must be greater than zero (at {places} decimals), got {value!r}"
        )
    return text


def _format_decimal(value: float, places: int) -> str:
    # Fixed point, never exponent notation (tc and iptables do not parse "1e-05").
    return f"{value:.{places}f}".rstrip("0").rstrip(".")
