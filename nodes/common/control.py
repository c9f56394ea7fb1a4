"""The Control service every node serves: status, RPC fault rules, fault markers,
reachability probes, and snapshot/restore for migration.

Called by the host side (distlab) only. Every bad request gets
INVALID_ARGUMENT or NOT_FOUND with a message saying what was wrong; a fault
rule or marker past the node's cap gets RESOURCE_EXHAUSTED saying the cap.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodes.common.channel import dial
from nodes.common.faults import FaultRuleError, RuleSpec, TooManyRules, status_code_from_value
from nodes.common.peers import machine_name_of
from nodes.common.role import NodeContext, RoleError, RoleNode
from nodes.rpc import control_pb2, control_pb2_grpc

MARKER_KINDS = ("partition", "loss", "bandwidth", "delay")
MAX_MARKERS = 1000
MAX_PROBE_TIMEOUT = 30.0
_TARGET = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$")
_ACTIONS = {control_pb2.FaultRule.DELAY: "delay", control_pb2.FaultRule.ERROR: "error",
            control_pb2.FaultRule.DROP: "drop"}
_DIRECTIONS = {control_pb2.FaultRule.DIRECTION_UNSPECIFIED: "inbound",
               control_pb2.FaultRule.INBOUND: "inbound",
               control_pb2.FaultRule.OUTBOUND: "outbound"}


def rule_from_message(message: control_pb2.FaultRule) -> RuleSpec:
    if message.action not in _ACTIONS:
        raise FaultRuleError("action must be DELAY, ERROR or DROP")
    return RuleSpec(
        method=message.method or "*",
        peer=message.peer,
        action=_ACTIONS[message.action],
        direction=_DIRECTIONS.get(message.direction, "inbound"),
        delay_seconds=message.delay_seconds,
        jitter_seconds=message.jitter_seconds,
        status_code=(status_code_from_value(message.status_code) if message.status_code
                     else grpc.StatusCode.UNAVAILABLE),
        probability=message.probability or 1.0,
        duration_seconds=message.duration_seconds,
    )


class ControlService(control_pb2_grpc.ControlServicer):
    def __init__(self, context: NodeContext, role: RoleNode, version: str,
                 peers: Callable[[], list[tuple[str, str, bool]]]) -> None:
        self._ctx = context
        self._role = role
        self._version = version
        self._peers = peers
        self._started = time.monotonic()
        self._markers: dict[str, str] = {}
        self._lock = threading.Lock()

    def Status(self, request, context):
        return control_pb2.StatusReply(
            node=self._ctx.name, role=self._ctx.role, version=self._version,
            uptime_seconds=time.monotonic() - self._started,
            state=self._role.status(),
            peers=[control_pb2.PeerState(name=n, address=a, up=up) for n, a, up in self._peers()])

    def AddFaultRule(self, request, context):
        try:
            spec = rule_from_message(request)
        except FaultRuleError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            rule_id = self._ctx.rules.add(spec)
        except TooManyRules as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        self._ctx.log.info("fault_rule_added", rule_id=rule_id, method=spec.method,
                           peer=spec.peer, action=spec.action, direction=spec.direction)
        return control_pb2.AddFaultRuleReply(rule_id=rule_id)

    def ListFaultRules(self, request, context):
        rules = self._ctx.rules
        return control_pb2.ListFaultRulesReply(rules=[
            control_pb2.ActiveFaultRule(
                rule_id=r.rule_id, remaining_seconds=rules.remaining(r), matched=r.matched,
                rule=control_pb2.FaultRule(
                    method=r.spec.method, peer=r.spec.peer,
                    action=control_pb2.FaultRule.Action.Value(r.spec.action.upper()),
                    direction=control_pb2.FaultRule.Direction.Value(r.spec.direction.upper()),
                    delay_seconds=r.spec.delay_seconds, jitter_seconds=r.spec.jitter_seconds,
                    status_code=r.spec.status_code.value[0], probability=r.spec.probability,
                    duration_seconds=r.spec.duration_seconds))
            for r in rules.active()])

    def ClearFaultRules(self, request, context):
        try:
            cleared = self._ctx.rules.clear(request.rule_ids)
        except FaultRuleError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        self._ctx.log.info("fault_rules_cleared", cleared=cleared)
        return control_pb2.ClearFaultRulesReply(cleared=cleared)

    def MarkFault(self, request, context):
        if request.kind not in MARKER_KINDS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"kind {request.kind!r} is not one of {', '.join(MARKER_KINDS)}")
        if not request.fault_id or len(request.fault_id) > 128:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fault_id must be 1-128 characters")
        with self._lock:
            if request.active:
                if len(self._markers) >= MAX_MARKERS and request.fault_id not in self._markers:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"at most {MAX_MARKERS} fault markers at once")
                self._markers[request.fault_id] = request.kind
            else:
                self._markers.pop(request.fault_id, None)
            for kind in MARKER_KINDS:
                count = sum(1 for k in self._markers.values() if k == kind)
                self._ctx.metrics.fault_active.labels(kind=kind).set(count)
        self._ctx.log.info("fault_marked", fault_id=request.fault_id, kind=request.kind,
                           active=request.active)
        return control_pb2.MarkFaultReply()

    def Probe(self, request, context):
        if not _TARGET.match(request.target):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"target {request.target!r} must be host:port")
        timeout = request.timeout_seconds or 1.0
        if not 0 < timeout <= MAX_PROBE_TIMEOUT:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"timeout_seconds must be in (0, {MAX_PROBE_TIMEOUT}]")
        host = request.target.rsplit(":", 1)[0]
        peer = machine_name_of_host(host)
        config = self._ctx.config
        channel = dial(request.target, peer=peer, node=self._ctx.name,
                       metrics=self._ctx.metrics, rules=self._ctx.rules,
                       default_timeout=timeout, max_message_bytes=config["MAX_MESSAGE_BYTES"])
        started = time.perf_counter()
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=timeout)
        except grpc.RpcError as exc:
            return control_pb2.ProbeReply(ok=False, code=exc.code().name, detail=exc.details(),
                                          latency_seconds=time.perf_counter() - started)
        finally:
            channel.close()
        return control_pb2.ProbeReply(ok=True, code="OK",
                                      latency_seconds=time.perf_counter() - started)

    def Snapshot(self, request, context):
        try:
            state = self._role.snapshot()
        except RoleError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return control_pb2.SnapshotReply(role=self._ctx.role, state=state)

    def Restore(self, request, context):
        if request.role != self._ctx.role:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"snapshot is of role {request.role!r}, this node is {self._ctx.role!r}")
        try:
            self._role.restore(request.state)
        except RoleError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._ctx.log.info("state_restored", bytes=len(request.state))
        return control_pb2.RestoreReply()

    def Reconfigure(self, request, context):
        try:
            settings = self._role.reconfigure(dict(request.settings))
        except RoleError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._ctx.log.info("reconfigured", settings=dict(request.settings))
        return control_pb2.ReconfigureReply(settings=settings)


def machine_name_of_host(host: str) -> str:
    """The machine name a probe target belongs to, for the peer label and fault rules."""
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return host
    return machine_name_of(address) or host
