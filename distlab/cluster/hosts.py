"""What a user types to name a host: `user@address[:port]` (user and port optional)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from distlab.errors import UsageError

SSH_PORT = 22
_SPEC = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<address>[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])"
                   r"(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class HostSpec:
    user: str
    address: str  # a name or an IP address, as the user gave it
    port: int = SSH_PORT

    def __str__(self) -> str:
        port = "" if self.port == SSH_PORT else f":{self.port}"
        return f"{self.user}@{self.address}{port}"


def parse_host(text: str, *, default_user: str = "root") -> HostSpec:
    match = _SPEC.match(text.strip())
    if not match:
        raise UsageError(f"{text!r} is not a host", hint="write it as user@address[:port], "
                         "e.g. root@192.168.1.20 or root@pc2.lab:2222")
    port = int(match["port"] or SSH_PORT)
    if not 0 < port < 65536:
        raise UsageError(f"{text!r}: port {port} is out of range", hint="an SSH port is 1-65535")
    return HostSpec(match["user"] or default_user, match["address"].strip("[]"), port)


def parse_hosts(texts: list[str] | tuple[str, ...]) -> list[HostSpec]:
    hosts = [parse_host(text) for text in texts]
    seen: set[tuple[str, int]] = set()
    for host in hosts:
        if (host.address, host.port) in seen:
            raise UsageError(f"{host.address}:{host.port} is named twice",
                             hint="give each host once")
        seen.add((host.address, host.port))
    return hosts
