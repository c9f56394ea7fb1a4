"""The Chord simulator: the peers' own protocol classes on a simulated network, in one process.

`SimNetwork` answers the requests of `nodes.chord.membership.ChordNode` steps
from other ChordNode objects instead of over gRPC: a node that is down, or
in another ring, does not answer, exactly as a peer's RPC would time out.
Its clock advances by `hop_seconds` per answered request and
`timeout_seconds` per unanswered one, and by a stabilize period per
maintenance round.

Rings are built two ways: `grow_ring` runs the protocol (join one by one,
then rounds of stabilize, fix_fingers and check_predecessor until nothing
changes), and `build_ring` installs the state such a ring converges to
directly (the tests check both agree), which is what makes thousands of
nodes cheap. Three experiments reproduce the papers' figures:

- `path_lengths`: mean, 1st and 99th percentile of lookup path length for
  N = 2^3 ... (SIGCOMM 2001, Fig. 10: about ½·log2 N); routing over fingers
  only (r = 1, as in that paper) and with a successor list of 2·log2 N;
- `lookups_after_failures`: lookups right after a fraction p of the nodes
  failed, before any stabilization, r = 2·log2 N (ToN 2003, Table II);
- `keys_per_node`: keys per real node with 1 or more virtual nodes each
  (SIGCOMM 2001, Figs. 8 and 9).

`run` does all three; `write_report` writes JSON, a text table and PNG plots.
Called by `distlab sim chord` and `bench/chord.py`; writes only under the
directory it is given.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodes.chord.membership import (
    AskRoute,
    ChordNode,
    GetView,
    LookupResult,
    Request,
    SendRectify,
    Step,
    drive,
)
from nodes.chord.ring import (
    MAX_BITS,
    NodeRef,
    finger_start,
    hash_id,
    successor_index,
)

SIM_RING = "sim"
FAILURE_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
VIRTUAL_NODES = (1, 2, 5, 10, 20)
KEYS_PER_NODE = (10, 100)  # keys stored, as multiples of the node count
DEFAULT_OUT = Path("reports/sim/chord")


@dataclass
class SimNetwork:
    """Every simulated node by address, which are down, and the simulated clock."""

    hop_seconds: float = 0.01
    timeout_seconds: float = 0.5
    stabilize_seconds: float = 1.0
    nodes: dict[str, ChordNode] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    now: float = 0.0
    messages: int = 0

    def add(self, node: ChordNode) -> ChordNode:
        self.nodes[node.me.address] = node
        return node

    def fail(self, addresses: Iterable[str]) -> None:
        self.down.update(addresses)

    def live(self) -> list[ChordNode]:
        """Live nodes, in ring order."""
        return sorted((n for a, n in self.nodes.items() if a not in self.down),
                      key=lambda n: n.me.id)

    def answer(self, request: Request) -> Any:
        """What the node asked would answer; None if it is down or in another ring."""
        self.messages += 1
        node = self.nodes.get(request.node.address)
        ring = getattr(request, "ring", None)
        if node is None or request.node.address in self.down or \
                (ring is not None and node.ring != ring):
            self.now += self.timeout_seconds
            return None
        self.now += self.hop_seconds
        if isinstance(request, GetView):
            return node.view()
        if isinstance(request, AskRoute):
            return node.route(request.target)
        if isinstance(request, SendRectify):
            return self.run(node.rectify(request.candidate))
        raise TypeError(f"unknown request {request!r}")

    def run(self, step: Step):
        return drive(step, self.answer)


# -- building rings -------------------------------------------------------------------------


def random_refs(count: int, *, bits: int, rng: random.Random) -> list[NodeRef]:
    """`count` nodes with distinct random ids (as SHA-1 of distinct addresses would give)."""
    if count > 1 << bits:
        raise ValueError(f"{count} nodes do not fit a ring of 2**{bits} ids")
    ids: set[int] = set()
    while len(ids) < count:
        ids.add(rng.getrandbits(bits))
    return [NodeRef(ident, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:50051")
            for i, ident in enumerate(sorted(ids))]


def build_ring(refs: Sequence[NodeRef], *, bits: int, successors: int,
               network: SimNetwork | None = None) -> SimNetwork:
    """A ring in the state stabilization converges to: each node's r successors, its
    predecessor, and every finger the successor of its start."""
    network = network or SimNetwork()
    ordered = sorted(refs)
    ids = [ref.id for ref in ordered]
    count = len(ordered)
    for index, ref in enumerate(ordered):
        node = ChordNode(ref, bits=bits, successors=successors)
        node.install(SIM_RING,
                     [ordered[(index + step) % count] for step in range(1, successors + 1)],
                     ordered[index - 1] if count > 1 else None,
                     [ordered[successor_index(ids, finger_start(ref.id, i, bits))]
                      for i in range(bits)])
        network.add(node)
    return network


def maintenance_round(network: SimNetwork) -> bool:
    """Every live node stabilizes, sweeps its fingers once and checks its predecessor.
    True if any node's state changed."""
    changed = False
    for node in network.live():
        if not node.member:
            continue
        before = (node.successors, node.predecessor, node.fingers)
        network.run(node.stabilize())
        for _ in range(node.bits):
            network.run(node.fix_fingers())
            if node.next_finger == 0:
                break
        network.run(node.check_predecessor())
        changed |= before != (node.successors, node.predecessor, node.fingers)
    network.now += network.stabilize_seconds
    return changed


