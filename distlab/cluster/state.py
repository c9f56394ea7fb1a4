"""What `distlab cluster create` made, kept in `.distlab/cluster.json` so `status`,
`destroy` and the swarm runtime find the hosts again (and `destroy` undoes only that)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_PATH = Path(".distlab") / "cluster.json"
REGISTRY_PORT = 5000
STACK_DIR = "/etc/distlab/stack"  # on hosts: the stack file, its secrets, files it mounts


@dataclass
class Host:
    spec: str  # user@address[:port], as given to `create`
    name: str  # host-1, host-2 ...: the node label placement and `distlab status` use
    address: str  # the address the host answered SSH on: what the swarm advertises
    node: str = ""  # its swarm node ID
    manager: bool = False  # a swarm manager (the first host is the one the registry is on)
    loaded_images: list[str] = field(default_factory=list)  # what destroy removes again
    # The host's own clock when create began there (RFC 3339, UTC): volumes Docker made
    # after it and left dangling (a task's anonymous /data) are the cluster's.
    since: str = ""


@dataclass
class ClusterState:
    hosts: list[Host]
    identity: str | None  # the SSH key file, when one was named
    registry: str = ""  # manager-address:5000

    @property
    def manager(self) -> Host:
        """The first manager: where the registry runs and distlab deploys from."""
        return next(h for h in self.hosts if h.manager)

    def save(self, root: Path) -> None:
        path = root / STATE_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(temporary, path)


def load(root: Path) -> ClusterState | None:
    path = root / STATE_PATH
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return ClusterState([Host(**h) for h in raw["hosts"]], raw.get("identity"),
                        raw.get("registry", ""))


def forget(root: Path) -> None:
    (root / STATE_PATH).unlink(missing_ok=True)
