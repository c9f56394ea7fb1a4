"""Node configuration from environment variables, declared once per role.

A role declares its `Setting`s; `load_settings` reads them from an environment
mapping, converts and validates each one, and raises `ConfigError` naming the
variable when one is wrong. `describe` renders the table `--help` prints.
Touches nothing but the mapping it is given.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nodes.common.auth import DEFAULT_FILE as DEFAULT_CREDENTIAL_FILE


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None when fine
    required: bool = False


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port (0-65535; 0 picks a free one)"


def one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def comma_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


_TYPE_NAMES = {int: "an integer", float: "a number", parse_bool: "true or false"}


def load_settings(settings: Iterable[Setting], environ: Mapping[str, str]) -> dict[str, Any]:
    """Read every setting from `environ`; raise ConfigError at the first bad one."""
    values: dict[str, Any] = {}
    for setting in settings:
        raw = environ.get(setting.name)
        if raw is None or raw == "":
            if setting.required:
                raise ConfigError(f"{setting.name} is required: {setting.help}")
            values[setting.name] = setting.default
            continue
        try:
            value = setting.parse(raw)
        except ValueError as exc:
            expected = _TYPE_NAMES.get(setting.parse, "a valid value")
            raise ConfigError(f"{setting.name}={raw!r} is not {expected} ({exc})") from None
        complaint = setting.check(value) if setting.check else None
        if complaint:
            raise ConfigError(f"{setting.name}={raw!r} {complaint}")
        values[setting.name] = value
    return values


def describe(settings: Iterable[Setting]) -> str:
    lines = ["Environment variables:"]
    for setting in settings:
        default = "(required)" if setting.required else f"[default: {setting.default!r}]"
        lines.append(f"  {setting.name:<24} {setting.help} {default}")
    return "\n".join(lines)


def own_ip() -> str | None:
    """This machine's address on its network (what its hostname resolves to), if any."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return None


def default_node_name() -> str:
    """This machine's name as distlab shows it ("kv-2"), found without configuration.

    Compose names containers <project>-<service>-<n> and Docker's DNS answers a
    reverse lookup of the container's address with that name, so a scaled
    replica learns its own name without a per-replica variable.
    """
    from nodes.common.peers import machine_name_of

    hostname = socket.gethostname()
    address = own_ip()
    return (machine_name_of(address) if address else None) or hostname


COMMON_SETTINGS: tuple[Setting, ...] = (
    Setting("NODE_NAME", str, "", "this machine's name (default: from Docker DNS, else hostname)"),
    Setting("GRPC_PORT", int, 50051, "port of the gRPC server", port),
    Setting("METRICS_PORT", int, 9100, "port of the Prometheus /metrics endpoint", port),
    Setting("METRICS_PEER_LABELS", int, 64, "distinct peers the RPC client metrics name; "
            "later ones count as `other` (each named peer adds a 15-bucket latency histogram "
            "per method called: a ring of N peers that all talk to each other makes N^2 "
            "series)", non_negative),
    Setting("GRACE_SECONDS", float, 5.0, "on SIGTERM, time in-flight RPCs get to finish",
            non_negative),
    Setting("MAX_MESSAGE_BYTES", int, 4 * 1024 * 1024, "largest gRPC message accepted or sent",
            positive),
    Setting("WORKERS", int, 16, "threads serving RPCs", positive),
    Setting("MAX_CONCURRENT_RPCS", int, 0,
            "calls of the role's services worked on at once; one more is refused "
            "RESOURCE_EXHAUSTED at once (health, Control and reflection are never refused "
            "and have threads of their own); 0: the role's default (one per worker thread)",
            non_negative),
    Setting("MAX_CONCURRENT_RPCS_RESERVED", int, -1,
            "places of MAX_CONCURRENT_RPCS that calls of one method alone never take, so a "
            "flood of one slow call leaves room for the others; -1: an eighth of the limit "
            "(at least 1 from a limit of 2; 0 for a limit of 1)",
            lambda value: None if value >= -1 else "must be >= -1"),
    Setting("RPC_TIMEOUT_SECONDS", float, 2.0, "default deadline of outgoing RPCs", positive),
    Setting("PEERS", comma_list, (), "DNS names whose addresses are this node's peers "
            "(a Compose service name gives every replica)"),
    Setting("PEER_INTERVAL_SECONDS", float, 1.0, "how often each peer is health-checked",
            positive),
    Setting("PEER_PHI_THRESHOLD", float, 8.0, "suspicion (phi accrual) at which a silent peer "
            "is down: phi 8 means a 1e-8 chance it was only late, by its own rhythm", positive),
    Setting("PEER_ACCEPTABLE_PAUSE_SECONDS", float, 2.0, "silence forgiven on top of a peer's "
            "usual rhythm before phi starts to grow", non_negative),
    Setting("PEER_FALL", int, 2, "checks answered no in a row (connection refused, an error "
            "status, not serving) before a peer is down; silence is judged by phi", positive),
    Setting("PEER_RISE", int, 2, "good checks in a row before a down peer is up", positive),
    Setting("DATA_DIR", str, "/data", "where state that survives a restart lives"),
    Setting("CREDENTIAL_FILE", str, DEFAULT_CREDENTIAL_FILE, "file holding the lab credential, "
            "read once at start; without it every protected call is refused"),
    Setting("LOG_LEVEL", str, "info", "least severe log level written",
            one_of("debug", "info", "warning", "error")),
)
