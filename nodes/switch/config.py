"""The switch's settings (environment variables) and the parsers Reconfigure shares with them.

Read once by the node bootstrap (nodes/common/server.py) through `SETTINGS`;
`parse_backends` and `POLICIES` also validate Control.Reconfigure's
{"backends", "policy"}. `forwarded_methods` turns SWITCH_SERVICES into the
exact methods the switch forwards, from the service descriptors compiled
into this image (nodes.rpc). Touches nothing.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re

from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

import nodes.rpc
from nodes.common.config import (
    Setting,
    comma_list,
    non_negative,
    one_of,
    positive,
)
from nodes.rpc import control_pb2
from nodes.switch.policies import POLICIES

# Backends serve on the node contract's gRPC port unless an entry names another.
BACKEND_PORT = 50051
# What the app tier serves to clients: the bank, and the key-value API over the same data tier.
APP_TIER_SERVICES = ("distlab.bank.Bank", "distlab.kv.KV")
# Every node answers these itself; the switch never forwards them to a backend.
CONTROL_SERVICE = control_pb2.DESCRIPTOR.services_by_name["Control"].full_name
NEVER_FORWARDED = (CONTROL_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME,
                   "grpc.reflection.v1.ServerReflection")
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


@functools.cache
def compiled_services() -> dict[str, ServiceDescriptor]:
    """Every gRPC service of distlab's protos (nodes.rpc, generated into the image), by full name.

    Importing them also puts them in the default descriptor pool, where the
    switch's own reflection and the metrics' method labels find them.
    """
    found = {}
    for module in pkgutil.iter_modules(nodes.rpc.__path__):
        if module.name.endswith("_pb2"):
            file = importlib.import_module(f"nodes.rpc.{module.name}").DESCRIPTOR
            found.update({service.full_name: service
                          for service in file.services_by_name.values()})
    return found


def parse_services(raw: str) -> tuple[str, ...]:
    """`distlab.bank.Bank, distlab.kv.KV` -> those names, each a compiled service the switch
    may forward; ValueError names the first that is not."""
    services = comma_list(raw)
    if not services:
        raise ValueError("name at least one service to forward, as package.Service")
    known = compiled_services()
    for service in services:
        if service in NEVER_FORWARDED:
            raise ValueError(f"{service} is never forwarded: the switch answers Control, "
                             f"health and reflection itself")
        if service not in known:
            raise ValueError(f"{service!r} is not a service of this image's protos "
                             f"(one of {', '.join(sorted(set(known) - set(NEVER_FORWARDED)))})")
    return services


def forwarded_methods(services: tuple[str, ...]) -> dict[str, bool]:
    """`/package.Service/Method` -> whether it streams (either way), for every method of
    `services` (names parse_services accepted)."""
    known = compiled_services()
    return {f"/{service}/{method.name}": method.client_streaming or method.server_streaming
            for service in services for method in known[service].methods}


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
    Setting("SWITCH_SERVICES", parse_services, APP_TIER_SERVICES,
            "comma list of the services whose methods the switch forwards (package.Service, "
            "from this image's protos); any other method is answered UNIMPLEMENTED by the "
            "switch itself, and Control, health and reflection never go to a backend"),
    Setting("SWITCH_IDEMPOTENT_METHODS", parse_methods, BANK_IDEMPOTENT_METHODS,
            "the only methods retried (on UNAVAILABLE or a per-try timeout, on another "
            "backend); each must be a method of SWITCH_SERVICES"),
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
            "UNAVAILABLE/DEADLINE_EXCEEDED/INTERNAL answers in a row that eject a backend "
            "(a caller's fault, such as INVALID_ARGUMENT, never counts)",
            positive),
    Setting("SWITCH_EJECT_SECONDS", float, 5.0,
            "first ejection's length; each repeated ejection lasts one more of these",
            positive),
    Setting("SWITCH_MAX_EJECTED_PERCENT", int, 50,
            "most backends ejected at once, in % of the set (rounded down)", percent),
    Setting("SWITCH_PANIC_THRESHOLD_PERCENT", int, 50,
            "when fewer than this % of the backends look healthy (passing or not yet "
            "checked, not ejected), every backend takes calls rather than the switch "
            "refusing them (Envoy's panic threshold); 0: never", percent),
    Setting("SWITCH_HOLD_SECONDS", float, 10.0,
            "longest a call waits while the service moves (Reconfigure {hold}, or a backend's "
            "'moved' refusal waiting for the switch to be re-pointed)", positive),
    Setting("SWITCH_HOLD_MAX_CALLS", int, 256,
            "most calls held at once while the service moves; one more is refused "
            "RESOURCE_EXHAUSTED", positive),
)
