"""The data-master's gRPC adapter: the `Master` service, the member checker and the pusher.

Called by replicas (Register, GetConfig, and Replace from a replica migrated live into a
spare: see nodes/data/service.py), by DataClients (GetConfig) and by
the node bootstrap. It touches one file, DATA_DIR/<name>/chain-config.binpb,
written with fsync and an atomic rename before any reply or push mentions a
new epoch, and reloaded at start. Every decision is `ChainMaster`'s.

Two threads: the checker health-checks every member each
CHAIN_CHECK_INTERVAL_SECONDS (nodes.common.peers.HealthChecks) and takes
out one its detector finds down (several at once: tail first, so the head,
which holds the most, is the one kept when all are down); the pusher sends
the current configuration to every member that has not acknowledged it,
head first, stopping at the first failure and trying again each interval.

The detector (CHAIN_CHECK_DETECTOR) is phi accrual by default: a member
whose checks are answered no (connection refused, an error, not serving)
CHAIN_CHECK_FALL times in a row is down at once, since a listed member that
refuses stalls every write through the chain anyway; one that is silent is
down when phi reaches CHAIN_CHECK_PHI_THRESHOLD, with
CHAIN_CHECK_ACCEPTABLE_PAUSE_SECONDS forgiven, so a slow or busy member is
given time by its own rhythm. "fixed" is the older detector (every failed or
timed-out check counts, CHAIN_CHECK_FALL in a row), kept for comparison.

A Register never changes a member that still serves at its registered
address: before one naming a listed member is decided, the master asks that
address (Control.Status, with the lab credential) who answers there; if it is
that member, in a serving position, the Register did not come from it (a
replica registers only while it serves nothing) and is refused. A member
restarted at a new address, or in place, answers nothing or "standby" there.

What happens when the master itself fails: see the package docstring
(nodes/datamaster/__init__.py).
"""

from __future__ import annotations

import threading
import time

import grpc
from prometheus_client import Counter, Gauge

from nodes.common.config import ConfigError
from nodes.common.durable import read_file, write_atomically
from nodes.common.peers import CountingDetector, HealthChecks, phi_detector
from nodes.common.role import NodeContext, RoleNode
from nodes.datamaster.core import REASONS, ChainMaster, Change, ReplaceRefused
from nodes.rpc import chain_pb2, chain_pb2_grpc, control_pb2, control_pb2_grpc

SERVICE_NAME = chain_pb2.DESCRIPTOR.services_by_name["Master"].full_name
CONFIG_FILE = "chain-config.binpb"
MAX_NAME_LENGTH = 128
#: A replica's Status position while it serves nothing (nodes/data/chain.py POSITIONS).
NOT_SERVING = "standby"


def _check_member(member: chain_pb2.ChainMember) -> str | None:
    """Why a Register's member is malformed, or None."""
    if not member.name or len(member.name) > MAX_NAME_LENGTH or not member.name.isprintable():
        return f"member name must be 1-{MAX_NAME_LENGTH} printable characters"
    host, _, port = member.address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"member address {member.address!r} is not host:port"
    return None