def grow_ring(refs: Sequence[NodeRef], *, bits: int, successors: int, seed: int = 0,
              max_rounds: int = 200) -> tuple[SimNetwork, int]:
    """A ring built by the protocol itself: the first node creates it, each other joins
    through a random member and one stabilize round follows; then maintenance rounds run
    until one changes nothing. Returns the network and the rounds that took."""
    rng = random.Random(seed)
    network = SimNetwork()
    first = network.add(ChordNode(refs[0], bits=bits, successors=successors))
    first.create(SIM_RING)
    members = [first]
    for ref in refs[1:]:
        node = network.add(ChordNode(ref, bits=bits, successors=successors))
        network.run(node.join(rng.choice(members).view()))
        members.append(node)
        for member in members:
            network.run(member.stabilize())
    for rounds in range(1, max_rounds + 1):
        if not maintenance_round(network):
            return network, rounds
    raise RuntimeError(f"the ring did not settle within {max_rounds} rounds")


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (the papers report whole hops: "(2, 5)")."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 3), "p1": percentile(values, 0.01),
            "p99": percentile(values, 0.99)}


def successor_list_length(count: int) -> int:
    """r = 2·log2 N, the papers' choice (at least 1)."""
    return max(1, round(2 * math.log2(count)))


def random_lookups(network: SimNetwork, count: int, *, bits: int,
                   rng: random.Random) -> list[tuple[LookupResult, NodeRef]]:
    """`count` lookups of random ids from random live nodes, each with the node that
    truly owns the id among the live ones."""
    live = network.live()
    ids = [n.me.id for n in live]
    results = []
    for _ in range(count):
        target = rng.getrandbits(bits)
        origin = rng.choice(live)
        results.append((network.run(origin.lookup(target)),
                        live[successor_index(ids, target)].me))
    return results


# -- the experiments ------------------------------------------------------------------------


def path_lengths(sizes: Sequence[int], *, lookups: int, seed: int = 0,
                 bits: int = MAX_BITS) -> list[dict[str, Any]]:
    """SIGCOMM Fig. 10: path length against ring size, fingers only (r = 1) and with a
    successor list of 2·log2 N consulted by routing too."""
    rows = []
    for count in sizes:
        rng = random.Random(f"{seed}/paths/{count}")
        refs = random_refs(count, bits=bits, rng=rng)
        row: dict[str, Any] = {"nodes": count, "lookups": lookups,
                               "half_log2_n": round(0.5 * math.log2(count), 3)}
        for label, successors in (("fingers", 1), ("with_successors",
                                                   successor_list_length(count))):
            network = build_ring(refs, bits=bits, successors=successors)
            found = random_lookups(network, lookups, bits=bits, rng=rng)
            wrong = sum(1 for result, owner in found if result.owner != owner)
            if wrong:
                raise AssertionError(f"{wrong} lookups in a stable ring of {count} found the "
                                     f"wrong owner")
            row[label] = {**summary([r.hops for r, _ in found]), "successors": successors}
        rows.append(row)
    return rows


