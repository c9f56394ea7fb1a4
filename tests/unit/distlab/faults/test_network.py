"""Unit tests for distlab/faults/network.py: partition shapes, and the commands in their plans.

The shell scripts (`ensure_chain_commands`, `heal_commands`) run against fake `iptables` and
`tc` executables put first on PATH, so nothing touches the host's network.
"""

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.faults.network import (
    CHAIN,
    SHAPES,
    NetworkFaultError,
    Plan,
    bandwidth_plan,
    delay_plan,
    ensure_chain_commands,
    heal_commands,
    loss_plan,
    partition,
    partition_plans,
    reachable,
)

# --- helpers -----------------------------------------------------------------------------------

machine_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6)


def machine_lists(min_size: int = 2, max_size: int = 9) -> st.SearchStrategy[list[str]]:
    return st.lists(machine_names, min_size=min_size, max_size=max_size, unique=True)


def min_machines(shape: str) -> int:
    return 3 if shape in ("majorities-ring", "bridge") else 2


def sees(grudge: dict[str, frozenset[str]], machine: str) -> frozenset[str]:
    """The machines `machine` can exchange packets with, itself included."""
    return frozenset(other for other in grudge if reachable(grudge, machine, other))


def components(grudge: dict[str, frozenset[str]]) -> list[frozenset[str]]:
    """Connected components of the reachability graph."""
    left = set(grudge)
    found = []
    while left:
        todo = [left.pop()]
        component = set(todo)
        while todo:
            for other in sees(grudge, todo.pop()) - component:
                component.add(other)
                todo.append(other)
        left -= component
        found.append(frozenset(component))
    return found


@st.composite
def shape_calls(draw: st.DrawFn) -> tuple[str, list[str], dict]:
    """A valid (shape, machines, keyword arguments) triple for `partition`."""
    shape = draw(st.sampled_from(SHAPES))
    machines = draw(machine_lists(min_size=min_machines(shape)))
    kwargs: dict = {}
    if draw(st.booleans()):
        kwargs["rng"] = random.Random(draw(st.integers(0, 2**32)))
    if shape == "isolate" and ("rng" not in kwargs or draw(st.booleans())):
        kwargs["target"] = draw(st.sampled_from(machines))
    if shape == "groups":
        # Label each machine with a group number; label 0 means "in no group", the leftovers.
        labels = draw(st.lists(st.integers(0, 3), min_size=len(machines), max_size=len(machines)))
        groups = [[m for m, label in zip(machines, labels, strict=True) if label == g]
                  for g in (1, 2, 3)]
        groups = [group for group in groups if group]
        leftovers = [m for m, label in zip(machines, labels, strict=True) if label == 0]
        if len(groups) + (1 if leftovers else 0) < 2:
            groups = [machines[:1]]  # at least two groups: the first machine against the rest
        kwargs["groups"] = groups
    return shape, machines, kwargs


# --- properties of every shape -----------------------------------------------------------------


@settings(max_examples=300)
@given(shape_calls())
def test_every_shape_is_symmetric_complete_and_never_drops_itself(call):
    shape, machines, kwargs = call
    grudge = partition(shape, machines, **kwargs)

    assert list(grudge) == machines
    for machine, drops in grudge.items():
        assert machine not in drops
        assert drops <= set(machines)
        for other in drops:
            assert machine in grudge[other], f"{machine} drops {other} but not the other way"
    # A partition that cuts nothing would be a silent no-op fault.
    assert any(grudge.values())


@given(shape_calls(), st.integers(0, 2**32))
def test_the_same_seed_gives_the_same_grudge(call, seed):
    shape, machines, kwargs = call
    kwargs.pop("rng", None)
    first = partition(shape, machines, rng=random.Random(seed), **kwargs)
    again = partition(shape, machines, rng=random.Random(seed), **kwargs)
    assert first == again


def test_the_rng_actually_varies_the_partition():
    machines = [f"n{i}" for i in range(1, 8)]
    for shape in ("isolate", "halves", "majorities-ring", "bridge"):
        grudges = {
            tuple(sorted(partition(shape, machines, rng=random.Random(seed)).items()))
            for seed in range(20)
        }
        assert len(grudges) > 1, shape


# --- isolate -----------------------------------------------------------------------------------


