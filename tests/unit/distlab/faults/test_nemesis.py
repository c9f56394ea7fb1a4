"""Unit tests for distlab/faults/nemesis.py over a FakeRuntime: faults applied, journaled, healed.

The machines' iptables state is replayed from the commands the nemesis ran in them, so a test
can say "no DROP rule is left" the way a user would find out: packets still being dropped.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from distlab.errors import DistlabError, FaultError, UsageError
from distlab.faults import network
from distlab.faults.nemesis import FaultRecord, Journal, Nemesis
from nodes.rpc import control_pb2, control_pb2_grpc, kv_pb2, kv_pb2_grpc
from tests.unit.distlab.conftest import machine_info

IP = {"kv-1": "172.20.0.11", "kv-2": "172.20.0.12", "kv-3": "172.20.0.13",
      "prometheus-1": "172.20.0.2"}
ENSURE_CHAIN = network.ensure_chain_commands()
HEAL = network.heal_commands()


def drop(source: str) -> tuple[str, ...]:
    return ("-s", source, "-j", "DROP")


def rules_in_effect(runtime, container: str) -> list[tuple[str, ...]]:
    """The rules chain DISTLAB holds after every command the nemesis ran in `container`."""
    rules: list[tuple[str, ...]] = []
    for argv in runtime.execs_in(container, succeeded=True):
        if argv[:4] == ("iptables", "-w", "-A", network.CHAIN):
            rules.append(argv[4:])
        elif argv[:4] == ("iptables", "-w", "-D", network.CHAIN) and argv[4:] in rules:
            rules.remove(argv[4:])
        elif argv in HEAL:
            rules.clear()
    return rules


@pytest.fixture
def clock():
    ticks = itertools.count(1000)
    return lambda: float(next(ticks))


@pytest.fixture
def nemesis(kv_lab, machines_of, tmp_path, clock) -> Nemesis:
    return Nemesis(machines_of(kv_lab), Journal(tmp_path / "faults.json"), clock=clock)


# -- process faults ------------------------------------------------------------------------


def test_kill_is_a_sigkill_recorded_with_its_start_time(nemesis, kv_lab):
    record = nemesis.kill("kv-2")
    assert kv_lab.signals == [("distlab-kv-2", "SIGKILL")]
    assert kv_lab.state("distlab-kv-2") == "exited"
    assert (record.kind, record.machines, record.started, record.ended) == \
        ("kill", ["kv-2"], 1000.0, None)
    assert [r.id for r in nemesis.active()] == [record.id]


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_heal_starts_a_killed_or_stopped_machine_and_ends_the_record(nemesis, kv_lab, fault):
    getattr(nemesis, fault)("kv-2")
    assert kv_lab.state("distlab-kv-2") == "exited"
    assert nemesis.heal() == []
    assert kv_lab.state("distlab-kv-2") == "running"
    (record,) = nemesis.records()
    assert record.ended is not None and record.ended > record.started
    assert nemesis.active() == []


def test_pause_freezes_and_heal_resumes(nemesis, kv_lab):
    nemesis.pause("kv-3")
    assert kv_lab.state("distlab-kv-3") == "paused"
    assert nemesis.heal() == []
    assert kv_lab.state("distlab-kv-3") == "running"
    assert nemesis.active() == []


def test_chaos_start_and_resume_end_only_their_own_records(nemesis, kv_lab):
    nemesis.kill("kv-1")
    nemesis.pause("kv-2")
    nemesis.start("kv-1")
    assert kv_lab.state("distlab-kv-1") == "running"
    assert [r.kind for r in nemesis.active()] == ["pause"]
    nemesis.resume("kv-2")
    assert kv_lab.state("distlab-kv-2") == "running"
    assert nemesis.active() == []


def test_restart_is_recorded_as_already_over(nemesis, kv_lab):
    record = nemesis.restart("kv-1")
    assert record.ended == record.started
    assert nemesis.active() == []
    assert kv_lab.state("distlab-kv-1") == "running"


def test_an_unknown_machine_is_a_usage_error_listing_the_machines(nemesis, kv_lab):
    for fault in (lambda: nemesis.kill("kv-9"), lambda: nemesis.loss("kv-9", 0.5),
                  lambda: nemesis.partition("isolate", ["kv-1", "kv-9"], target="kv-1")):
        with pytest.raises(UsageError) as raised:
            fault()
        assert "'kv-9'" in str(raised.value)
        assert raised.value.hint == "machines: kv-1, kv-2, kv-3, prometheus-1"
    assert nemesis.records() == []
    assert kv_lab.execs == [] and kv_lab.signals == []


# -- network faults ------------------------------------------------------------------------


def test_isolate_drops_the_target_in_every_machine_and_everyone_in_the_target(nemesis, kv_lab):
    record = nemesis.partition("isolate", target="kv-1")
    assert kv_lab.execs_in("distlab-kv-1") == [
        *ENSURE_CHAIN,
        ("iptables", "-w", "-A", "DISTLAB", *drop(IP["kv-2"])),
        ("iptables", "-w", "-A", "DISTLAB", *drop(IP["kv-3"]))]
    for other in ("kv-2", "kv-3"):
        assert kv_lab.execs_in(f"distlab-{other}") == [
            *ENSURE_CHAIN, ("iptables", "-w", "-A", "DISTLAB", *drop(IP["kv-1"]))]
    assert record.kind == "partition" and record.active
    assert record.machines == ["kv-1", "kv-2", "kv-3"]
    assert record.params == {"shape": "isolate", "cut": ["kv-1-kv-2", "kv-1-kv-3"]}


def test_heal_undoes_a_partition_then_sweeps_every_running_lab_machine(nemesis, kv_lab):
    nemesis.partition("isolate", target="kv-1")
    applied = len(kv_lab.execs)
    assert nemesis.heal() == []
    healing = kv_lab.execs[applied:]
    undo = [(where, argv) for where, argv in healing if argv[:3] == ("iptables", "-w", "-D")]
    assert sorted(undo) == sorted([
        ("distlab-kv-1", ("iptables", "-w", "-D", "DISTLAB", *drop(IP["kv-2"]))),
        ("distlab-kv-1", ("iptables", "-w", "-D", "DISTLAB", *drop(IP["kv-3"]))),
        ("distlab-kv-2", ("iptables", "-w", "-D", "DISTLAB", *drop(IP["kv-1"]))),
        ("distlab-kv-3", ("iptables", "-w", "-D", "DISTLAB", *drop(IP["kv-1"])))])
    swept = [where for where, argv in healing if argv in HEAL]
    assert sorted(swept) == ["distlab-kv-1", "distlab-kv-2", "distlab-kv-3"]
    for name in ("kv-1", "kv-2", "kv-3"):
        assert rules_in_effect(kv_lab, f"distlab-{name}") == []
    assert nemesis.active() == []


@pytest.mark.parametrize("failing_in, failing_source", [
    ("distlab-kv-1", IP["kv-3"]),  # the second rule of the first machine's plan
    ("distlab-kv-3", IP["kv-1"]),  # the last machine, after two plans were applied
])
def test_a_partition_that_fails_midway_leaves_no_rule_behind(nemesis, kv_lab, failing_in,
                                                              failing_source):
    kv_lab.fail(failing_source, container=failing_in,
                output="iptables: No chain/target/match by that name.")
    with pytest.raises(FaultError) as raised:
        nemesis.partition("isolate", target="kv-1")
    assert "No chain/target/match by that name." in str(raised.value)
    for name in ("kv-1", "kv-2", "kv-3"):
        assert rules_in_effect(kv_lab, f"distlab-{name}") == [], name
    assert nemesis.records() == []


def test_the_common_machines_are_never_partitioned_nor_swept(nemesis, kv_lab):
    kv_lab.stop("distlab-prometheus-1", 0)
    nemesis.partition("halves", seed=1)
    assert nemesis.heal() == []
    assert kv_lab.execs_in("distlab-prometheus-1") == []
    assert kv_lab.state("distlab-prometheus-1") == "exited"
    assert all(IP["prometheus-1"] not in argv for _, argv in kv_lab.execs)


def test_heal_starts_lab_machines_the_journal_knows_nothing_about(nemesis, kv_lab):
    kv_lab.signal("distlab-kv-2", "SIGKILL")  # say, by hand, or before a crash of distlab
    kv_lab.pause("distlab-kv-3")
    assert nemesis.heal() == []
    assert [kv_lab.state(f"distlab-kv-{n}") for n in (1, 2, 3)] == ["running"] * 3
    assert sorted(w for w, argv in kv_lab.execs if argv in HEAL) == \
        ["distlab-kv-1", "distlab-kv-2", "distlab-kv-3"]


def test_heal_reports_a_machine_it_could_not_clean(nemesis, kv_lab):
    nemesis.partition("isolate", target="kv-1")
    kv_lab.fail("iptables -w -F", container="distlab-kv-2", output="iptables: Permission denied")
    problems = nemesis.heal()
    assert len(problems) == 1
    assert problems[0].startswith("kv-2: ") and "Permission denied" in problems[0]


def test_loss_adds_a_statistic_rule_and_heal_removes_it(nemesis, kv_lab):
    record = nemesis.loss("kv-2", 0.25)
    assert record.params == {"probability": 0.25}
    assert rules_in_effect(kv_lab, "distlab-kv-2") == [
        ("-m", "statistic", "--mode", "random", "--probability", "0.25", "-j", "DROP")]
    assert kv_lab.execs_in("distlab-kv-2")[:len(ENSURE_CHAIN)] == list(ENSURE_CHAIN)
    nemesis.heal()
    assert rules_in_effect(kv_lab, "distlab-kv-2") == []


def test_a_loss_probability_out_of_range_is_a_usage_error(nemesis, kv_lab):
    with pytest.raises(UsageError, match="probability"):
        nemesis.loss("kv-2", 5)
    assert kv_lab.execs == []


def test_bandwidth_replaces_the_root_qdisc_and_heal_deletes_it(nemesis, kv_lab):
    nemesis.bandwidth("kv-1", "1mbit")
    assert kv_lab.execs_in("distlab-kv-1") == [
        ("tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "1mbit",
         "burst", "32kbit", "latency", "400ms")]
    nemesis.heal()
    assert ("tc", "qdisc", "del", "dev", "eth0", "root") in kv_lab.execs_in("distlab-kv-1")


def test_delay_without_netem_suggests_an_rpc_level_delay(nemesis, kv_lab):
    kv_lab.fail("netem", container="distlab-kv-2", returncode=2,
                output="Error: Specified qdisc kind is unknown.")
    with pytest.raises(FaultError) as raised:
        nemesis.delay("kv-2", 100)
    assert "sch_netem" in str(raised.value)
    assert "RPC-level delay" in raised.value.hint
    assert "distlab chaos rpc kv-2 delay --seconds 0.1" in raised.value.hint
    assert nemesis.records() == []


def test_delay_failing_for_another_reason_says_that_reason(nemesis, kv_lab):
    kv_lab.fail("netem", output="RTNETLINK answers: Operation not permitted")
    with pytest.raises(FaultError, match="Operation not permitted") as raised:
        nemesis.delay("kv-2", 100)
    assert "RPC-level" not in raised.value.hint


def test_the_journal_lets_another_process_heal_what_chaos_did(kv_lab, machines_of, tmp_path):
    journal = tmp_path / ".distlab" / "faults.json"
    chaos = Nemesis(machines_of(kv_lab), Journal(journal))
    chaos.kill("kv-3")
    chaos.partition("isolate", ["kv-1", "kv-2"], target="kv-1")

    later = Nemesis(machines_of(kv_lab), Journal(journal))
    assert [(r.kind, r.machines) for r in later.active()] == \
        [("kill", ["kv-3"]), ("partition", ["kv-1", "kv-2"])]
    assert later.heal() == []
    assert kv_lab.state("distlab-kv-3") == "running"
    assert rules_in_effect(kv_lab, "distlab-kv-1") == []
    assert rules_in_effect(kv_lab, "distlab-kv-2") == []
    assert Nemesis(machines_of(kv_lab), Journal(journal)).active() == []
    assert len(Nemesis(machines_of(kv_lab), Journal(journal)).records()) == 2



def _append_records(path: str, writer: str, count: int) -> None:
    """One process's share of the concurrent-writers test: `count` load-modify-saves."""
    journal = Journal(Path(path))
    for n in range(count):
        with journal.update() as records:
            records.append(FaultRecord(id=f"{writer}-{n}", kind="restart", machines=[],
                                       params={}, started=float(n)))