def lookups_after_failures(count: int, fractions: Sequence[float], *, lookups: int,
                           seed: int = 0, bits: int = MAX_BITS) -> list[dict[str, Any]]:
    """ToN Table II: fail a fraction p of the nodes at once, then look up before any
    stabilization. A lookup fails if it finds no owner or not the live owner."""
    successors = successor_list_length(count)
    rows = []
    for fraction in fractions:
        rng = random.Random(f"{seed}/failures/{count}/{fraction}")
        refs = random_refs(count, bits=bits, rng=rng)
        network = build_ring(refs, bits=bits, successors=successors)
        network.fail(ref.address for ref in rng.sample(refs, round(fraction * count)))
        started = network.now
        found = random_lookups(network, lookups, bits=bits, rng=rng)
        failed = sum(1 for result, owner in found if result.owner != owner)
        rows.append({"fraction_failed": fraction, "nodes": count, "successors": successors,
                     "lookups": lookups, "failed_lookups": failed,
                     "failed_fraction": round(failed / lookups, 5),
                     "path_length": summary([r.hops for r, _ in found]),
                     "timeouts": summary([r.timeouts for r, _ in found]),
                     "simulated_seconds_per_lookup": round((network.now - started) / lookups,
                                                           4)})
    return rows


def keys_per_node(count: int, *, key_multiples: Sequence[int] = KEYS_PER_NODE,
                  virtual: Sequence[int] = VIRTUAL_NODES, seed: int = 0,
                  bits: int = MAX_BITS) -> list[dict[str, Any]]:
    """SIGCOMM Figs. 8-9: keys per real node when each runs `v` virtual nodes (ids are
    SHA-1 of "<address>#<i>", keys SHA-1 of their names)."""
    rows = []
    for multiple in key_multiples:
        key_ids = [hash_id(f"{seed}/key-{i}", bits) for i in range(multiple * count)]
        for per_node in virtual:
            owner_of: dict[int, int] = {}
            for node in range(count):
                for replica in range(per_node):
                    owner_of[hash_id(f"{seed}/10.0.{node}:50051#{replica}", bits)] = node
            ids = sorted(owner_of)
            load = [0] * count
            for ident in key_ids:
                load[owner_of[ids[successor_index(ids, ident)]]] += 1
            rows.append({"nodes": count, "keys": len(key_ids), "virtual_nodes": per_node,
                         **summary(load), "max": max(load)})
    return rows


def run(nodes: int, *, lookups: int, seed: int = 0) -> dict[str, Any]:
    """All three experiments on rings of up to `nodes` nodes, with their run times."""
    if nodes < 8:
        raise ValueError("the simulator needs at least 8 nodes")
    sizes = [1 << k for k in range(3, nodes.bit_length()) if 1 << k <= nodes]
    report: dict[str, Any] = {"nodes": nodes, "lookups": lookups, "seed": seed}
    for name, experiment in (
            ("path_lengths", lambda: path_lengths(sizes, lookups=lookups, seed=seed)),
            ("failures", lambda: lookups_after_failures(nodes, FAILURE_FRACTIONS,
                                                        lookups=lookups, seed=seed)),
            ("keys_per_node", lambda: keys_per_node(nodes, seed=seed))):
        started = time.perf_counter()
        report[name] = experiment()
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 2)
    return report


# -- reports --------------------------------------------------------------------------------


def _spread(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.2f} ({stats['p1']:g}, {stats['p99']:g})"


