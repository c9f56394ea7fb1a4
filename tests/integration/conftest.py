"""Fixtures for in-process nodes on loopback: real gRPC servers, real /metrics, no containers.

`lab` starts `NodeServer`s on 127.0.0.1 with port 0 and stops every one of
them (grace 0) and every channel it opened when the test ends, pass or fail.
A lab has its own credential (a file under the test's tmp dir, given to every
node as CREDENTIAL_FILE); `lab.channel` presents it, as the host's tools do,
and `lab.bare_channel` does not, as a stranger's client would not.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from nodes.common.auth import Credential, with_credential
from nodes.common.role import RoleSpec
from nodes.common.server import NodeServer
from nodes.kv.__main__ import SPEC as KV_SPEC
from nodes.rpc import control_pb2_grpc, kv_pb2_grpc

WAIT_SECONDS = 10.0


def credential_file(directory) -> str:
    """The path of a lab credential in `directory`, written there the first time; for
    nodes started as processes (CREDENTIAL_FILE) and their test clients."""
    path = Path(directory) / "distlab_credential"
    if not path.exists():
        Credential.generate().write(path)
    return str(path)


def address_of(node: NodeServer) -> str:
    return f"127.0.0.1:{node.grpc_port}"


def wait_until(predicate: Callable[[], object], *, timeout: float = WAIT_SECONDS,
               what: str = "condition") -> object:
    """Poll until `predicate` is truthy; fail the test (not hang) when `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s (last value: {value!r})")
        time.sleep(0.05)


@dataclass
class Scrape:
    """One scrape of a node's /metrics, parsed; `value` is None for a sample that is absent."""

    samples: dict[tuple[str, frozenset], float]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def get(self, name: str, **labels: str) -> float:
        return self.value(name, **labels) or 0.0

    def slower_than(self, name: str, bound: str, **labels: str) -> float:
        """How many observations of histogram `name` were above the bucket `bound`."""
        return self.get(f"{name}_count", **labels) - self.get(f"{name}_bucket", le=bound, **labels)


def scrape(node: NodeServer) -> Scrape:
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples)


@dataclass
class Lab:
    tmp_path_factory: pytest.TempPathFactory
    nodes: list[NodeServer] = field(default_factory=list)
    stopped: set[int] = field(default_factory=set)
    channels: list[grpc.Channel] = field(default_factory=list)
    credential: Credential = field(default_factory=Credential.generate)
    credential_file: str = ""

    def __post_init__(self) -> None:
        self.credential_file = str(self.tmp_path_factory.mktemp("secrets") / "credential")
        self.credential.write(self.credential_file)

    def start(self, name: str = "kv-a", *, spec: RoleSpec = KV_SPEC, data_dir: str = "",
              **env: object) -> NodeServer:
        environ = {"NODE_NAME": name, "GRPC_PORT": "0", "METRICS_PORT": "0",
                   "DATA_DIR": data_dir or str(self.tmp_path_factory.mktemp(name)),
                   "PEER_INTERVAL_SECONDS": "0.2", "LOG_LEVEL": "warning",
                   "CREDENTIAL_FILE": self.credential_file}
        environ.update({key: str(value) for key, value in env.items()})
        node = NodeServer(spec, environ)
        node.start()
        self.nodes.append(node)
        return node

    def stop(self, node: NodeServer, grace: float = 0) -> None:
        if id(node) not in self.stopped:
            self.stopped.add(id(node))
            node.stop(grace=grace)

    def channel(self, target: NodeServer | str) -> grpc.Channel:
        """A channel whose calls present this lab's credential."""
        return with_credential(self.bare_channel(target), self.credential)

    def bare_channel(self, target: NodeServer | str) -> grpc.Channel:
        """A channel without the credential: what anyone else on the machine could open."""
        address = target if isinstance(target, str) else address_of(target)
        channel = grpc.insecure_channel(address)
        self.channels.append(channel)
        return channel

    def kv(self, node: NodeServer) -> kv_pb2_grpc.KVStub:
        return kv_pb2_grpc.KVStub(self.channel(node))

    def control(self, node: NodeServer) -> control_pb2_grpc.ControlStub:
        return control_pb2_grpc.ControlStub(self.channel(node))

    def health(self, node: NodeServer) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel(node))

    address = staticmethod(address_of)
    scrape = staticmethod(scrape)
    wait_until = staticmethod(wait_until)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        # Stopping a node waits up to 0.5 s for its /metrics thread: stop them all at once.
        stoppers = [threading.Thread(target=self.stop, args=(node,)) for node in self.nodes]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()


@pytest.fixture
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory)
    yield lab
    lab.close()


SMALL_LIMITS = {"KV_MAX_VALUE_BYTES": 1024, "MAX_MESSAGE_BYTES": 64 * 1024}


@pytest.fixture
def node(lab):
    """One kv node of this test, with small limits so size checks are cheap to reach."""
    return lab.start("kv-a", **SMALL_LIMITS)


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory):
    lab = Lab(tmp_path_factory)
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def shared_node(shared_lab):
    """A kv node shared by a module's tests that change nothing (stopping one takes 0.5 s)."""
    return shared_lab.start("kv-shared", **SMALL_LIMITS)


@pytest.fixture
def kv(lab, node):
    return lab.kv(node)


@pytest.fixture
def control(lab, node):
    return lab.control(node)
