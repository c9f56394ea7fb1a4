"""What the serverless runner may ask of the Docker engine, sans-I/O: the policy of the
proxy that stands between the runner and the engine's socket.

The runner starts, pauses and removes function instances, so it needs the engine; the
socket itself would give it (and anyone who took the runner over) root on the host. The
proxy passes a request only if `decide(policy, method, path, body)` allows it:

- `POST /containers/create`: a container of the lab's image, carrying the lab's label,
  on the functions network, as a non-root user, with a read-only root filesystem, every
  capability dropped, no-new-privileges, memory, CPU and pids limits within the policy's,
  and nothing that reaches outside: no privilege, no bind or volume mount, no device, no
  published port, no host namespace, no other runtime or cgroup parent, no sysctl;
- start, pause, unpause, kill, wait, inspect, logs and delete of one container: only
  for a container that carries the lab's label (`LABELLED`: the proxy looks its labels up
  and passes the call only if they match; a container's labels cannot change);
- listing containers, only filtered by the lab's label; `/_ping` and `/version`.

Anything else — exec, images, volumes, networks, the swarm, build, events, an unknown path
— is refused with the reason. Paths may carry the API version prefix (`/v1.41/...`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

LAB_LABEL = "distlab.lab"
_VERSION = re.compile(r"^/v\d+\.\d+(?=/)")
_CONTAINER_ACTION = re.compile(
    r"^/containers/(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"
    r"(?:/(?P<action>start|pause|unpause|kill|wait|json|logs))?$")
_READ_ONLY_ACTIONS = {"json", "logs"}
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Policy:
    lab: str  # the value of the distlab.lab label every instance carries
    image: str
    network: str
    max_memory_bytes: int
    max_nano_cpus: int
    max_pids: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    #: Allowed only if this container carries the lab's label (the proxy checks).
    container: str | None = None


ALLOW = Decision(True)


def deny(reason: str) -> Decision:
    return Decision(False, reason)


def labelled(container: str) -> Decision:
    return Decision(True, container=container)


def decide(policy: Policy, method: str, target: str, body: bytes = b"") -> Decision:
    """Whether the proxy may pass `method target` (with `body`) to the engine."""
    parts = urlsplit(target)
    path = _VERSION.sub("", parts.path)
    query = parse_qs(parts.query)
    if method == "GET" and path in ("/_ping", "/version"):
        return ALLOW
    if method == "HEAD" and path == "/_ping":
        return ALLOW
    if path == "/containers/create":
        return _create(policy, body) if method == "POST" else deny(f"{method} {path}")
    if path == "/containers/json":
        return _listing(policy, query) if method == "GET" else deny(f"{method} {path}")
    match = _CONTAINER_ACTION.match(path)
    if match:
        action = match["action"]
        wanted = "DELETE" if action is None else (
            "GET" if action in _READ_ONLY_ACTIONS else "POST")
        if method != wanted:
            return deny(f"{method} {path}: the runner may not do that")
        return labelled(match["id"])
    return deny(f"{method} {path}: not something the runner needs")


def _listing(policy: Policy, query: dict[str, list[str]]) -> Decision:
    try:
        filters = json.loads(query.get("filters", ["{}"])[0])
        labels = filters.get("label", [])
    except (ValueError, AttributeError):
        return deny("a listing's filters are not JSON")
    if f"{LAB_LABEL}={policy.lab}" not in labels:
        return deny(f"a listing must filter on the label {LAB_LABEL}={policy.lab}")
    return ALLOW


def _create(policy: Policy, body: bytes) -> Decision:
    if len(body) > MAX_BODY_BYTES:
        return deny(f"a create request of {len(body)} bytes (at most {MAX_BODY_BYTES})")
    try:
        spec = json.loads(body)
    except ValueError:
        return deny("a create request's body is not JSON")
    if not isinstance(spec, dict):
        return deny("a create request's body is not a JSON object")
    problems = _create_problems(policy, spec)
    return deny("create refused: " + "; ".join(problems)) if problems else ALLOW


def _create_problems(policy: Policy, spec: dict[str, Any]) -> list[str]:
    host = spec.get("HostConfig") or {}
    if not isinstance(host, dict):
        return ["HostConfig is not an object"]
    problems = []
    if spec.get("Image") != policy.image:
        problems.append(f"the image must be {policy.image}")
    if (spec.get("Labels") or {}).get(LAB_LABEL) != policy.lab:
        problems.append(f"the label {LAB_LABEL}={policy.lab} is missing")
    user = str(spec.get("User") or "")
    if user.split(":")[0] in ("", "root", "0"):
        problems.append("the user must not be root")
    if host.get("NetworkMode") != policy.network:
        problems.append(f"the network must be {policy.network}")
    if host.get("ReadonlyRootfs") is not True:
        problems.append("the root filesystem must be read-only")
    if "ALL" not in (host.get("CapDrop") or []) or host.get("CapAdd"):
        problems.append("every capability must be dropped and none added")
    if "no-new-privileges:true" not in (host.get("SecurityOpt") or []):
        problems.append("no-new-privileges must be set")
    for key, limit in (("Memory", policy.max_memory_bytes), ("NanoCpus", policy.max_nano_cpus),
                       ("PidsLimit", policy.max_pids)):
        value = host.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
            problems.append(f"{key} must be set, at most {limit}")
    for key in ("Privileged", "PublishAllPorts", "OomKillDisable", "Binds", "Mounts",
                "VolumesFrom", "Devices", "DeviceRequests", "PortBindings", "Sysctls",
                "Runtime", "CgroupParent", "PidMode", "UTSMode", "UsernsMode"):
        if host.get(key):
            problems.append(f"{key} is not allowed")
    for key, private in (("IpcMode", ("private", "none")), ("CgroupnsMode", ("private",))):
        if host.get(key) not in (None, "", *private):
            problems.append(f"{key} must be private")
    if spec.get("Volumes"):
        problems.append("Volumes is not allowed")
    return problems
