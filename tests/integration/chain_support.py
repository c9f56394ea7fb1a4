"""A data tier on loopback for the integration tests: one data-master and replicas.

`DataTier` starts them through the `lab` fixture (real NodeServers, port 0)
with short check intervals, keeps each replica's DATA_DIR so a restart finds
its disk again, and offers a `DataClient` and waits on what a user would see:
the master's configuration and each replica's status.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from distlab.checkers.linearizable import check_linearizable
from distlab.history import FAIL, INFO, OK, History, Op
from nodes.common.auth import Credential
from nodes.common.channel import Channels
from nodes.common.faults import FaultRules
from nodes.common.metrics import NodeMetrics
from nodes.common.server import NodeServer
from nodes.data.__main__ import SPEC as DATA_SPEC
from nodes.data.client import DataClient, DataUnavailable
from nodes.datamaster.__main__ import SPEC as MASTER_SPEC
from nodes.rpc import chain_pb2, chain_pb2_grpc, control_pb2
from tests.integration.conftest import Lab, address_of
from tests.support.ports import free_port

MASTER_ENV = {"CHAIN_CHECK_INTERVAL_SECONDS": "0.2", "CHAIN_CHECK_TIMEOUT_SECONDS": "0.5",
              "CHAIN_CHECK_FALL": "2"}
REPLICA_ENV = {"DATA_MEMBERSHIP_CHECK_SECONDS": "0.2", "DATA_ADVERTISE_ADDRESS": "127.0.0.1",
               "DATA_MAX_VALUE_BYTES": "1024", "DATA_MAX_TXN_OPS": "8",
               "DATA_MAX_READ_LIMIT": "100", "MAX_MESSAGE_BYTES": str(64 * 1024)}
WAIT_SECONDS = 20.0


def put(*pairs: tuple[str, bytes], compares=()) -> chain_pb2.TxnRequest:
    return chain_pb2.TxnRequest(compares=list(compares),
                                puts=[chain_pb2.KeyValue(key=k, value=v) for k, v in pairs])


@dataclass
class DataTier:
    lab: Lab
    master: NodeServer | None = None
    master_dir: str = ""
    replicas: dict[str, NodeServer] = field(default_factory=dict)
    data_dirs: dict[str, str] = field(default_factory=dict)
    clients: list[Channels] = field(default_factory=list)

    # -- machines --------------------------------------------------------------------------

    master_port: int = 0
    master_env: dict[str, str] = field(default_factory=dict)
    replica_env: dict[str, str] = field(default_factory=dict)

    def start_master(self) -> NodeServer:
        """Start (or start again, on the same disk and port) the data-master."""
        self.master_dir = self.master_dir or str(self.lab.tmp_path_factory.mktemp("master"))
        self.master = self.lab.start("data-master", spec=MASTER_SPEC, data_dir=self.master_dir,
                                     GRPC_PORT=self.master_port,
                                     **{**MASTER_ENV, **self.master_env})
        return self.master

    def start_replica(self, name: str, **env: object) -> NodeServer:
        """Start (or start again, on the same disk) replica `name`."""
        assert self.master is not None
        self.data_dirs.setdefault(name, str(self.lab.tmp_path_factory.mktemp(name)))
        settings = {**REPLICA_ENV, **self.replica_env, "DATA_MASTER": address_of(self.master),
                    **env}
        node = self.lab.start(name, spec=DATA_SPEC, data_dir=self.data_dirs[name], **settings)
        self.replicas[name] = node
        return node

    def kill(self, name: str) -> None:
        self.lab.stop(self.replicas[name], grace=0)

    def kill_master(self) -> None:
        assert self.master is not None
        self.lab.stop(self.master, grace=0)

    # -- what a user sees ------------------------------------------------------------------

    def client(self, *, timeout: float = 5.0, attempts: int = 8) -> DataClient:
        assert self.master is not None
        channels = client_channels(timeout, credential=self.lab.credential)
        self.clients.append(channels)
        return DataClient(address_of(self.master), channels, timeout=timeout, attempts=attempts)

    def status(self, node: NodeServer) -> dict[str, str]:
        reply = self.lab.control(node).Status(control_pb2.StatusRequest(), timeout=5)
        return dict(reply.state)

    def master_config(self) -> chain_pb2.ChainConfig:
        assert self.master is not None
        stub = chain_pb2_grpc.MasterStub(self.lab.channel(self.master))
        return stub.GetConfig(chain_pb2.GetConfigRequest(), timeout=5)

    def replica(self, name: str) -> chain_pb2_grpc.ReplicaStub:
        return chain_pb2_grpc.ReplicaStub(self.lab.channel(self.replicas[name]))

    def data(self, name: str) -> chain_pb2_grpc.DataStub:
        return chain_pb2_grpc.DataStub(self.lab.channel(self.replicas[name]))

    def wait_for_chain(self, names: list[str] | set[str], *,
                       timeout: float = WAIT_SECONDS) -> chain_pb2.ChainConfig:
        """Wait until the master lists exactly `names` (head first; any order for a set) and
        every one of them serves that epoch in the position it should."""
        def settled():
            config = self.master_config()
            listed = [member.name for member in config.chain]
            if listed != names and (not isinstance(names, set) or set(listed) != names):
                return None
            names_in_order = listed
            for index, name in enumerate(names_in_order):
                last = len(names_in_order) - 1
                expected = ("single" if last == 0 else "head" if index == 0
                            else "tail" if index == last else "middle")
                status = self.status(self.replicas[name])
                if status["position"] != expected or status["epoch"] != str(config.epoch):
                    return None
            return config

        return self.lab.wait_until(settled, timeout=timeout, what=f"chain {names}")

    def close(self) -> None:
        for channels in self.clients:
            channels.close()


def client_channels(timeout: float = 5.0, *, credential: Credential | None = None) -> Channels:
    """Channels as a test client's (its own metrics registry, no fault rules, the lab's
    credential when given); close them."""
    return Channels(node="test-client",
                    metrics=NodeMetrics(CollectorRegistry(), node="test-client", role="test",
                                        version="0"),
                    rules=FaultRules(), default_timeout=timeout,
                    max_message_bytes=4 * 1024 * 1024, credential=credential)


def start_tier(lab: Lab, names: tuple[str, ...] = ("data-1", "data-2", "data-3"), *,
               master_env: dict[str, str] | None = None,
               replica_env: dict[str, str] | None = None) -> DataTier:
    """A master (on a port kept for restarts) and `names` started one after another, so
    the chain is in that order."""
    tier = DataTier(lab, master_port=free_port(), master_env=master_env or {},
                    replica_env=replica_env or {})
    tier.start_master()
    for index, name in enumerate(names):
        tier.start_replica(name)
        tier.wait_for_chain(list(names[:index + 1]))
    return tier


class Writer:
    """Writes keys <prefix><n> one after another in a thread, bounded in count and time,
    and records what the client said: acknowledged, certainly not applied, or maybe. Each
    write is also an operation of a register history (`history`), which `check` ends with
    a read of every key and gives to the register checker."""

    def __init__(self, client: DataClient, prefix: str, *, limit: int = 2000,
                 seconds: float = 30.0) -> None:
        self.client = client
        self.prefix = prefix
        self.acked: dict[str, bytes] = {}
        self.not_applied: set[str] = set()
        self.maybe: set[str] = set()
        self.history = History()
        self._limit = limit
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer")

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        ends = time.monotonic() + self._seconds
        for n in range(self._limit):
            if self._stop.is_set() or time.monotonic() > ends:
                return
            key, value = f"{self.prefix}{n}", b"value-%d" % n
            invoked = self.history.now()
            try:
                self.client.txn(put((key, value)))
            except DataUnavailable as exc:
                (self.not_applied if exc.definite else self.maybe).add(key)
                self._record("write", key, invoked, FAIL if exc.definite else INFO, value)
                continue
            self.acked[key] = value
            self._record("write", key, invoked, OK, value)

    def _record(self, name: str, key: str, invoked: float, kind: str, value: bytes | None,
                ) -> None:
        text = None if value is None else value.decode()
        args = {"key": key, "value": text} if name == "write" else {"key": key}
        self.history.add(Op(0, name, args, invoked, self.history.now(), kind,
                            result=text if name == "read" else None))

    def wait_for_more(self, count: int, lab: Lab) -> None:
        target = len(self.acked) + count
        lab.wait_until(lambda: len(self.acked) >= target, timeout=WAIT_SECONDS,
                       what=f"{count} more acknowledged writes")

    def check(self, reader: DataClient) -> None:
        """Every acknowledged write is there with its value; no refused one is; and the
        register checker finds the history (every write, then a read of every key)
        linearizable."""
        keys = sorted(self.acked.keys() | self.not_applied | self.maybe)
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), 100):
            invoked = self.history.now()
            reply = reader.read(chain_pb2.ReadRequest(keys=keys[start:start + 100]))
            batch = {entry.key: entry.value for entry in reply.found}
            for key in keys[start:start + 100]:
                self._record("read", key, invoked, OK, batch.get(key))
            found.update(batch)
        verdict = check_linearizable(self.history, time_limit=30)
        assert verdict.valid is True, verdict.problems[:3]
        lost = {key for key, value in self.acked.items() if found.get(key) != value}
        assert not lost, f"acknowledged writes lost: {sorted(lost)[:5]}"
        applied_anyway = self.not_applied & found.keys()
        assert not applied_anyway, f"writes refused as not applied are there: {applied_anyway}"
