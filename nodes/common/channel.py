"""Outgoing channels: the one way a node (or a test) dials another machine.

`dial` returns a channel whose calls carry a deadline, the caller's name,
client-side metrics and outbound fault rules, and the lab credential when one
is given: only this lab's machines get dialled with it. Retries are declared
here, in the gRPC service config, and only for the methods a caller names as
idempotent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import grpc

from nodes.common.auth import Credential
from nodes.common.faults import FaultRules
from nodes.common.interceptors import ClientInterceptor
from nodes.common.metrics import NodeMetrics

RETRYABLE_CODES = ("UNAVAILABLE",)


def retry_service_config(idempotent_methods: Sequence[tuple[str, str]], *,
                         max_attempts: int = 3) -> str:
    """Service config JSON retrying UNAVAILABLE for the named (service, method) pairs only."""
    if not idempotent_methods:
        return json.dumps({"methodConfig": []})
    return json.dumps({"methodConfig": [{
        "name": [{"service": service, "method": method} for service, method in idempotent_methods],
        "retryPolicy": {
            "maxAttempts": max_attempts,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": list(RETRYABLE_CODES),
        },
    }]})


def channel_options(max_message_bytes: int,
                    idempotent_methods: Sequence[tuple[str, str]] = ()) -> list[tuple[str, object]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry_service_config(idempotent_methods)),
        # Reconnect quickly after a partition heals instead of backing off for minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def dial(target: str, *, peer: str, node: str, metrics: NodeMetrics, rules: FaultRules,
         default_timeout: float, max_message_bytes: int = 4 * 1024 * 1024,
         idempotent_methods: Sequence[tuple[str, str]] = (),
         credential: Credential | None = None) -> grpc.Channel:
    raw = grpc.insecure_channel(target, options=channel_options(max_message_bytes,
                                                                idempotent_methods))
    interceptor = ClientInterceptor(node=node, peer=peer, metrics=metrics, rules=rules,
                                    default_timeout=default_timeout, credential=credential)
    return grpc.intercept_channel(raw, interceptor)


class Channels:
    """One channel per peer, opened on first use and closed together.

    Every channel presents `credential` (when given): a node's Channels reach only
    its own lab's machines (peers, the data-master, chain members, ring peers).
    """

    def __init__(self, *, node: str, metrics: NodeMetrics, rules: FaultRules,
                 default_timeout: float, max_message_bytes: int,
                 idempotent_methods: Sequence[tuple[str, str]] = (),
                 credential: Credential | None = None) -> None:
        self._settings = dict(node=node, metrics=metrics, rules=rules,
                              default_timeout=default_timeout,
                              max_message_bytes=max_message_bytes,
                              idempotent_methods=idempotent_methods, credential=credential)
        self._open: dict[tuple[str, str], grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, target: str, peer: str) -> grpc.Channel:
        with self._lock:
            channel = self._open.get((target, peer))
            if channel is None:
                channel = dial(target, peer=peer, **self._settings)
                self._open[(target, peer)] = channel
            return channel

    def forget(self, target: str, peer: str) -> None:
        with self._lock:
            channel = self._open.pop((target, peer), None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        with self._lock:
            channels, self._open = list(self._open.values()), {}
        for channel in channels:
            channel.close()
