"""The lab credential: who may call a node's administrative and internal RPCs.

The host makes one random token per lab (64 hex characters) and mounts it into
every machine as a file; a node reads it once at start (CREDENTIAL_FILE).
Callers present it as the gRPC metadata `x-distlab-credential`. The node's
server checks it, in constant time, on every *protected* method (Control, and
what a role declares in `RoleSpec.protected`) and answers UNAUTHENTICATED
without running the handler; the rest (health, reflection, data-plane
services) stays open. A node without a usable file still starts, and refuses
every protected call (fail closed).

Server side: `CredentialInterceptor` / `AioCredentialInterceptor`, sharing one
`CredentialCheck`. Caller side: `Credential.metadata()` for one call's
`metadata=`, `with_credential(channel, credential)` for every call of a
channel; nodes get it through `nodes.common.channel.dial`. Touches only the
credential file; the token never appears in a repr, a log line, an error or
Status.
"""

from __future__ import annotations

import hmac
import inspect
import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import Counter

METADATA_KEY = "x-distlab-credential"
DEFAULT_FILE = "/run/secrets/distlab_credential"
REFUSED_MESSAGE = "this call needs the lab credential"
TOKEN_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class CredentialError(ValueError):
    """The credential file is missing, unreadable or not a token; the message says which
    (and never quotes the file's contents)."""


class Credential:
    """The lab's token. Compared in constant time; hidden from repr, str and logs."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not TOKEN_PATTERN.match(token):
            raise CredentialError("a credential is 64 lowercase hex characters")
        self._token = token

    @classmethod
    def generate(cls) -> Credential:
        return cls(secrets.token_hex(32))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Credential:
        """Read the token from `path` (surrounding whitespace stripped)."""
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise CredentialError(f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialError(f"{path} is not readable ({type(exc).__name__})") from None
        try:
            return cls(text)
        except CredentialError:
            raise CredentialError(f"{path} does not hold 64 lowercase hex characters") from None

    def write(self, path: str | os.PathLike) -> None:
        """Write the token to a new file only its owner may read (for tests and the host)."""
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(self._token + "\n")

    def matches(self, presented: str | bytes | None) -> bool:
        if presented is None:
            return False
        if isinstance(presented, str):
            presented = presented.encode("utf-8", "replace")
        return hmac.compare_digest(presented, self._token.encode("ascii"))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that presents this credential, for a stub call's `metadata=`."""
        return ((METADATA_KEY, self._token),)

    def __repr__(self) -> str:
        return "Credential(<hidden>)"

    __str__ = __repr__


def service_methods(service: ServiceDescriptor, *names: str) -> frozenset[str]:
    """Full method names ("/pkg.Service/Method") of `service`: the named ones, or all."""
    known = {method.name for method in service.methods}
    unknown = set(names) - known
    if unknown:
        raise ValueError(f"{service.full_name} has no method {', '.join(sorted(unknown))}")
    return frozenset(f"/{service.full_name}/{name}" for name in (names or known))


def _presented(metadata: Iterable[tuple[str, Any]] | None) -> str | bytes | None:
    for key, value in metadata or ():
        if key == METADATA_KEY:
            return value
    return None


class CredentialCheck:
    """Decides whether a call to a protected method presented the lab credential, and
    counts refusals by method (labels: only the protected methods, a bounded set)."""

    def __init__(self, credential: Credential | None, protected: Iterable[str],
                 refused: Counter) -> None:
        self._credential = credential
        self.protected = frozenset(protected)
        self._refused = refused
        for method in self.protected:
            refused.labels(method=method)  # every series exists from the start, at 0

    def allows(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        if method not in self.protected:
            return True
        if self._credential is not None and self._credential.matches(_presented(metadata)):
            return True
        self._refused.labels(method=method).inc()
        return False


def _refusing(behavior: Callable) -> Callable:
    """A handler behavior of the same kind as `behavior` that only refuses the call."""
    if inspect.isasyncgenfunction(behavior):
        async def refuse_stream(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED_MESSAGE)
            yield  # pragma: no cover - abort raises

        return refuse_stream
    if inspect.iscoroutinefunction(behavior):
        async def refuse_async(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED_MESSAGE)

        return refuse_async

    def refuse(request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED_MESSAGE)

    return refuse


def _refused_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` with its behavior replaced by a refusal; the request is not even parsed."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return handler._replace(request_deserializer=None,
                                    **{kind: _refusing(behavior)})
    return handler


class CredentialInterceptor(grpc.ServerInterceptor):
    """The check on a blocking gRPC server."""

    def __init__(self, check: CredentialCheck) -> None:
        self._check = check

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or self._check.allows(handler_call_details.method,
                                                 handler_call_details.invocation_metadata):
            return handler
        return _refused_handler(handler)


class AioCredentialInterceptor(grpc.aio.ServerInterceptor):
    """The check on a grpc.aio server (coroutine and plain-function handlers alike)."""

    def __init__(self, check: CredentialCheck) -> None:
        self._check = check

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or self._check.allows(handler_call_details.method,
                                                 handler_call_details.invocation_metadata):
            return handler
        return _refused_handler(handler)


class _AttachCredential(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, credential: Credential) -> None:
        self._metadata = credential.metadata()

    def _with_metadata(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return CallDetails(details.method, details.timeout,
                            [*(details.metadata or ()), *self._metadata], details.credentials,
                            getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_metadata(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_metadata(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_metadata(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_metadata(client_call_details), request_iterator)


class CallDetails(NamedTuple):
    """A client call's details, as a client interceptor hands them on (changed)."""

    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


def with_credential(channel: grpc.Channel, credential: Credential | None) -> grpc.Channel:
    """`channel` with every call presenting `credential` (unchanged when it is None).

    Only for channels to this lab's own machines: a call that leaves the lab must
    never carry the lab's credential.
    """
    if credential is None:
        return channel
    return grpc.intercept_channel(channel, _AttachCredential(credential))