def test_two_processes_appending_at_once_lose_no_record(tmp_path):
    path = tmp_path / ".distlab" / "faults.json"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_records, args=(str(path), name, 200))
               for name in ("chaos", "scenario")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    assert [writer.exitcode for writer in writers] == [0, 0]
    records = Journal(path).load()
    assert len(records) == 400 and len({r.id for r in records}) == 400
    assert sorted(p.name for p in path.parent.iterdir()) == ["faults.json", "faults.json.lock"]


def test_two_nemeses_recording_at_once_lose_no_fault_and_reuse_no_id(kv_lab, machines_of,
                                                                     tmp_path):
    path = tmp_path / "faults.json"
    nemeses = [Nemesis(machines_of(kv_lab), Journal(path)) for _ in range(2)]
    threads = [threading.Thread(target=lambda n=n: [n.restart("kv-1") for _ in range(200)])
               for n in nemeses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = Journal(path).load()
    assert len(records) == 400 and len({r.id for r in records}) == 400


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"id": "f1"}', "\xff\xfe"])
def test_a_corrupt_journal_is_kept_aside_reported_and_heal_still_sweeps(
        nemesis, kv_lab, tmp_path, damage):
    journal = tmp_path / "faults.json"
    nemesis.pause("kv-3")
    journal.write_bytes(damage.encode("latin-1"))
    kv_lab.signal("distlab-kv-2", "SIGKILL")

    problems = nemesis.heal()
    assert [kv_lab.state(f"distlab-kv-{n}") for n in (1, 2, 3)] == ["running"] * 3
    assert sorted(w for w, argv in kv_lab.execs if argv in HEAL) == \
        ["distlab-kv-1", "distlab-kv-2", "distlab-kv-3"]
    (problem,) = problems
    (copy,) = tmp_path.glob("faults.json.corrupt-*")
    assert "unreadable" in problem and str(copy) in problem
    assert copy.read_bytes() == damage.encode("latin-1")
    assert nemesis.records() == [] and nemesis.heal() == []  # reported once; usable again
    assert nemesis.kill("kv-1").id == "f1-kill"


