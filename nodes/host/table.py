"""The hypervisor's table of vm processes: names, ports and what each is for. No I/O.

One entry per vm name on this host; ports come from a fixed range so a vm's
address is known before its process answers. Called by nodes.host.service
under its lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

VM_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


class TableError(Exception):
    """A refused change; `code` names the gRPC status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class VmEntry:
    name: str
    port: int
    process: Any  # subprocess.Popen, or a test's stand-in
    incoming: bool


class VmTable:
    def __init__(self, first_port: int, last_port: int) -> None:
        if not 0 < first_port <= last_port < 65536:
            raise ValueError("the vm port range must be first-last within 1-65535")
        self.first_port = first_port
        self.last_port = last_port
        self.entries: dict[str, VmEntry] = {}

    def reserve(self, name: str) -> int:
        """A port for a new vm called `name`; TableError when the name is bad or taken."""
        if not VM_NAME.match(name):
            raise TableError("INVALID_ARGUMENT", f"vm name {name!r} must be 1-40 characters: "
                             "a lowercase letter, then lowercase letters, digits or '-'")
        if name in self.entries:
            raise TableError("ALREADY_EXISTS", f"this host already holds a vm named {name!r}")
        used = {entry.port for entry in self.entries.values()}
        for port in range(self.first_port, self.last_port + 1):
            if port not in used:
                return port
        raise TableError("RESOURCE_EXHAUSTED", f"every vm port ({self.first_port}-"
                         f"{self.last_port}) is in use on this host")

    def add(self, entry: VmEntry) -> None:
        self.entries[entry.name] = entry

    def get(self, name: str) -> VmEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise TableError("NOT_FOUND", f"this host holds no vm named {name!r}")
        return entry

    def remove(self, name: str) -> VmEntry | None:
        return self.entries.pop(name, None)
