"""The switch's settings (environment variables) and the parsers Reconfigure shares with them.

Read once by the node bootstrap (nodes/common/server.py) through `SETTINGS`;
`parse_backends` and `POLICIES` also validate Control.Reconfigure's
{"backends", "policy"}. Touches nothing.
"""

from __future__ import annotations

import re

from nodes.common.config import (
    Setting,
    comma_list,
    non_negative,
    one_of,
    positive,
)
from nodes.switch.policies import POLICIES

# Backends serve on the node contract's gRPC port unless an entry names another.
BACKEND_PORT = 50051
REFLECTION_METHODS = ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
BANK_IDEMPOTENT_METHODS = ("/distlab.bank.Bank/Balance", "/distlab.bank.Bank/Audit",
                           "/distlab.bank.Bank/Work")
_HOST = re.compile(r"^[A-Za-z0-9_.\-]+$")
_METHOD = re.compile(r"^/[A-Za-z0-9_.]+/[A-Za-z0-9_]+$")
_METADATA_KEY = re.compile(r"^[a-z0-9_.\-]+$")


def parse_backends(raw: str) -> tuple[str, ...]:
    """`app,10.0.0.7:6000` -> ("app", "10.0.0.7:6000"); ValueError says which entry is wrong."""
    entries = comma_list(raw)
    if not entries:
        raise ValueError("name at least one backend as host[:port]")
    for entry in entries:
        host, colon, port = entry.partition(":")
        if not _HOST.match(host) or (colon and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"backend {entry!r} is not host[:port] with a port in 1-65535")
    return entries


def parse_methods(raw: str) -> tuple[str, ...]:
    methods = comma_list(raw)
    for method in methods:
        if not _METHOD.match(method):
            raise ValueError(f"method {method!r} is not /package.Service/Method")
    return methods


def parse_metadata_key(raw: str) -> str:
    key = raw.strip().lower()
    if not _METADATA_KEY.match(key) or key.startswith("grpc-") or key.endswith("-bin"):
        raise ValueError("a text metadata key: lowercase letters, digits, '-', '_', '.', "
                         "not grpc-* and not *-bin")
    return key


def percent(value: int) -> str | None:
    return None if 0 <= value <= 100 else "must be a percentage (0-100)"


SETTINGS: tuple[Setting, ...] = (
    Setting("SWITCH_BACKENDS", parse_backends, ("app",),
            "comma list of backends, DNS names (every replica) or host:port; port default "
            f"{BACKEND_PORT}; re-resolved every SWITCH_DISCOVERY_INTERVAL_SECONDS"),
    Setting("SWITCH_POLICY", str, "round_robin",
            "round_robin, least_outstanding (power of two choices) or consistent_hash "
            "(on SWITCH_AFFINITY_KEY)", one_of(*POLICIES)),
    Setting("SWITCH_AFFINITY_KEY", parse_metadata_key, "x-session-id",
            "metadata key consistent_hash keeps on one backend (calls without it go round robin)"),
    Setting("SWITCH_STREAMING_METHODS", parse_methods, REFLECTION_METHODS,
            "methods forwarded as streams (any cardinality); every other method is forwarded "
            "as unary"),
    Setting("SWITCH_IDEMPOTENT_METHODS", parse_methods, BANK_IDEMPOTENT_METHODS,
            "the only methods retried (on UNAVAILABLE or a per-try timeout, on another backend)"),
    Setting("SWITCH_MAX_ATTEMPTS", int, 3, "attempts per idempotent call, the first included",
            positive),
    Setting("SWITCH_PER_TRY_TIMEOUT_SECONDS", float, 10.0,
            "longest one attempt may take (the caller's deadline bounds it too)", positive),
    Setting("SWITCH_STREAM_TIMEOUT_SECONDS", float, 300.0,
            "deadline of a forwarded stream whose caller set none", positive),
    Setting("SWITCH_RETRY_BUDGET_PERCENT", float, 20.0,
            "retries may add at most this % on top of requests (over 10 s)", non_negative),
    Setting("SWITCH_RETRY_BUDGET_MIN_PER_SECOND", float, 10.0,
            "retries per second allowed whatever the request rate", non_negative),
    Setting("SWITCH_DISCOVERY_INTERVAL_SECONDS", float, 1.0,
            "how often SWITCH_BACKENDS is resolved again (scale-ups, restarts)", positive),
    Setting("SWITCH_HEALTH_INTERVAL_SECONDS", float, 1.0,
            "how often each backend gets a grpc.health.v1 Check", positive),
    Setting("SWITCH_HEALTH_TIMEOUT_SECONDS", float, 0.5, "deadline of one health check",
            positive),
    Setting("SWITCH_HEALTH_RISE", int, 2, "good checks in a row before a backend is healthy",
            positive),
    Setting("SWITCH_HEALTH_FALL", int, 3, "failed checks in a row before it is unhealthy",
            positive),
    Setting("SWITCH_EJECT_CONSECUTIVE_FAILURES", int, 3,
            "UNAVAILABLE/DEADLINE_EXCEEDED/INTERNAL answers in a row that eject a backend",
            positive),
    Setting("SWITCH_EJECT_SECONDS", float, 5.0,
            "first ejection's length; each repeated ejection lasts one more of these",
            positive),
    Setting("SWITCH_MAX_EJECTED_PERCENT", int, 50,
            "most backends ejected at once, in % of the set (rounded down)", percent),
)