def test_a_heal_keeps_a_fault_recorded_while_it_ran(nemesis, kv_lab, machines_of, tmp_path):
    nemesis.pause("kv-3")
    other = Nemesis(machines_of(kv_lab), Journal(tmp_path / "faults.json"))
    unpause = kv_lab.unpause

    def unpause_while_another_process_records(container):
        other.kill("kv-1")  # recorded after this heal loaded the journal
        unpause(container)

    kv_lab.unpause = unpause_while_another_process_records
    nemesis.heal()
    kinds = {r.kind: r.active for r in nemesis.records()}
    assert kinds == {"pause": False, "kill": True}

# -- RPC-level faults, against a real node served in this process ----------------------------


def test_an_unknown_rpc_action_is_a_usage_error_before_any_call(nemesis):
    with pytest.raises(UsageError, match="'explode'"):
        nemesis.rpc("kv-1", "explode")
    assert nemesis.records() == []


@pytest.fixture
def live_kv(tmp_path, make_info, make_runtime):
    """kv-1 a real node (gRPC on 127.0.0.1) with a lab credential, kv-2 a fake one: a runtime
    as the nemesis sees it, and the credential its machines present."""
    from nodes.common.auth import Credential, with_credential
    from nodes.common.server import NodeServer
    from nodes.kv.__main__ import SPEC

    credential = Credential.generate()
    credential.write(tmp_path / "credential")
    node = NodeServer(SPEC, {"NODE_NAME": "kv-1", "GRPC_PORT": "0", "METRICS_PORT": "0",
                             "DATA_DIR": str(tmp_path / "kv-1"), "LOG_LEVEL": "warning",
                             "CREDENTIAL_FILE": str(tmp_path / "credential")})
    node.start()
    runtime = make_runtime([make_info("kv-1", grpc_endpoint=f"127.0.0.1:{node.grpc_port}"),
                            make_info("kv-2")])
    channel = with_credential(grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}"), credential)
    try:
        yield node, runtime, channel, credential
    finally:
        channel.close()
        node.stop(grace=0)