@given(machine_lists(), st.data())
def test_isolate_cuts_exactly_the_target(machines, data):
    target = data.draw(st.sampled_from(machines))
    grudge = partition("isolate", machines, target=target)
    rest = [m for m in machines if m != target]

    assert grudge[target] == frozenset(rest)
    assert sees(grudge, target) == {target}
    for machine in rest:
        assert sees(grudge, machine) == frozenset(rest)


def test_isolate_picks_its_target_with_the_rng_when_none_is_given():
    machines = ["n1", "n2", "n3", "n4"]
    expected = random.Random(7).choice(machines)
    grudge = partition("isolate", machines, rng=random.Random(7))
    assert sees(grudge, expected) == {expected}


def test_isolate_needs_a_known_target_or_an_rng():
    with pytest.raises(NetworkFaultError, match=r"target= .* or rng="):
        partition("isolate", ["n1", "n2"])
    with pytest.raises(NetworkFaultError, match=r"'n9' is not one of the machines"):
        partition("isolate", ["n1", "n2"], target="n9")


# --- halves ------------------------------------------------------------------------------------


@given(machine_lists(), st.one_of(st.none(), st.integers(0, 2**32)))
def test_halves_makes_two_components_of_floor_and_ceil_size(machines, seed):
    rng = None if seed is None else random.Random(seed)
    grudge = partition("halves", machines, rng=rng)
    n = len(machines)

    parts = components(grudge)
    assert sorted(len(part) for part in parts) == [n // 2, n - n // 2]
    # Complete cut: inside a half everybody talks, across halves nobody does.
    for part in parts:
        for machine in part:
            assert sees(grudge, machine) == part


def test_halves_without_rng_keeps_the_order_smaller_half_first():
    grudge = partition("halves", ["a", "b", "c", "d", "e"])
    assert sees(grudge, "a") == {"a", "b"}
    assert sees(grudge, "e") == {"c", "d", "e"}


# --- majorities-ring ---------------------------------------------------------------------------


def check_majorities_ring(machines: list[str], grudge: dict[str, frozenset[str]]) -> None:
    n = len(machines)
    visible = {machine: sees(grudge, machine) for machine in machines}
    for machine, seen in visible.items():
        assert len(seen) > n / 2, f"{machine} sees only {sorted(seen)} of {n}"
    assert len(set(visible.values())) == n, "two machines see the same majority"
    # Minimal, as Jepsen's: exactly a majority, except one machine when n = 2k+1 with k odd.
    oversized = [m for m, seen in visible.items() if len(seen) > n // 2 + 1]
    assert len(oversized) == (1 if n % 2 == 1 and (n // 2) % 2 == 1 else 0)
    assert all(len(seen) == n // 2 + 2 for m, seen in visible.items() if m in oversized)


@given(machine_lists(min_size=3), st.one_of(st.none(), st.integers(0, 2**32)))
def test_majorities_ring_every_machine_sees_its_own_strict_majority(machines, seed):
    rng = None if seed is None else random.Random(seed)
    check_majorities_ring(machines, partition("majorities-ring", machines, rng=rng))


@pytest.mark.parametrize("n", range(3, 41))
def test_majorities_ring_holds_for_every_size_up_to_40(n):
    machines = [f"n{i}" for i in range(n)]
    grudge = partition("majorities-ring", machines)
    check_majorities_ring(machines, grudge)
    for machine, drops in grudge.items():
        assert all(machine in grudge[other] for other in drops)


def test_majorities_ring_of_3_is_a_line_through_the_first_machine():
    # Jepsen's 3-node ring is a one-way cycle (a drops b, b drops c, c drops a), in which no
    # pair can exchange packets. The only symmetric answer is a line: the first machine in ring
    # order talks to both others, which each see a majority of 2 and not the same one.
    grudge = partition("majorities-ring", ["a", "b", "c"])
    assert grudge == {"a": frozenset(), "b": frozenset({"c"}), "c": frozenset({"b"})}


def test_majorities_ring_of_5_sees_one_neighbour_on_each_side_like_jepsen():
    grudge = partition("majorities-ring", ["a", "b", "c", "d", "e"])
    assert sees(grudge, "a") == {"e", "a", "b"}
    assert sees(grudge, "c") == {"b", "c", "d"}


def test_majorities_ring_needs_3_machines():
    with pytest.raises(NetworkFaultError, match="at least 3 machines"):
        partition("majorities-ring", ["a", "b"])


# --- bridge ------------------------------------------------------------------------------------


@given(machine_lists(min_size=3), st.one_of(st.none(), st.integers(0, 2**32)))
def test_bridge_reaches_both_sides_which_cannot_reach_each_other(machines, seed):
    rng = None if seed is None else random.Random(seed)
    grudge = partition("bridge", machines, rng=rng)

    bridges = [m for m in machines if sees(grudge, m) == set(machines)]
    assert len(bridges) == 1
    bridge = bridges[0]
    sides = {sees(grudge, m) - {bridge} for m in machines if m != bridge}
    assert len(sides) == 2
    left, right = sides
    assert not left & right and left | right | {bridge} == set(machines)
    assert abs(len(left) - len(right)) <= 1
    for a in left:
        for b in right:
            assert not reachable(grudge, a, b)


def test_bridge_without_rng_is_the_first_machine_of_the_second_half():
    grudge = partition("bridge", ["a", "b", "c", "d", "e"])
    assert sees(grudge, "c") == {"a", "b", "c", "d", "e"}
    assert sees(grudge, "a") == {"a", "b", "c"}
    assert sees(grudge, "e") == {"c", "d", "e"}


def test_bridge_needs_3_machines():
    with pytest.raises(NetworkFaultError, match="at least 3 machines"):
        partition("bridge", ["a", "b"])


# --- groups ------------------------------------------------------------------------------------


def test_groups_cut_each_group_from_the_others_and_leftovers_form_one_more():
    machines = ["a", "b", "c", "d", "e", "f"]
    grudge = partition("groups", machines, groups=[["a", "b"], ["c"]])
    assert sorted(sorted(part) for part in components(grudge)) == [
        ["a", "b"],
        ["c"],
        ["d", "e", "f"],
    ]
    assert sees(grudge, "d") == {"d", "e", "f"}


def test_groups_covering_every_machine_add_no_extra_group():
    grudge = partition("groups", ["a", "b", "c"], groups=[["a"], ["b", "c"]])
    assert sorted(sorted(part) for part in components(grudge)) == [["a"], ["b", "c"]]


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (None, r"needs groups="),
        ([["a"], ["x", "y"]], r"group 1 names unknown machines \['x', 'y'\]; known machines"),
        ([["a", "b"], ["b"]], r"'b' in group 1 is also in group 0; groups must be disjoint"),
        ([["a", "a"]], r"'a' in group 0 is twice"),
        ([["a"], []], r"group 1 is empty"),
        ([["a", "b", "c"]], r"at least 2 groups .* single group \['a', 'b', 'c'\]"),
        ([], r"at least 2 groups"),
        (["ab", "c"], r"group 0 must be a list of machine names, not the string 'ab'"),
    ],
)
def test_groups_validation_says_what_is_wrong(groups, message):
    with pytest.raises(NetworkFaultError, match=message):
        partition("groups", ["a", "b", "c"], groups=groups)


# --- arguments common to every shape -----------------------------------------------------------


def test_unknown_shape_names_the_allowed_shapes():
    with pytest.raises(NetworkFaultError) as error:
        partition("split-brain", ["a", "b"])
    assert "'split-brain'" in str(error.value)
    for shape in SHAPES:
        assert shape in str(error.value)


@pytest.mark.parametrize(
    ("machines", "message"),
    [
        (["a"], r"at least 2 machines, got 1"),
        ([], r"at least 2 machines, got 0"),
        (["a", "b", "a"], r"unique; repeated: \['a'\]"),
        (["a", ""], r"non-empty strings"),
        ("abc", r"not the string 'abc'"),
    ],
)
def test_bad_machine_lists_are_refused(machines, message):
    with pytest.raises(NetworkFaultError, match=message):
        partition("halves", machines)


def test_arguments_of_another_shape_are_refused_rather_than_ignored():
    with pytest.raises(NetworkFaultError, match="target= only applies to shape 'isolate'"):
        partition("halves", ["a", "b"], target="a")
    with pytest.raises(NetworkFaultError, match="groups= only applies to shape 'groups'"):
        partition("isolate", ["a", "b"], target="a", groups=[["a"]])


def test_reachable_is_true_for_itself_and_refuses_unknown_machines():
    grudge = partition("isolate", ["a", "b", "c"], target="a")
    assert reachable(grudge, "a", "a")
    assert reachable(grudge, "b", "c")
    assert not reachable(grudge, "a", "b")
    with pytest.raises(NetworkFaultError, match="'z' is not in the grudge"):
        reachable(grudge, "a", "z")


# --- partition_plans ---------------------------------------------------------------------------


def test_partition_plans_drop_every_address_of_every_dropped_machine():
    grudge = partition("isolate", ["n1", "n2", "n3"], target="n1")
    addresses = {"n1": ["10.0.0.1", "10.1.0.1"], "n2": ["10.0.0.2"], "n3": ["10.0.0.3"]}
    plans = {plan.machine: plan for plan in partition_plans(grudge, addresses)}

    assert plans["n1"].apply == (
        ("iptables", "-w", "-A", "DISTLAB", "-s", "10.0.0.2", "-j", "DROP"),
        ("iptables", "-w", "-A", "DISTLAB", "-s", "10.0.0.3", "-j", "DROP"),
    )
    assert plans["n2"].apply == (
        ("iptables", "-w", "-A", "DISTLAB", "-s", "10.0.0.1", "-j", "DROP"),
        ("iptables", "-w", "-A", "DISTLAB", "-s", "10.1.0.1", "-j", "DROP"),
    )
    assert plans["n2"].undo == (
        ("iptables", "-w", "-D", "DISTLAB", "-s", "10.1.0.1", "-j", "DROP"),
        ("iptables", "-w", "-D", "DISTLAB", "-s", "10.0.0.1", "-j", "DROP"),
    )


@given(shape_calls(), st.data())
def test_partition_plans_undo_exactly_what_they_apply(call, data):
    shape, machines, kwargs = call
    grudge = partition(shape, machines, **kwargs)
    networks = data.draw(st.integers(1, 3))
    addresses = {
        machine: [f"10.{net}.{i // 250}.{i % 250 + 2}" for net in range(networks)]
        for i, machine in enumerate(machines)
    }
    plans = partition_plans(grudge, addresses)

    assert {plan.machine for plan in plans} == {m for m, drops in grudge.items() if drops}
    for plan in plans:
        assert all(argv[:4] == ("iptables", "-w", "-A", CHAIN) for argv in plan.apply)
        assert sorted(plan.undo) == sorted(
            (*argv[:2], "-D", *argv[3:]) for argv in plan.apply
        )
        dropped_sources = sorted(argv[5] for argv in plan.apply)
        assert dropped_sources == sorted(
            address for peer in grudge[plan.machine] for address in addresses[peer]
        )


def test_machines_that_drop_nothing_get_no_plan():
    grudge = partition("bridge", ["a", "b", "c"])
    plans = partition_plans(grudge, {"a": ["10.0.0.1"], "b": ["10.0.0.2"], "c": ["10.0.0.3"]})
    assert sorted(plan.machine for plan in plans) == ["a", "c"]


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        ({"a": ["10.0.0.1"]}, r"no addresses given for machines \['b'\]"),
        ({"a": ["10.0.0.1"], "b": []}, r"'b' has no addresses, so 'a' cannot drop"),
        ({"a": ["10.0.0.1"], "b": "10.0.0.2"}, r"list of IPv4 addresses, not '10.0.0.2'"),
        ({"a": ["10.0.0.1"], "b": ["10.0.0.0/24"]}, r"'10.0.0.0/24' is not an IPv4 address"),
        ({"a": ["10.0.0.1"], "b": ["fd00::2"]}, r"'fd00::2' is not an IPv4 address"),
    ],
)
def test_partition_plans_refuse_missing_or_bad_addresses(addresses, message):
    grudge = partition("halves", ["a", "b"])
    with pytest.raises(NetworkFaultError, match=message):
        partition_plans(grudge, addresses)


def test_partition_plans_refuse_a_grudge_against_oneself():
    with pytest.raises(NetworkFaultError, match="'a' would drop its own packets"):
        partition_plans({"a": frozenset({"a"})}, {"a": ["10.0.0.1"]})


# --- loss, bandwidth, delay --------------------------------------------------------------------


def test_loss_plan_drops_randomly_from_everyone_or_from_each_source():
    statistic = ("-m", "statistic", "--mode", "random", "--probability", "0.25", "-j", "DROP")
    assert loss_plan("n1", 0.25) == Plan(
        machine="n1",
        apply=(("iptables", "-w", "-A", "DISTLAB", *statistic),),
        undo=(("iptables", "-w", "-D", "DISTLAB", *statistic),),
    )
    plan = loss_plan("n1", 0.25, sources=["10.0.0.2", "10.0.0.3"])
    assert plan.apply == (
        ("iptables", "-w", "-A", "DISTLAB", "-s", "10.0.0.2", *statistic),
        ("iptables", "-w", "-A", "DISTLAB", "-s", "10.0.0.3", *statistic),
    )
    assert sorted(plan.undo) == sorted((*a[:2], "-D", *a[3:]) for a in plan.apply)


@pytest.mark.parametrize(
    ("probability", "text"),
    [(1, "1"), (1.0, "1"), (0.5, "0.5"), (0.1, "0.1"), (0.1234567, "0.123457"), (1e-6, "0.000001")],
)
def test_loss_probability_is_written_with_at_most_6_decimals(probability, text):
    assert loss_plan("n1", probability).apply[0][-3] == text


@pytest.mark.parametrize("probability", [0, -0.1, 1.01, 1e-7, float("nan"), float("inf"), True])
def test_loss_probability_outside_0_1_is_refused(probability):
    with pytest.raises(NetworkFaultError, match="loss probability must"):
        loss_plan("n1", probability)


def test_loss_sources_must_be_ipv4_addresses():
    with pytest.raises(NetworkFaultError, match="'n2' is not an IPv4 address"):
        loss_plan("n1", 0.5, sources=["n2"])


def test_bandwidth_plan_replaces_the_root_qdisc_with_tbf():
    assert bandwidth_plan("n1", "1mbit") == Plan(
        machine="n1",
        apply=(("tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                "rate", "1mbit", "burst", "32kbit", "latency", "400ms"),),
        undo=(("tc", "qdisc", "del", "dev", "eth0", "root"),),
    )
    plan = bandwidth_plan("n1", "2.5mbps", interface="eth1", burst="64kb", latency="50ms")
    assert plan.apply[0][4] == "eth1" and plan.undo[0][4] == "eth1"
    assert plan.apply[0][7:] == ("rate", "2.5mbps", "burst", "64kb", "latency", "50ms")


@pytest.mark.parametrize("rate", ["1mbit", "500kbit", "10mbps", "1gbit", "800bit", "1.5gbps"])
def test_bandwidth_accepts_tc_rates(rate):
    assert bandwidth_plan("n1", rate).apply[0][8] == rate


@pytest.mark.parametrize(
    "rate", ["fast", "1", "1 mbit", "1mb", "mbit", "-1mbit", "0mbit", "1.mbit", "1MBIT"]
)
def test_bandwidth_refuses_what_tc_would_not_read_as_a_rate(rate):
    with pytest.raises(NetworkFaultError, match="rate must be"):
        bandwidth_plan("n1", rate)


def test_bandwidth_refuses_bad_burst_latency_and_interface():
    with pytest.raises(NetworkFaultError, match="burst must be"):
        bandwidth_plan("n1", "1mbit", burst="lots")
    with pytest.raises(NetworkFaultError, match="latency must be"):
        bandwidth_plan("n1", "1mbit", latency="400")
    with pytest.raises(NetworkFaultError, match="interface must be"):
        bandwidth_plan("n1", "1mbit", interface="eth0; reboot")


def test_delay_plan_uses_netem_with_optional_jitter():
    assert delay_plan("n1", 100).apply == (
        ("tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "100ms"),
    )
    assert delay_plan("n1", 50.5, jitter_ms=10, interface="eth1").apply == (
        ("tc", "qdisc", "replace", "dev", "eth1", "root", "netem", "delay", "50.5ms", "10ms"),
    )
    assert delay_plan("n1", 100).undo == (("tc", "qdisc", "del", "dev", "eth0", "root"),)


@pytest.mark.parametrize(
    ("delay_ms", "jitter_ms", "message"),
    [
        (0, 0, "delay_ms must be greater than zero"),
        (-5, 0, "delay_ms must be greater than zero"),
        (float("nan"), 0, "delay_ms must be finite"),
        ("100", 0, "delay_ms must be a number"),
        (100, -1, "jitter_ms must be >= 0"),
        (100, float("inf"), "jitter_ms must be finite"),
    ],
)
def test_delay_plan_refuses_bad_values(delay_ms, jitter_ms, message):
    with pytest.raises(NetworkFaultError, match=message):
        delay_plan("n1", delay_ms, jitter_ms=jitter_ms)


# --- the shell scripts, run against fake iptables and tc ---------------------------------------

FAKE_IPTABLES = """#!/bin/sh
echo "iptables $*" >> "$FAKE_STATE/log"
[ -e "$FAKE_STATE/broken" ] && { echo "iptables: Permission denied" >&2; exit 4; }
[ "$1" = "-w" ] || { echo "called without -w" >&2; exit 2; }
shift
eval last=\\${$#}
case "$1" in
  -N) [ -e "$FAKE_STATE/chain-$2" ] && exit 1; touch "$FAKE_STATE/chain-$2" ;;
  -S) [ -e "$FAKE_STATE/chain-$2" ] ;;
  -F) [ -e "$FAKE_STATE/chain-$2" ] && [ ! -e "$FAKE_STATE/flush-fails" ] \
        && rm -f "$FAKE_STATE/rules-$2" ;;
  -C) [ -e "$FAKE_STATE/jump-$2" ] ;;
  -I) [ -e "$FAKE_STATE/chain-$last" ] && touch "$FAKE_STATE/jump-$2" ;;
  *) exit 2 ;;
esac
"""

FAKE_TC = """#!/bin/sh
echo "tc $*" >> "$FAKE_STATE/log"
[ -e "$FAKE_STATE/qdisc-$4" ] || { echo "Error: Cannot delete qdisc." >&2; exit 2; }
rm "$FAKE_STATE/qdisc-$4"
"""


@pytest.fixture
def fake_machine(tmp_path: Path):
    """Run an argv as if inside a machine whose iptables and tc are fakes keeping state in files."""
    if shutil.which("sh") is None:
        pytest.skip("no sh on this host")
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("iptables", FAKE_IPTABLES), ("tc", FAKE_TC)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)

    def run(argv: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_STATE": str(state)}
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)

    run.state = state
    return run


def test_ensure_chain_is_one_sh_argv_and_runs_iptables_with_w():
    (argv,) = ensure_chain_commands()
    assert argv[:2] == ("sh", "-c")
    for line in argv[2].splitlines():
        for command in line.split("||"):
            if "iptables" in command:
                assert command.strip().startswith("iptables -w ")


def test_ensure_chain_creates_the_chain_and_its_jump_once(fake_machine):
    for _ in range(3):
        for argv in ensure_chain_commands():
            result = fake_machine(argv)
            assert result.returncode == 0, result.stderr
    state = fake_machine.state
    assert (state / "chain-DISTLAB").exists()
    assert (state / "jump-INPUT").exists() and not (state / "jump-OUTPUT").exists()
    log = (state / "log").read_text().splitlines()
    assert log.count("iptables -w -I INPUT 1 ! -i lo -j DISTLAB") == 1


def test_ensure_chain_fails_loudly_when_iptables_does_not_work(fake_machine):
    (fake_machine.state / "broken").touch()
    (argv,) = ensure_chain_commands()
    assert fake_machine(argv).returncode != 0


def test_heal_exits_0_when_nothing_was_applied(fake_machine):
    (argv,) = heal_commands()
    result = fake_machine(argv)
    assert result.returncode == 0, result.stderr
    assert "iptables -w -F DISTLAB" not in (fake_machine.state / "log").read_text()


def test_heal_flushes_the_chain_and_deletes_the_root_qdisc(fake_machine):
    (fake_machine.state / "chain-DISTLAB").touch()
    (fake_machine.state / "rules-DISTLAB").touch()
    (fake_machine.state / "qdisc-eth1").touch()
    (argv,) = heal_commands("eth1")
    result = fake_machine(argv)
    assert result.returncode == 0, result.stderr
    assert not (fake_machine.state / "rules-DISTLAB").exists()
    assert not (fake_machine.state / "qdisc-eth1").exists()


def test_heal_fails_when_the_chain_exists_but_cannot_be_flushed(fake_machine):
    (fake_machine.state / "chain-DISTLAB").touch()
    (fake_machine.state / "flush-fails").touch()
    (fake_machine.state / "qdisc-eth0").touch()
    (argv,) = heal_commands()
    assert fake_machine(argv).returncode == 1
    assert not (fake_machine.state / "qdisc-eth0").exists(), "the qdisc is removed anyway"


def test_heal_refuses_an_interface_that_is_not_a_name():
    with pytest.raises(NetworkFaultError, match="interface must be"):
        heal_commands("eth0 root; rm -rf /")