def format_tables(report: dict[str, Any]) -> str:
    lines = [f"Chord simulator: up to {report['nodes']} nodes, {report['lookups']} lookups per "
             f"row, seed {report['seed']}", "",
             "Path length vs ring size (SIGCOMM 2001 Fig. 10): mean (1st, 99th percentile)",
             f"{'N':>6}  {'½·log2 N':>8}  {'fingers only (r=1)':<20}  {'with r=2·log2 N':<20}"]
    for row in report["path_lengths"]:
        lines.append(f"{row['nodes']:>6}  {row['half_log2_n']:>8.2f}  "
                     f"{_spread(row['fingers']):<20}  {_spread(row['with_successors']):<20}")
    failures = report["failures"]
    lines += ["", f"Lookups right after failures, before stabilization (ToN 2003 Table II): "
              f"N={failures[0]['nodes']}, r={failures[0]['successors']}",
              f"{'p failed':>8}  {'path length':<18}  {'timeouts':<18}  failed lookups"]
    for row in failures:
        lines.append(f"{row['fraction_failed']:>8.1f}  {_spread(row['path_length']):<18}  "
                     f"{_spread(row['timeouts']):<18}  {row['failed_fraction']:.2%}")
    lines += ["", "Keys per real node (SIGCOMM 2001 Figs. 8-9): mean, 1st and 99th percentile",
              f"{'nodes':>6}  {'keys':>7}  {'virtual':>7}  {'mean':>7}  {'p1':>5}  {'p99':>5}  "
              f"{'max':>5}"]
    for row in report["keys_per_node"]:
        lines.append(f"{row['nodes']:>6}  {row['keys']:>7}  {row['virtual_nodes']:>7}  "
                     f"{row['mean']:>7.1f}  {row['p1']:>5}  {row['p99']:>5}  {row['max']:>5}")
    lines += ["", "run time: " + ", ".join(f"{k} {v:.1f} s"
                                           for k, v in report["seconds"].items())]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """chord-sim.json, chord-sim.txt and three PNG plots in `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "chord-sim.json", out / "chord-sim.txt"]
    written[0].write_text(json.dumps(report, indent=1) + "\n")
    written[1].write_text(format_tables(report))

    rows = report["path_lengths"]
    sizes = [row["nodes"] for row in rows]
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for key, label in (("fingers", "fingers only (r = 1)"),
                       ("with_successors", "with successor list (r = 2·log2 N)")):
        means = [row[key]["mean"] for row in rows]
        errors = [[m - row[key]["p1"] for m, row in zip(means, rows, strict=True)],
                  [row[key]["p99"] - m for m, row in zip(means, rows, strict=True)]]
        axes.errorbar(sizes, means, yerr=errors, marker="o", capsize=3, label=label)
    axes.plot(sizes, [row["half_log2_n"] for row in rows], "k--", label="½·log2 N")
    axes.set(xscale="log", xlabel="nodes N", ylabel="path length (hops)",
             title="Lookup path length (mean, 1st-99th percentile)")
    axes.set_xscale("log", base=2)
    axes.legend()
    written.append(_save(figure, out / "path_length.png", pyplot))

    rows = report["failures"]
    fractions = [row["fraction_failed"] for row in rows]
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for key, label in (("path_length", "path length"), ("timeouts", "timeouts")):
        axes.errorbar(fractions, [row[key]["mean"] for row in rows],
                      yerr=[[row[key]["mean"] - row[key]["p1"] for row in rows],
                            [row[key]["p99"] - row[key]["mean"] for row in rows]],
                      marker="o", capsize=3, label=label)
    axes.set(xlabel="fraction of nodes failed", ylabel="per lookup",
             title=f"Lookups after failures, before stabilization (N = {rows[0]['nodes']}, "
                   f"r = {rows[0]['successors']})")
    axes.legend()
    written.append(_save(figure, out / "failures.png", pyplot))

    rows = report["keys_per_node"]
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for shift, keys in enumerate(sorted({row["keys"] for row in rows})):
        mine = [row for row in rows if row["keys"] == keys]
        # Divided by the mean so that both key counts share one axis; nudged apart to be seen.
        virtual = [row["virtual_nodes"] * (1 + 0.04 * shift) for row in mine]
        axes.errorbar(virtual, [1.0] * len(mine),
                      yerr=[[1 - row["p1"] / row["mean"] for row in mine],
                            [row["p99"] / row["mean"] - 1 for row in mine]],
                      marker="o", capsize=3, linestyle="none", label=f"{keys} keys")
    axes.set_xscale("log")
    axes.set_xticks([row["virtual_nodes"] for row in rows],
                    [str(row["virtual_nodes"]) for row in rows])
    axes.set(xlabel="virtual nodes per real node", ylabel="keys per real node ÷ mean",
             title=f"Load balance (N = {rows[0]['nodes']}): 1st-99th percentile")
    axes.legend()
    written.append(_save(figure, out / "keys_per_node.png", pyplot))
    return written


def _save(figure, path: Path, pyplot) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
