"""The tiers lab on a swarm of three test hosts, through the same CLI and Testbed as on
one engine: Prometheus, on whichever host Swarm runs it, scrapes every machine with its
host and the dashboards answer; the bank stays valid while the host of the chain head
stops and while a host is cut off; every `distlab chaos` verb acts on machines wherever
they run; down and destroy leave nothing on the hosts."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from distlab import testbed as testbeds
from distlab.cluster import testhosts
from distlab.cluster.state import STATE_PATH
from distlab.testbed import RUNTIME_CHOICE
from tests.cluster.conftest import DISTLAB, HostsUnderTest, distlab, show
from tests.e2e.conftest import REPO, _engine_answers, assert_dashboards_answer, eventually

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
# The front host, never stopped: the data master keeps its state on its host's volume, and
# the switch is the lab's one entry point (no routing mesh without IPVS to follow it).
MASTER_HOST = "host-1"


@pytest.fixture(scope="module")
def swarm():
    """A cluster of three test hosts made from this checkout, the tiers lab on it."""
    if not _engine_answers():
        pytest.fail("no Docker engine answers: run scripts/setup-host.sh")
    if (REPO / STATE_PATH).exists():
        pytest.fail(f"{REPO / STATE_PATH} exists: `distlab cluster destroy` it first")
    testhosts.remove(REPO)
    hosts = HostsUnderTest(REPO, testhosts.make(REPO, 3))
    try:
        made = distlab(REPO, "cluster", "create", "-i", str(hosts.key), *hosts.specs)
        assert made.returncode == 0, show(made)
        up = distlab(REPO, "up", "tiers", "--runtime", "swarm", "--place",
                     f"data-master={MASTER_HOST}", "--place", f"switch={MASTER_HOST}")
        assert up.returncode == 0, show(up)
        yield hosts
    finally:
        distlab(REPO, "heal")
        distlab(REPO, "down")
        distlab(REPO, "cluster", "destroy")
        testhosts.remove(REPO)
        (REPO / RUNTIME_CHOICE).unlink(missing_ok=True)


def _testbed() -> testbeds.Testbed:
    return testbeds.Testbed(root=REPO)  # the runtime `distlab up --runtime swarm` chose


def _machines() -> dict:
    return {m.name: m.info for m in _testbed().machines()}


def _chain() -> list[str]:
    status = distlab(REPO, "status", "--json")
    for row in json.loads(status.stdout):
        if row["role"] == "data-master":
            return re.search(r"chain=(\S+)", row["detail"]).group(1).split(",")
    raise AssertionError(status.stdout)


def _healthy(timeout: float = 180) -> None:
    bed = _testbed()
    bed.nemesis.heal()
    bed.wait_healthy(bed.catalogue.lab("tiers"), timeout=timeout)


def _bank_during(fault, seconds: float = 40) -> str:
    """Run the bank workload, `fault()` a few seconds in; its verdict line."""
    bank = subprocess.Popen([DISTLAB, "tiers", "bank", "--seconds", str(seconds), "--ops",
                             "100000"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(6)
        fault()
        output, _ = bank.communicate(timeout=seconds + 240)
    finally:
        bank.kill()
    return output


def test_the_lab_runs_across_the_hosts_and_the_bank_is_valid(swarm):
    machines = _machines()
    assert {m.host for m in machines.values()} == {"host-1", "host-2", "host-3"}, machines
    assert machines["data-master-1"].host == machines["switch-1"].host == MASTER_HOST
    assert all(m.health == "healthy" for m in machines.values() if m.lab == "tiers"), machines
    status = distlab(REPO, "status")
    assert " host " in status.stdout.splitlines()[1], status.stdout  # the host column
    bank = distlab(REPO, "tiers", "bank", "--seconds", "15")
    assert bank.returncode == 0 and "bank: valid" in bank.stdout, show(bank)


def test_prometheus_on_the_swarm_scrapes_every_machine_with_its_host(swarm):
    bed = _testbed()
    url = bed.prometheus.url
    hosts = json.loads((REPO / STATE_PATH).read_text())["hosts"]
    assert url.removeprefix("http://").partition(":")[0] in {h["address"] for h in hosts}, url
    bed.sync_targets()
    machines = {name: info.host for name, info in _machines().items()
                if info.lab == "tiers" and info.contract}

    def scraped() -> dict[str, str] | None:
        rows = bed.prometheus.query('up{job="nodes"} == 1')
        seen = {r["metric"]["machine"]: r["metric"].get("host") for r in rows}
        return seen if seen == machines else None

    eventually(scraped, timeout=60, interval=2, what=f"every machine scraped at {url}")
    bank = distlab(REPO, "tiers", "bank", "--seconds", "15")  # traffic for the rate panels
    assert bank.returncode == 0, show(bank)
    assert_dashboards_answer("tiers", prometheus=url)


def test_the_chain_heads_host_stops_and_the_bank_stays_valid(swarm):
    _healthy()
    head = _chain()[0]
    if _machines()[head].host == MASTER_HOST:  # move the head off the master's host first
        distlab(REPO, "chaos", "kill", head)
        _healthy()
        head = _chain()[0]
    host = _machines()[head].host
    output = _bank_during(lambda: distlab(REPO, "chaos", "host-stop", host))
    assert "bank: valid" in output, output
    moved = _machines()[head]
    assert moved.host != host and moved.state == "running", moved  # Swarm rescheduled it
    assert head in _chain()  # and the data tier took it back
    _healthy()


def test_a_host_cut_off_and_the_bank_stays_valid(swarm):
    _healthy()
    host = next(h for h in ("host-2", "host-3") if any(
        m.host == h and m.role == "data" for m in _machines().values()))
    output = _bank_during(lambda: distlab(REPO, "chaos", "host-partition", host))
    assert "bank: valid" in output, output
    _healthy()
    assert len(_chain()) == 3


def _in(machine: str, *argv: str) -> str:
    return _testbed().machine(machine).exec(list(argv)).output


VERBS = {
    # verb: (arguments, what shows it took effect)
    "kill": (["app-2"], lambda before: _machines()["app-2"].container != before["app-2"]
             or _machines()["app-2"].state != "running"),
    "stop": (["app-2"], lambda before: _machines()["app-2"].container != before["app-2"]
             or _machines()["app-2"].state != "running"),
    "restart": (["app-3"], lambda before: _machines()["app-3"].container != before["app-3"]),
    "pause": (["app-1"], lambda before: _machines()["app-1"].state == "paused"),
    "loss": (["app-1", "0.5"], lambda before: "statistic" in _in("app-1", "iptables", "-S")),
    "bandwidth": (["app-1", "1mbit"],
                  lambda before: "tbf" in _in("app-1", "tc", "qdisc", "show")),
    "partition": (["isolate", "--target", "app-1"],
                  lambda before: "DROP" in _in("app-1", "iptables", "-S")),
    "rpc": (["app-1", "error", "--method", "/distlab.bank.Bank/*"], None),  # see below
    "host-slow": (["host-2", "host-3", "1mbit"], None),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_chaos_verb_acts_on_the_swarm(swarm, verb):
    _healthy()
    arguments, took = VERBS[verb]
    before = {name: info.container for name, info in _machines().items()}
    done = distlab(REPO, "chaos", verb, *arguments)
    assert done.returncode == 0 and "fault f" in done.stdout, show(done)
    if verb == "host-slow":
        qdisc = swarm.run(f"root@{_address('host-2')}", "tc qdisc show")
        assert "htb d15:" in qdisc and "tbf" in qdisc, qdisc
    elif verb == "rpc":
        with _testbed().machine("app-1").control() as control:
            assert any(r.rule.method == "/distlab.bank.Bank/*" for r in control.fault_rules())
    else:
        deadline = time.monotonic() + 30
        while not took(before):
            assert time.monotonic() < deadline, f"{verb} did not take effect"
            time.sleep(1)
    listed = distlab(REPO, "chaos", "list", "--all")
    assert verb in listed.stdout, listed.stdout
    _healthy()
    assert "no fault is active" in distlab(REPO, "heal").stdout
    if verb == "host-slow":
        assert "d15:" not in swarm.run(f"root@{_address('host-2')}", "tc qdisc show")


def _address(host: str) -> str:
    state = json.loads((REPO / STATE_PATH).read_text())
    return next(h["address"] for h in state["hosts"] if h["name"] == host)


def test_kernel_delay_says_why_not_here(swarm):
    delay = distlab(REPO, "chaos", "delay", "app-1", "50")
    if delay.returncode == 0:  # a kernel with sch_netem
        assert "fault f" in delay.stdout
        distlab(REPO, "heal")
        return
    assert "sch_netem" in delay.stderr and "chaos rpc app-1 delay" in delay.stderr, show(delay)


def test_down_leaves_no_lab_container_on_any_host(swarm):
    down = distlab(REPO, "down")
    assert down.returncode == 0, show(down)
    for spec in swarm.specs:
        left = swarm.run(spec, "docker ps -aq --filter label=com.docker.stack.namespace=distlab "
                               "| wc -l; docker service ls -q | wc -l").split()
        assert left == ["0", "0"], (spec, left)
    assert not (REPO / RUNTIME_CHOICE).exists()  # the next `up` is on this machine