def test_an_rpc_fault_is_a_rule_on_the_node_until_heal(live_kv, machines_of, tmp_path):
    node, runtime, channel, credential = live_kv
    nemesis = Nemesis(machines_of(runtime, credential), Journal(tmp_path / "faults.json"))
    control = control_pb2_grpc.ControlStub(channel)
    kv = kv_pb2_grpc.KVStub(channel)

    record = nemesis.rpc("kv-1", "error", method="/distlab.kv.KV/Get")
    (rule,) = control.ListFaultRules(control_pb2.ListFaultRulesRequest(), timeout=5).rules
    assert rule.rule.method == "/distlab.kv.KV/Get"
    assert record.undo == [["rpc-clear", "kv-1", rule.rule_id]]
    with pytest.raises(grpc.RpcError) as raised:
        kv.Get(kv_pb2.GetRequest(key="k"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

    assert nemesis.heal() == []
    assert control.ListFaultRules(control_pb2.ListFaultRulesRequest(), timeout=5).rules == []
    with pytest.raises(grpc.RpcError) as raised:
        kv.Get(kv_pb2.GetRequest(key="k"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # served again: no such key
    assert nemesis.active() == []


def test_a_rule_the_node_refuses_is_a_usage_error(live_kv, machines_of, tmp_path):
    _, runtime, channel, credential = live_kv
    nemesis = Nemesis(machines_of(runtime, credential), Journal(tmp_path / "faults.json"))
    with pytest.raises(UsageError, match="kv-1 refused the rule"):
        nemesis.rpc("kv-1", "error", probability=5)
    assert nemesis.records() == []
    control = control_pb2_grpc.ControlStub(channel)
    assert control.ListFaultRules(control_pb2.ListFaultRulesRequest(), timeout=5).rules == []


def test_a_node_full_of_rules_refuses_one_more_with_its_cap_and_a_hint(live_kv, machines_of,
                                                                         tmp_path):
    from nodes.common.faults import MAX_RULES

    _, runtime, channel, credential = live_kv
    nemesis = Nemesis(machines_of(runtime, credential), Journal(tmp_path / "faults.json"))
    for _ in range(MAX_RULES):
        nemesis.rpc("kv-1", "error", method="/distlab.kv.KV/Get")
    with pytest.raises(UsageError) as refused:
        nemesis.rpc("kv-1", "error", method="/distlab.kv.KV/Get")
    assert f"kv-1 refused the rule: {MAX_RULES} fault rules are in force" in str(refused.value)
    assert "distlab heal" in refused.value.hint
    assert len(nemesis.active()) == MAX_RULES  # the refused rule is not recorded
    control = control_pb2_grpc.ControlStub(channel)
    assert len(control.ListFaultRules(control_pb2.ListFaultRulesRequest(), timeout=5).rules) \
        == MAX_RULES
    assert nemesis.heal() == []
    assert control.ListFaultRules(control_pb2.ListFaultRulesRequest(), timeout=5).rules == []


def test_network_faults_are_marked_on_the_node_while_active(live_kv, machines_of, tmp_path):
    node, runtime, _, credential = live_kv
    nemesis = Nemesis(machines_of(runtime, credential), Journal(tmp_path / "faults.json"))

    def partitions_marked() -> float | None:
        return node.registry.get_sample_value("distlab_fault_active", {"kind": "partition"})

    nemesis.partition("isolate", target="kv-1")
    assert partitions_marked() == 1
    nemesis.heal()
    assert partitions_marked() == 0


def test_an_rpc_fault_on_a_machine_without_endpoint_fails_with_a_hint(nemesis):
    with pytest.raises(DistlabError) as raised:
        nemesis.rpc("kv-1", "delay", seconds=1)
    assert "no gRPC endpoint" in str(raised.value)
    assert raised.value.hint
    assert nemesis.records() == []


def test_the_journal_keeps_every_active_fault_and_only_the_newest_ended_ones(
        kv_lab, machines_of, tmp_path):
    journal = Journal(tmp_path / "bounded.json", keep_ended=5)
    bounded = Nemesis(machines_of(kv_lab), journal)
    paused = bounded.pause("kv-3")  # active all along: never dropped
    restarts = [bounded.restart("kv-1") for _ in range(12)]
    records = journal.load()
    assert [r.id for r in records] == [paused.id, *(r.id for r in restarts[-5:])]
    # Ids go on past the dropped ones: the next fault is not a reused id.
    assert bounded.restart("kv-1").id == "f14-restart"
    bounded.heal()
    assert [r.id for r in journal.load() if r.active] == []
    assert len(journal.load()) == 5


def test_an_ephemeral_machine_killed_stays_down_and_heal_neither_starts_nor_scrubs_it(
        kv_lab, machines_of, tmp_path, clock):
    """A serverless instance: its lab replaces it, so nothing must start it again."""
    instance = replace(machine_info("fn-ab12-1", role="serverless-instance"), ephemeral=True)
    kv_lab.infos[instance.container] = instance
    nemesis = Nemesis(machines_of(kv_lab), Journal(tmp_path / "faults.json"), clock=clock)
    record = nemesis.kill("fn-ab12-1")
    assert record.undo == []
    assert nemesis.heal() == []
    assert kv_lab.state("distlab-fn-ab12-1") == "exited"
    assert kv_lab.execs_in(instance.container) == []
