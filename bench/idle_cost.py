"""What an idle machine costs: CPU (cores) and memory per container of a running lab, and
the engine's own CPU, read from the kernel's accounting rather than `docker stats`.

`sample(testbed, seconds)` reads each running container's cgroup counters (v1:
cpuacct.usage and memory.stat; v2: cpu.stat and memory.stat) and the engine
processes' /proc/<pid>/stat at the start and end of a window, and returns the
mean cores used over the window per container, their sum, the engine's cores
(dockerd, containerd, the shims), the whole host's busy cores (/proc/stat), and
resident memory per container. The host's figure is the one to plan with: a Docker
health check is an exec, and most of what an exec costs (runc, namespaces, cgroups)
is kernel time that neither the container's nor the engine's accounting shows. Used by
bench.chord_lab to say what a Chord peer costs at each ring size; reads only, never
changes a container.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import docker

from distlab.testbed import Testbed

CGROUP = Path("/sys/fs/cgroup")
ENGINE_PROCESSES = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2")
TICKS = os.sysconf("SC_CLK_TCK")


def _cgroup_dirs(container_id: str) -> tuple[Path, Path] | None:
    """(cpu dir, memory dir) of a container, for cgroup v1 (cgroupfs or systemd) or v2."""
    for cpu, memory in (
            (CGROUP / "cpuacct" / "docker" / container_id,
             CGROUP / "memory" / "docker" / container_id),
            (CGROUP / "cpuacct" / "system.slice" / f"docker-{container_id}.scope",
             CGROUP / "memory" / "system.slice" / f"docker-{container_id}.scope"),
            (CGROUP / "system.slice" / f"docker-{container_id}.scope",) * 2,
            (CGROUP / "docker" / container_id,) * 2):
        if cpu.is_dir():
            return cpu, memory
    return None


def _cpu_seconds(cpu_dir: Path) -> float:
    usage = cpu_dir / "cpuacct.usage"
    if usage.exists():
        return int(usage.read_text()) / 1e9
    for line in (cpu_dir / "cpu.stat").read_text().splitlines():
        name, value = line.split()
        if name == "usage_usec":
            return int(value) / 1e6
    raise RuntimeError(f"no CPU usage in {cpu_dir}")


def _rss_bytes(memory_dir: Path) -> int:
    fields = dict(line.split() for line in (memory_dir / "memory.stat").read_text().splitlines())
    # v1 counts resident anonymous memory as total_rss, v2 as anon
    return int(fields.get("total_rss", fields.get("anon", 0)))


def _engine_cpu_seconds() -> float:
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name in ENGINE_PROCESSES or name.startswith("containerd-shim"):
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def _host_busy_seconds() -> float:
    """CPU seconds every core of the host spent on anything but idling and I/O wait."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def container_rss_bytes(container_id: str) -> int:
    """Resident memory of one running container now (anonymous memory: the page cache of
    files it reads is not counted)."""
    dirs = _cgroup_dirs(container_id)
    if dirs is None:
        raise RuntimeError(f"no cgroup found for container {container_id[:12]}")
    return _rss_bytes(dirs[1])


def sample(testbed: Testbed, seconds: float = 30.0) -> dict[str, Any]:
    """Mean cores and RSS of every running container of the lab over `seconds`."""
    machines = [m for m in testbed.machines() if m.info.state == "running"]
    engine = docker.from_env(timeout=120)
    ids = {m.name: engine.containers.get(m.container).id for m in machines}
    dirs = {name: _cgroup_dirs(cid) for name, cid in ids.items()}
    dirs = {name: d for name, d in dirs.items() if d is not None}
    started = time.monotonic()
    cpu0 = {name: _cpu_seconds(d[0]) for name, d in dirs.items()}
    engine0, host0 = _engine_cpu_seconds(), _host_busy_seconds()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    cores = {name: (_cpu_seconds(d[0]) - cpu0[name]) / elapsed for name, d in dirs.items()
             if name in cpu0}
    rss = {name: _rss_bytes(d[1]) for name, d in dirs.items()}
    return {
        "window_s": round(elapsed, 1),
        "containers": len(cores),
        "cores_total": round(sum(cores.values()), 3),
        "cores_per_container_mean": round(statistics.fmean(cores.values()), 4) if cores else 0,
        "cores_per_container_max": round(max(cores.values()), 4) if cores else 0,
        "engine_cores": round((_engine_cpu_seconds() - engine0) / elapsed, 3),
        "host_busy_cores": round((_host_busy_seconds() - host0) / elapsed, 3),
        "rss_mib_mean": round(statistics.fmean(rss.values()) / 2**20, 1) if rss else 0,
        "rss_mib_total": round(sum(rss.values()) / 2**20, 1),
        "per_container": {name: {"cores": round(cores[name], 4),
                                 "rss_mib": round(rss[name] / 2**20, 1)} for name in cores},
    }