class DataMasterNode(RoleNode, chain_pb2_grpc.MasterServicer):
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: NodeContext) -> None:
        config = ctx.config
        self._log = ctx.log
        self._channels = ctx.channels
        self._interval = config["CHAIN_CHECK_INTERVAL_SECONDS"]
        self._check_timeout = config["CHAIN_CHECK_TIMEOUT_SECONDS"]
        self._configure_timeout = config["CHAIN_CONFIGURE_TIMEOUT_SECONDS"]
        self._path = ctx.data_dir / CONFIG_FILE
        self._core = ChainMaster(self._load())
        # rise=1: a member's first good check after a failure counts; members are taken
        # out only on the way down, and every listed one is presumed up to begin with.
        if config["CHAIN_CHECK_DETECTOR"] == "fixed":
            self._detector = CountingDetector(rise=1, fall=config["CHAIN_CHECK_FALL"])
        else:
            self._detector = phi_detector(
                interval=self._interval, threshold=config["CHAIN_CHECK_PHI_THRESHOLD"],
                acceptable_pause=config["CHAIN_CHECK_ACCEPTABLE_PAUSE_SECONDS"], rise=1,
                fall=config["CHAIN_CHECK_FALL"])
        for name in self._core.names():
            self._detector.presume_up(name, time.monotonic())
        self._lock = threading.Lock()
        self._checks = HealthChecks(channels=ctx.channels, detector=self._detector,
                                    timeout=self._check_timeout, lock=self._lock)
        self._stopped = threading.Event()
        self._changed = threading.Event()
        self._last_push_problem = ""
        self._threads = [threading.Thread(target=self._check_loop, name="chain-checker",
                                          daemon=True),
                         threading.Thread(target=self._push_loop, name="chain-pusher",
                                          daemon=True)]
        self._reconfigurations = Counter("distlab_chain_reconfigurations_total",
                                         "Chain configuration changes, by reason.", ["reason"],
                                         registry=ctx.registry)
        for reason in REASONS:
            self._reconfigurations.labels(reason=reason)
        Gauge("distlab_chain_length", "Members in the chain configuration.",
              registry=ctx.registry).set_function(lambda: len(self._core.names()))
        Gauge("distlab_chain_config_epoch", "Epoch of the chain configuration.",
              registry=ctx.registry).set_function(lambda: self._core.epoch)
        ctx.log.info("chain_config_loaded", epoch=self._core.epoch, chain=self._core.names())

    def _load(self) -> chain_pb2.ChainConfig:
        raw = read_file(self._path)
        if raw is None:
            return chain_pb2.ChainConfig()
        try:
            return chain_pb2.ChainConfig.FromString(raw)
        except Exception:  # noqa: BLE001 - the protobuf decode error type varies by runtime
            raise ConfigError(f"{self._path} is not a chain configuration; move it away to "
                              "start an empty chain") from None

    # -- node contract ---------------------------------------------------------------------

    def register(self, server: grpc.Server) -> None:
        chain_pb2_grpc.add_MasterServicer_to_server(self, server)

    def serving(self, grpc_port: int) -> None:
        for thread in self._threads:
            thread.start()
        self._changed.set()  # push the loaded configuration: members may have missed it

    def status(self) -> dict[str, str]:
        with self._lock:
            names = self._core.names()
            return {"epoch": str(self._core.epoch), "chain": ",".join(names),
                    "members_up": str(sum(self._detector.is_up(name) for name in names))}

    def close(self) -> None:
        self._stopped.set()
        self._changed.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=self._configure_timeout + 1)

    # -- Master ----------------------------------------------------------------------------

    def GetConfig(self, request, context):
        with self._lock:
            return self._core.config

    def Register(self, request, context):
        complaint = _check_member(request.member)
        if complaint:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, complaint)
        with self._lock:
            listed = self._core.member(request.member.name)
        if listed is not None:
            position = self._serving_position(listed)
            if position:
                self._log.warning("register_refused", replica=listed.name,
                                  address=request.member.address, serving_at=listed.address,
                                  position=position)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"{listed.name} still serves at {listed.address} as {position}: "
                              f"a Register does not change a member that answers there")
        with self._lock:
            registration = self._core.register(request.member, member_epoch=request.member_epoch,
                                               ready=request.ready)
            if registration.change is not None:
                self._record(registration.change)
        self._log.info("replica_registered", replica=request.member.name,
                       address=request.member.address, last_seq=request.last_seq,
                       member_epoch=request.member_epoch, ready=request.ready,
                       member=registration.member, epoch=registration.config.epoch)
        return chain_pb2.RegisterReply(config=registration.config, member=registration.member)

    def Replace(self, request, context):
        complaint = _check_member(request.new)
        if complaint or not request.old:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          complaint or "name the member to replace (old)")
        with self._lock:
            try:
                change = self._core.replace(request.old, request.new, epoch=request.epoch)
            except ReplaceRefused as exc:
                refused = str(exc)
            else:
                refused = ""
                if change is not None:
                    self._record(change)
                config = self._core.config
        if refused:
            self._log.warning("replace_refused", old=request.old, new=request.new.name,
                              epoch=request.epoch, why=refused)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"replace refused: {refused}")
        self._log.info("replica_replaced", old=request.old, new=request.new.name,
                       address=request.new.address, last_seq=request.last_seq,
                       epoch=config.epoch)
        return config

    def _serving_position(self, member: chain_pb2.ChainMember) -> str | None:
        """The position `member` serves in at its registered address, if it answers there
        as itself and serves; None when nothing (or someone else, or a standby) answers."""
        stub = control_pb2_grpc.ControlStub(self._channels.get(member.address, member.name))
        try:
            reply = stub.Status(control_pb2.StatusRequest(), timeout=self._check_timeout)
        except grpc.RpcError:
            return None
        position = reply.state.get("position", NOT_SERVING)
        return position if reply.node == member.name and position != NOT_SERVING else None

    def _record(self, change: Change) -> None:
        """Persist a change before anyone hears of it; lock held."""
        write_atomically(self._path, change.config.SerializeToString())
        for name in [member.name for member in change.config.chain]:
            if not self._detector.is_up(name):
                # A new or returning member is presumed up, and heard from just now.
                self._detector.presume_up(name, time.monotonic())
        self._reconfigurations.labels(reason=change.reason).inc()
        self._log.info("chain_reconfigured", reason=change.reason, epoch=change.config.epoch,
                       chain=[member.name for member in change.config.chain])
        self._changed.set()

    # -- checker ---------------------------------------------------------------------------

    def _check_loop(self) -> None:
        while not self._stopped.is_set():
            started = time.monotonic()
            self._check_once()
            self._stopped.wait(max(0.0, self._interval - (time.monotonic() - started)))

    def _check_once(self) -> None:
        with self._lock:
            members = {member.name: member.address for member in self._core.config.chain}
        failed = []
        for name, verdict in self._checks.round(members, wait=self._interval):
            # A down verdict is news at the default level; coming back is not.
            (self._log.info if verdict else self._log.warning)(
                "member_up" if verdict else "member_down", member=name, address=members[name],
                why=self._checks.why(name))
            if verdict is False and name not in failed:
                failed.append(name)
        with self._lock:
            order = self._core.names()
            for name in sorted(failed, key=order.index, reverse=True):  # tail first
                if self._detector.is_up(name) or name not in order:
                    continue  # back already, or gone meanwhile
                change = self._core.remove_failed(name)
                if change is None:
                    self._log.warning("member_kept", member=name,
                                      why="no other serving member would remain")
                else:
                    self._record(change)

    # -- pusher ----------------------------------------------------------------------------

    def _push_loop(self) -> None:
        while not self._stopped.is_set():
            self._changed.wait(self._interval)
            self._changed.clear()
            if not self._stopped.is_set():
                self._push_once()

    def _push_once(self) -> None:
        with self._lock:
            config = self._core.config
            targets = self._core.push_targets()
        for member in targets:
            stub = chain_pb2_grpc.ReplicaStub(self._channels.get(member.address, member.name))
            try:
                stub.Configure(config, timeout=self._configure_timeout)
            except grpc.RpcError as exc:
                problem = f"{member.name} at epoch {config.epoch}: {exc.code().name}"
                if problem != self._last_push_problem:
                    self._log.warning("config_push_failed", member=member.name,
                                      epoch=config.epoch, code=exc.code().name,
                                      details=exc.details())
                    self._last_push_problem = problem
                return  # head first: nobody after it may hear of this epoch before it
            with self._lock:
                self._core.acknowledged(member.name, config.epoch)
        self._last_push_problem = ""
