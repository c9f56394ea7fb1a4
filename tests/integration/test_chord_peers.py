"""Chord peers on loopback: a ring forms and agrees on owners, keys follow joins, bad input
and bad joins are refused with a reason. Real NodeServers, 16-bit ids, 0.1 s periods.

`ChordPeers` (also used by test_chord_failures.py) starts peers with explicit ids and
reads the ring back through Chord.State, checked by the host's own `check_ring`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace

import grpc
import pytest
from click.testing import CliRunner

from distlab.chord import cli, ringmap
from distlab.chord.ringmap import PeerState, check_ring
from nodes.chord.__main__ import SPEC
from nodes.chord.ring import format_id, key_id, successor_index
from nodes.common.server import NodeServer
from nodes.rpc import chord_pb2, chord_pb2_grpc, control_pb2
from tests.support.ports import free_ports

BITS = 16
# In-process peers share one interpreter lock: a round trip here measures the lock's queue
# more than the network, so hop deadlines stay at 0.5 s (the learned ones would go to 0.1 s,
# and one GIL stall would take a live peer for dead and a lookup to the wrong owner).
FAST = {"CHORD_BITS": BITS, "CHORD_STABILIZE_SECONDS": 0.1, "CHORD_FIX_FINGERS_SECONDS": 0.05,
        "CHORD_CHECK_PREDECESSOR_SECONDS": 0.2, "CHORD_MERGE_CHECK_SECONDS": 0.5,
        "CHORD_HOP_TIMEOUT_SECONDS": 0.5,
        "CHORD_HOP_TIMEOUT_MIN_SECONDS": 0.5, "CHORD_ADVERTISE_HOST": "127.0.0.1",
        "CHORD_SUCCESSORS": 4, "CHORD_REPLICAS": 2, "CHORD_MAX_VALUE_BYTES": 1024}
EIGHT_IDS = [0x1000 + 0x2000 * i for i in range(8)]  # 1000, 3000, ... f000
KEYS = [f"key-{i}" for i in range(24)]


@dataclass
class ChordPeers:
    lab: object
    nodes: list[NodeServer] = field(default_factory=list)
    ids: dict[int, int] = field(default_factory=dict)  # id(node) -> chord id
    stopped: set[int] = field(default_factory=set)
    _stubs: dict[int, chord_pb2_grpc.ChordStub] = field(default_factory=dict)

    def start(self, ident: int, *, join: NodeServer | None = None, **env) -> NodeServer:
        settings = {**FAST, "CHORD_ID": format_id(ident, BITS), **env}
        if join is not None:
            settings["CHORD_JOIN"] = self.lab.address(join)
        node = self.lab.start(f"chord-{ident:04x}", spec=SPEC, **settings)
        self.nodes.append(node)
        self.ids[id(node)] = ident
        return node

    def start_ring(self, idents, **env) -> list[NodeServer]:
        first = self.start(idents[0], **env)
        return [first] + [self.start(i, join=first, **env) for i in idents[1:]]

    def stop(self, *nodes: NodeServer) -> None:
        """Stop peers at once (grace 0), as a crash of several machines would."""
        stoppers = [threading.Thread(target=self.lab.stop, args=(n,)) for n in nodes]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self.stopped.update(id(n) for n in nodes)

    def live(self) -> list[NodeServer]:
        return sorted((n for n in self.nodes if id(n) not in self.stopped),
                      key=lambda n: self.ids[id(n)])

    def stub(self, node: NodeServer) -> chord_pb2_grpc.ChordStub:
        if id(node) not in self._stubs:
            self._stubs[id(node)] = chord_pb2_grpc.ChordStub(self.lab.channel(node))
        return self._stubs[id(node)]

    def states(self) -> list[PeerState]:
        return [PeerState.from_reply(self.stub(n).State(chord_pb2.StateRequest(), timeout=5))
                for n in self.live()]

    def one_ring(self) -> bool | list[str]:
        check = check_ring(self.states())
        if len(check.ordered) != len(self.live()):
            return [f"{len(check.ordered)} members of {len(self.live())}"] + check.problems
        return check.ok or check.problems

    def wait_for_ring(self) -> None:
        self.lab.wait_until(lambda: self.one_ring() is True, timeout=20,
                            what=f"one ordered ring of {len(self.live())} peers")

    def owner_of(self, key: str) -> NodeServer:
        live = self.live()
        return live[successor_index([self.ids[id(n)] for n in live], key_id(key, BITS))]

    def put_all(self, keys=KEYS) -> None:
        live = self.live()
        for index, key in enumerate(keys):
            self.stub(live[index % len(live)]).Put(
                chord_pb2.PutRequest(key=key, value=f"value of {key}".encode()), timeout=10)

    def owners_agreed(self, keys=KEYS) -> bool | list[str]:
        """Every live peer's Lookup of every key names the key's true owner."""
        wrong = []
        for node in self.live():
            for key in keys:
                try:
                    owner = self.stub(node).Lookup(chord_pb2.LookupRequest(key=key),
                                                   timeout=5).owner.address
                except grpc.RpcError as exc:
                    owner = exc.code().name
                if owner != self.lab.address(self.owner_of(key)):
                    wrong.append(f"{self.lab.address(node)} says {key} is at {owner}")
        return not wrong or wrong

    def all_readable(self, keys=KEYS) -> bool | list[str]:
        """Every key reads back with its value from every live peer."""
        wrong = []
        for node in self.live():
            for key in keys:
                try:
                    value = self.stub(node).Get(chord_pb2.GetRequest(key=key), timeout=5).value
                except grpc.RpcError as exc:
                    value = exc.code().name.encode()
                if value != f"value of {key}".encode():
                    wrong.append(f"{key} from {self.lab.address(node)}: {value!r}")
        return not wrong or wrong

    def held_by(self, node: NodeServer, key: str) -> bool:
        reply = self.stub(node).Fetch(chord_pb2.FetchRequest(key=key, local_only=True),
                                      timeout=5)
        return reply.found and not reply.entry.deleted

    def status(self, node: NodeServer) -> dict[str, str]:
        reply = self.lab.control(node).Status(control_pb2.StatusRequest(), timeout=5)
        return dict(reply.state)


@pytest.fixture
def peers(lab) -> ChordPeers:
    return ChordPeers(lab)


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    return caught.value


def test_eight_peers_form_one_ring_that_agrees_on_every_owner(lab, peers):
    nodes = peers.start_ring(EIGHT_IDS)
    peers.wait_for_ring()
    peers.put_all()
    lab.wait_until(lambda: peers.owners_agreed() is True, what="every peer agrees on owners")
    assert peers.all_readable() is True

    for key in KEYS:  # each key at its owner and the owner's next two successors
        owner = nodes.index(peers.owner_of(key))
        holders = {n for n in range(8) if peers.held_by(nodes[n], key)}
        assert holders == {owner, (owner + 1) % 8, (owner + 2) % 8}, key

    reply = peers.stub(nodes[0]).Lookup(chord_pb2.LookupRequest(key=KEYS[0]), timeout=5)
    assert reply.path[0].address == lab.address(nodes[0])
    assert reply.path[-1].address == reply.owner.address == lab.address(peers.owner_of(KEYS[0]))
    assert reply.hops == len(reply.path) - 2 and reply.timeouts == 0

    status = peers.status(nodes[0])
    assert status["id"] == "1000" and status["state"] == "member"
    assert status["successor"] == lab.address(nodes[1])
    assert status["predecessor"] == lab.address(nodes[7])
    assert (status["successors"], status["ring_size"], status["ring_ok"]) == ("4", "8", "yes")
    scrapes = [lab.scrape(n) for n in nodes]
    assert sum(s.get("distlab_chord_keys", kind="owned") for s in scrapes) == len(KEYS)
    assert sum(s.get("distlab_chord_keys", kind="replica") for s in scrapes) == 2 * len(KEYS)
    assert all(s.get("distlab_chord_member") == 1 for s in scrapes)
    assert scrapes[0].get("distlab_chord_lookups_total", purpose="client", result="ok") >= len(
        KEYS)
    assert scrapes[0].get("distlab_chord_lookup_hops_count", purpose="client") >= len(KEYS)
    # The overview's peer view: each peer's verdict on its predecessor and successors.
    neighbours = {lab.address(nodes[i]) for i in (7, 1, 2, 3, 4)}
    shown = {dict(labels)["peer"]: value for (name, labels), value in scrapes[0].samples.items()
             if name == "distlab_peer_up"}
    assert shown == dict.fromkeys(neighbours, 1.0)


def test_peers_started_at_once_end_in_one_ring(lab, peers, tmp_path):
    ports = free_ports(5)
    everyone = ",".join(f"127.0.0.1:{port}" for port in ports)
    started: list[NodeServer] = []

    def start(port: int) -> None:
        node = lab.start(f"chord-{port}", spec=SPEC, data_dir=str(tmp_path / str(port)),
                         GRPC_PORT=port, CHORD_JOIN=everyone,
                         **{**FAST, "CHORD_BITS": 32})
        started.append(node)

    threads = [threading.Thread(target=start, args=(port,)) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    states = []

    def one_ring_of_five() -> bool | list[str]:
        states[:] = [PeerState.from_reply(peers.stub(n).State(chord_pb2.StateRequest(),
                                                              timeout=5)) for n in started]
        check = check_ring(states)
        return (check.ok and len(check.ordered) == 5) or check.problems

    lab.wait_until(lambda: one_ring_of_five() is True, timeout=20, what="one ring of five")
    assert len({s.ring for s in states}) == 1


def test_a_duplicate_id_is_refused_with_the_reason(lab, peers):
    first = peers.start(0x1000)
    twin = peers.start(0x1000, join=first)
    expected = f"id 1000 is already used by {lab.address(first)}"
    lab.wait_until(lambda: peers.status(twin).get("join_error") == expected,
                   what="the twin's join refused")
    assert peers.status(twin)["state"] == "refused"
    error = refused(peers.stub(twin).Lookup, chord_pb2.LookupRequest(key="k"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert expected in error.details()
    state = peers.stub(first).State(chord_pb2.StateRequest(), timeout=5)
    assert list(state.successors) == [] and not state.predecessor.address


def test_an_unreachable_join_peer_is_reported_then_retried(lab, peers, tmp_path):
    (port,) = free_ports(1)
    joiner = lab.start("chord-joiner", spec=SPEC, CHORD_ID="8000",
                       CHORD_JOIN=f"127.0.0.1:{port}", **FAST)
    lab.wait_until(lambda: peers.status(joiner).get("join_error") ==
                   f"cannot reach any peer to join: 127.0.0.1:{port}",
                   what="the unreachable peer reported")
    assert peers.status(joiner)["state"] == "joining"
    first = lab.start("chord-late", spec=SPEC, GRPC_PORT=port, CHORD_ID="1000", **FAST)
    peers.nodes += [first, joiner]
    peers.ids.update({id(first): 0x1000, id(joiner): 0x8000})
    peers.wait_for_ring()
    assert "join_error" not in peers.status(joiner)


def test_two_rings_born_in_a_race_merge_into_the_older_one(lab, peers):
    older = peers.start(0x1000)
    lab.wait_until(lambda: peers.status(older).get("state") == "member", what="the first ring")
    # Hide the first ring from the second peer's join attempt, as a race would.
    control = lab.control(older)
    rule = control.AddFaultRule(control_pb2.FaultRule(
        action=control_pb2.FaultRule.ERROR, method="/distlab.chord.Chord/Neighbours"),
        timeout=5).rule_id
    (port,) = free_ports(1)
    younger = peers.start(0x8000, GRPC_PORT=port,
                          CHORD_JOIN=f"{lab.address(older)},127.0.0.1:{port}")
    lab.wait_until(lambda: peers.status(younger).get("state") == "member",
                   what="a second ring")
    peers.put_all(KEYS[:8])  # round-robin: half of them written into the younger ring
    assert len({s.ring for s in peers.states()}) == 2
    control.ClearFaultRules(control_pb2.ClearFaultRulesRequest(rule_ids=[rule]), timeout=5)
    peers.wait_for_ring()
    assert {s.ring for s in peers.states()} == {peers.states()[0].ring}
    lab.wait_until(lambda: peers.all_readable(KEYS[:8]) is True,
                   what="the younger ring's keys moved to the merged ring")


@pytest.mark.parametrize("method, request_, fragment", [
    ("Lookup", chord_pb2.LookupRequest(key=""), "exactly one of key"),
    ("Lookup", chord_pb2.LookupRequest(key="a", id="1"), "exactly one of key"),
    ("Lookup", chord_pb2.LookupRequest(id="10000"), "out of range"),
    ("Lookup", chord_pb2.LookupRequest(id="xyz"), "not a hex number"),
    ("Lookup", chord_pb2.LookupRequest(key="k" * 257), "the limit is 256"),
    ("Put", chord_pb2.PutRequest(key="", value=b"x"), "key must not be empty"),
    ("Put", chord_pb2.PutRequest(key="big", value=b"x" * 1025),
     "value is 1025 bytes; the limit is 1024"),
    ("Get", chord_pb2.GetRequest(key="a\nb"), "printable"),
    ("Delete", chord_pb2.DeleteRequest(key=""), "key must not be empty"),
    ("Route", chord_pb2.RouteRequest(target="not hex"), "not a hex number"),
])
def test_malformed_requests_get_invalid_argument(shared_lab, method, request_, fragment):
    node = _lone_peer(shared_lab)
    error = refused(getattr(chord_pb2_grpc.ChordStub(shared_lab.channel(node)), method),
                    request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()


def test_a_missing_key_is_not_found_and_a_deleted_one_is_gone(shared_lab):
    stub = chord_pb2_grpc.ChordStub(shared_lab.channel(_lone_peer(shared_lab)))
    assert refused(stub.Get, chord_pb2.GetRequest(key="nothing")).code() == \
        grpc.StatusCode.NOT_FOUND
    stub.Put(chord_pb2.PutRequest(key="gone", value=b"soon"), timeout=5)
    assert stub.Delete(chord_pb2.DeleteRequest(key="gone"), timeout=5).existed
    assert not stub.Delete(chord_pb2.DeleteRequest(key="gone"), timeout=5).existed
    assert refused(stub.Get, chord_pb2.GetRequest(key="gone")).code() == \
        grpc.StatusCode.NOT_FOUND


def _lone_peer(shared_lab) -> NodeServer:
    """One peer alone in its ring, shared by the tests that only send it requests."""
    if not shared_lab.nodes:
        node = shared_lab.start("chord-lone", spec=SPEC, CHORD_ID="1000", **FAST)
        stub = chord_pb2_grpc.ChordStub(shared_lab.channel(node))
        shared_lab.wait_until(lambda: stub.State(chord_pb2.StateRequest(), timeout=5).ring,
                              what="the lone peer's ring")
    return shared_lab.nodes[0]


def test_keys_move_to_the_peers_that_join(lab, peers):
    first_four = peers.start_ring(EIGHT_IDS[::2])
    peers.wait_for_ring()
    peers.put_all()
    for ident in EIGHT_IDS[1::2]:
        peers.start(ident, join=first_four[0])
    peers.wait_for_ring()
    lab.wait_until(lambda: all(peers.held_by(peers.owner_of(k), k) for k in KEYS),
                   what="every key at its new owner")
    moved = [k for k in KEYS if peers.owner_of(k) not in first_four]
    assert moved, "no key changed owner: choose other keys"
    assert peers.all_readable() is True
    assert peers.owners_agreed() is True


def test_distlab_chord_ring_prints_checks_and_draws_the_running_ring(lab, peers, monkeypatch,
                                                                      tmp_path):
    nodes = peers.start_ring(EIGHT_IDS[:3])
    peers.wait_for_ring()
    machines = [SimpleNamespace(name=f"chord-{i + 1}",
                                info=SimpleNamespace(role="chord", grpc_endpoint=lab.address(n)),
                                channel=partial(grpc.insecure_channel, lab.address(n)))
                for i, n in enumerate(nodes)]
    monkeypatch.setattr(cli, "Testbed", lambda: SimpleNamespace(machines=lambda: machines))
    png = tmp_path / "ring.png"
    result = CliRunner().invoke(cli.chord, ["ring", "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert f"one consistent ring of 3 peers (3 of 3 peers answered); drawn in {png}" \
        in result.output
    rows = [[cell.strip() for cell in line.split("│") if cell.strip()]
            for line in result.output.splitlines() if "│ chord-" in line]
    assert [row[:2] for row in rows] == [
        ["1000", "chord-1"], ["3000", "chord-2"], ["5000", "chord-3"]]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_distlab_chord_ring_marks_a_frozen_peer_and_answers_within_its_deadline(
        lab, peers, monkeypatch, tmp_path):
    nodes = peers.start_ring(EIGHT_IDS[:5])
    peers.wait_for_ring()
    # chord-3 holds every State call for a minute: to the host it is frozen, while its
    # peers (which never call State) keep it in the ring.
    lab.control(nodes[2]).AddFaultRule(control_pb2.FaultRule(
        action=control_pb2.FaultRule.DELAY, method="/distlab.chord.Chord/State",
        delay_seconds=60), timeout=5)
    machines = [SimpleNamespace(name=f"chord-{i + 1}",
                                info=SimpleNamespace(role="chord", grpc_endpoint=lab.address(n)),
                                channel=partial(grpc.insecure_channel, lab.address(n)))
                for i, n in enumerate(nodes)]
    monkeypatch.setattr(cli, "Testbed", lambda: SimpleNamespace(machines=lambda: machines))
    started = time.monotonic()
    result = CliRunner().invoke(cli.chord, ["ring", "--png", str(tmp_path / "ring.png")])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert elapsed < ringmap.OVERALL_TIMEOUT_SECONDS + 5, elapsed  # drawing the PNG included
    assert "did not answer: chord-3: no answer (DEADLINE_EXCEEDED)" in result.output
    assert "one consistent ring of 5 peers (4 of 5 peers answered)" in result.output
    rows = {cells[1]: cells for cells in
            ([cell.strip() for cell in line.split("│") if cell.strip()]
             for line in result.output.splitlines() if "│ chord-" in line)}
    assert rows["chord-3"][3:5] == ["?", "no answer"]
    assert rows["chord-2"][4].startswith("chord-3, chord-4")
