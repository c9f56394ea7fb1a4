"""The host's one client of a machine's `Control` service.

Every host-side caller (the CLI's status, the nemesis's RPC faults and markers,
scenario migrations, the Chord ring view, benches and tests) talks to a machine's
Control through `ControlClient`, which `Machine.control()` returns. It owns the
channel (closed when the `with` block ends), presents the lab credential, applies
one deadline policy (a look: 2 s; a change: 5 s) and turns every gRPC error into
a `ControlError`: `ControlRefused` (a UsageError) when the machine says the request
itself is wrong, which is definite; otherwise the call may or may not have
happened, except when the machine says no credential or a wrong one was presented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc

from distlab.errors import DistlabError, UsageError
from nodes.common.auth import Credential
from nodes.rpc import control_pb2, control_pb2_grpc

LOOK_SECONDS = 2.0    # Status, ListFaultRules, MarkFault: nothing waits on them
CHANGE_SECONDS = 5.0  # Reconfigure, AddFaultRule, ClearFaultRules, Snapshot, Restore
# Control is never behind the concurrency limit, so RESOURCE_EXHAUSTED from it is a cap
# (fault rules, markers, message size) refusing this request: nothing was done.
REFUSED_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
                           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Refused before the handler ran: nothing happened.
NOT_RUN_CODES = REFUSED_CODES | {grpc.StatusCode.UNAUTHENTICATED,
                                 grpc.StatusCode.PERMISSION_DENIED,
                                 grpc.StatusCode.UNIMPLEMENTED}
CREDENTIAL_HINT = ("the lab credential (.distlab/secrets/credential) does not match the "
                   "machine's: was this lab brought up from another checkout? "
                   "`distlab clean` then `distlab up` makes a new one")


class ControlError(DistlabError):
    """A machine's Control service did not do what was asked."""

    def __init__(self, machine: str, method: str, code: grpc.StatusCode, details: str) -> None:
        hint = CREDENTIAL_HINT if code == grpc.StatusCode.UNAUTHENTICATED else \
            f"distlab status; distlab logs {machine}"
        super().__init__(f"{machine} refused Control.{method}: {code.name}: {details}"
                         if code in NOT_RUN_CODES else
                         f"{machine} did not answer Control.{method}: {code.name}: {details}",
                         hint=hint)
        self.machine = machine
        self.method = method
        self.code = code
        self.details = details
        self.definite = code in NOT_RUN_CODES


class ControlRefused(ControlError, UsageError):
    """The machine said the request itself is wrong (a bad rule, an unknown setting)."""


class ControlClient:
    def __init__(self, machine: str, endpoint: str, credential: Credential | None) -> None:
        self.machine = machine
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = control_pb2_grpc.ControlStub(self._channel)
        self._metadata = credential.metadata() if credential is not None else ()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request, *, timeout: float = CHANGE_SECONDS):
        """Control.<method>(request) with the credential; ControlError on any failure."""
        try:
            return getattr(self._stub, method)(request, timeout=timeout,
                                               metadata=self._metadata)
        except grpc.RpcError as exc:
            kind = ControlRefused if exc.code() in REFUSED_CODES else ControlError
            raise kind(self.machine, method, exc.code(), exc.details() or "") from None

    # -- the calls the host makes ----------------------------------------------------------

    def status(self) -> control_pb2.StatusReply:
        return self.call("Status", control_pb2.StatusRequest(), timeout=LOOK_SECONDS)

    def reconfigure(self, settings: Mapping[str, str]) -> dict[str, str]:
        """Apply `settings` ({} changes nothing); the settings as they are now."""
        reply = self.call("Reconfigure", control_pb2.ReconfigureRequest(settings=settings))
        return dict(reply.settings)

    def add_fault_rule(self, rule: control_pb2.FaultRule) -> str:
        return self.call("AddFaultRule", rule).rule_id

    def clear_fault_rules(self, rule_ids: Iterable[str] = ()) -> None:
        """Clear these rules (every rule when none is named)."""
        self.call("ClearFaultRules", control_pb2.ClearFaultRulesRequest(rule_ids=list(rule_ids)))

    def fault_rules(self) -> list[control_pb2.ActiveFaultRule]:
        return list(self.call("ListFaultRules", control_pb2.ListFaultRulesRequest(),
                              timeout=LOOK_SECONDS).rules)

    def mark_fault(self, fault_id: str, kind: str, active: bool) -> None:
        self.call("MarkFault", control_pb2.FaultMarker(fault_id=fault_id, kind=kind,
                                                       active=active), timeout=LOOK_SECONDS)
