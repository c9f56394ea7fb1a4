"""Will a lab at this scale fit this engine? The estimate `distlab up` shows before starting.

`estimate(counts, roles, resources, engine)` is pure: it adds up what each machine needs
at idle (the `IDLE` table below: the one place those figures live) and what compose.yaml
allows it (`deploy.resources` limits and reservations, read by `service_resources`),
and weighs that against the engine's `docker info` (NCPU, MemTotal). The CLI
(`distlab up`, through `Testbed.capacity`) prints its figures and refuses the `refuse`
verdict unless `--force`. Nothing here talks to Docker; `load_resources` reads compose.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import yaml

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Idle:
    """What one machine of a role costs when the lab is idle."""

    cpu: float  # cores, busy on its own periodic work and its Docker health check
    memory_mib: float  # resident set, plus what the engine spends per container
    # CPU seconds one health check of a peer costs, client and server side together. A
    # role whose replicas watch each other (compose `PEERS` = its own service) makes N-1
    # of them every PEER_INTERVAL_SECONDS: at 64 chord peers that outgrows `cpu`.
    cpu_seconds_per_peer_check: float = 0.0


# chord is MEASURED (bench/idle_cost.py, docs/chord.md "What a peer costs"; 2-core
# machine): the whole host's busy cores over 64 idle peers, 1.15 with the probe every
# 10 s (2026-12-07), so 0.018 per peer: 0.013 in the peer's own cgroup, the rest the
# engine and the kernel's share of the probe's exec. 30-37 MiB RSS per peer at 16, 32 and
# 64 peers, plus ~15 MiB of shim and docker-proxy. The other lines are estimates of the
# same shape: a Python gRPC node with a health probe every 3 s and its periodic work.
#  - cpu_seconds_per_peer_check: a health-check RPC costs ~1 ms of CPU on each side
#    (Python gRPC), made every PEER_INTERVAL_SECONDS (1 s for kv and data, which watch
#    each other); chord peers no longer do (they learn liveness from their own calls).
#  - memory_mib: resident set plus the engine's share per container.
IDLE: dict[str, Idle] = {
    "chord": Idle(cpu=0.018, memory_mib=55),
    "kv": Idle(cpu=0.02, memory_mib=80, cpu_seconds_per_peer_check=0.002),
    "data": Idle(cpu=0.02, memory_mib=85, cpu_seconds_per_peer_check=0.002),
    "data-master": Idle(cpu=0.02, memory_mib=80),
    "app": Idle(cpu=0.02, memory_mib=80),
    "switch": Idle(cpu=0.03, memory_mib=85),
    "tracker": Idle(cpu=0.02, memory_mib=80),
    "haproxy": Idle(cpu=0.01, memory_mib=30),
    "prometheus": Idle(cpu=0.05, memory_mib=200),  # grows with the targets it scrapes
    "grafana": Idle(cpu=0.02, memory_mib=120),
}
DEFAULT_IDLE = Idle(cpu=0.02, memory_mib=80)  # a role without its own line

# Where "comfortable" ends and "will not come up" begins, as fractions of the engine.
# CPU: idle work above half the cores leaves too little for the lab's actual traffic and
# for a scenario's clients; above all the cores, health checks queue behind each other,
# time out, and the lab never turns healthy. Memory: past half, the page cache and the host's
# own processes feel it; past 90 % the kernel's OOM killer picks machines at random.
WARN_CPU_FRACTION = 0.5
REFUSE_CPU_FRACTION = 1.0
WARN_MEMORY_FRACTION = 0.5
REFUSE_MEMORY_FRACTION = 0.9


class Verdict(Enum):
    OK = "ok"
    WARN = "warn"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Resources:
    """compose.yaml's `deploy.resources` of one service (0 where it says nothing)."""

    cpu_limit: float = 0.0
    memory_limit: int = 0  # bytes
    cpu_reservation: float = 0.0
    memory_reservation: int = 0
    watches_itself: bool = False  # `PEERS` names its own service: every replica checks all
    peer_interval: float = 1.0  # PEER_INTERVAL_SECONDS


@dataclass(frozen=True)
class Engine:
    cpus: int  # docker info NCPU
    memory: int  # docker info MemTotal, bytes
    # The kernel's ARP table limit (net.ipv4.neigh.default.gc_thresh3), one table for
    # every network namespace on the host; 0 when unknown (a remote engine).
    neighbours: int = 0


@dataclass
class Estimate:
    verdict: Verdict
    machines: int
    cpu: float  # cores the lab needs at idle
    memory: int  # bytes the lab needs at idle
    memory_limits: int  # bytes if every machine used its compose limit
    engine: Engine
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of figures: what the lab needs against what the engine has."""
        return (f"{self.machines} machines need ~{self.cpu:.1f} of {self.engine.cpus} CPUs and "
                f"~{_size(self.memory)} of {_size(self.engine.memory)} memory at idle "
                f"(up to {_size(self.memory_limits)} at their limits; estimates: "
                f"distlab/capacity.py)")


def estimate(counts: Mapping[str, int], roles: Mapping[str, str],
             resources: Mapping[str, Resources], engine: Engine) -> Estimate:
    """What `counts` machines per service need against `engine`. `roles` maps a service to
    its role (the IDLE line it costs); `resources` its compose limits."""
    cpu = 0.0
    memory = limits = 0
    machines = sum(max(n, 0) for n in counts.values())
    for service, count in counts.items():
        if count <= 0:
            continue
        idle = IDLE.get(roles.get(service, service), DEFAULT_IDLE)
        spec = resources.get(service, Resources())
        watched = count - 1 if spec.watches_itself else 0
        checks_per_second = watched / max(spec.peer_interval, 0.1)
        per_cpu = idle.cpu + idle.cpu_seconds_per_peer_check * checks_per_second
        cpu += count * max(per_cpu, spec.cpu_reservation)
        per_memory = max(int(idle.memory_mib * MIB), spec.memory_reservation)
        memory += count * per_memory
        limits += count * (spec.memory_limit or per_memory)
    result = Estimate(Verdict.OK, machines, cpu, memory, limits, engine)
    cpu_share, memory_share = cpu / max(engine.cpus, 1), memory / max(engine.memory, 1)
    if cpu_share > REFUSE_CPU_FRACTION:
        result.reasons.append(f"their idle work alone needs {cpu_share:.0%} of the CPUs: "
                              f"health checks would time out and the lab never turn healthy")
    if memory_share > REFUSE_MEMORY_FRACTION:
        result.reasons.append(f"they need {memory_share:.0%} of the engine's memory: the "
                              f"kernel would kill machines")
    # Every machine may talk to every other (a joining Chord peer probes them all, Prometheus
    # and the host reach each one): that many ARP entries, or new connections fail.
    entries = machines * machines
    if engine.neighbours and entries > engine.neighbours:
        result.reasons.append(
            f"{machines} machines that talk to each other need up to {entries} ARP entries "
            f"and the kernel keeps {engine.neighbours}: connections would fail (raise "
            f"net.ipv4.neigh.default.gc_thresh3; scripts/setup-host.sh does)")
    if result.reasons:
        result.verdict = Verdict.REFUSE
        return result
    if cpu_share > WARN_CPU_FRACTION:
        result.reasons.append(f"idle, they keep {cpu_share:.0%} of the CPUs busy: expect "
                              f"slow health checks and a slow start")
    if memory_share > WARN_MEMORY_FRACTION:
        result.reasons.append(f"they need {memory_share:.0%} of the engine's memory")
    if limits > engine.memory:
        result.reasons.append(f"at their compose limits they could use {_size(limits)}, more "
                              f"than the engine's {_size(engine.memory)}")
    if result.reasons:
        result.verdict = Verdict.WARN
    return result


def load_resources(compose_file: Path) -> dict[str, Resources]:
    """Every service's resources in compose.yaml (reads that file and nothing else)."""
    services = (yaml.safe_load(compose_file.read_text()) or {}).get("services") or {}
    return {name: service_resources(name, spec or {}) for name, spec in services.items()}


def service_resources(service: str, spec: Mapping) -> Resources:
    """A compose service's `deploy.resources` and whether its replicas watch each other."""
    resources = (spec.get("deploy") or {}).get("resources") or {}
    limits = resources.get("limits") or {}
    reservations = resources.get("reservations") or {}
    environment = spec.get("environment") or {}
    if isinstance(environment, list):  # Compose also takes ["KEY=value", ...]
        environment = dict(item.partition("=")[::2] for item in environment)
    peers = [p.strip() for p in str(environment.get("PEERS", "")).split(",") if p.strip()]
    return Resources(
        cpu_limit=float(limits.get("cpus", 0) or 0),
        memory_limit=parse_bytes(limits.get("memory", 0)),
        cpu_reservation=float(reservations.get("cpus", 0) or 0),
        memory_reservation=parse_bytes(reservations.get("memory", 0)),
        watches_itself=service in peers,
        peer_interval=float(environment.get("PEER_INTERVAL_SECONDS", 1.0)))


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": MIB, "mb": MIB, "g": GIB,
          "gb": GIB}


def parse_bytes(value: str | int | float) -> int:
    """Compose's byte values: 134217728, "128M", "1.5g", "512mb"."""
    if isinstance(value, (int, float)):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _size(count: int) -> str:
    return f"{count / GIB:.1f} GiB" if count >= GIB else f"{count / MIB:.0f} MiB"
