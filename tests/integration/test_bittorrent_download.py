"""The bittorrent lab's `download` workload and `pieces` check against real peers on loopback
(test_peer_swarm's Swarm: an in-process tracker, a seeder and leechers over real TCP).

The workload records one operation per leecher and the check passes when every leecher ends
with the seed's bytes; it fails when a leecher's file is altered on disk after it finished,
and when a leecher never finishes. A leecher restarted mid-run is followed to its end on
its new address; `fresh` empties and restarts every leecher through the runtime."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

import grpc
import pytest

from distlab.bittorrent.download import DownloadConfig, DownloadWorkload
from distlab.dashboards import load_dashboards
from distlab.history import INFO, OK
from distlab.machine import Machine
from distlab.runtime.base import MachineInfo
from nodes.rpc import control_pb2
from tests.integration.test_peer_swarm import FILE_BYTES, Swarm

RUN_SECONDS = 60.0  # a bound: the workload stops as soon as every leecher is complete
NEVER_DONE_SECONDS = 6.0  # the run the capped leecher cannot finish in (it needs 192 s)


class Machines:
    """The swarm's nodes as the lab's machines, the way the scenario runner hands them over:
    role `peer`, the seeder by its service, a stopped node without an endpoint."""

    def __init__(self, swarm: Swarm, runtime=None) -> None:
        self.swarm = swarm
        self.runtime = runtime
        self.nodes: dict[str, object] = {}

    def add(self, node) -> None:
        self.nodes[node.name] = node

    def __call__(self) -> list[Machine]:
        lab = self.swarm.lab
        machines = []
        for name, node in self.nodes.items():
            running = id(node) not in lab.stopped
            info = MachineInfo(name, f"distlab-{name}", "bittorrent", "peer",
                               "seeder" if name.startswith("seeder") else "leecher",
                               "running" if running else "exited",
                               "healthy" if running else "-", (),
                               lab.address(node) if running else None)
            machines.append(Machine(self.runtime, info, credential=lab.credential))
        return machines


@pytest.fixture
def swarm(lab, tmp_path):
    return Swarm(lab, tmp_path)


def workload(machines: Machines, seconds: float = RUN_SECONDS, **config) -> DownloadWorkload:
    chosen = DownloadWorkload(machines, DownloadConfig(seconds=seconds, fresh=False, **config))
    chosen.setup()
    return chosen


def test_every_leecher_s_download_is_recorded_and_the_check_compares_it_with_the_seed(swarm):
    machines = Machines(swarm)
    machines.add(swarm.seeder(PEER_UPLOAD_RATE_BYTES=2 * 1024 * 1024))
    for index in (1, 2, 3):
        machines.add(swarm.peer(f"leecher-{index}"))
    downloads = workload(machines)
    assert downloads.seed.content_sha256 == hashlib.sha256(swarm.seed.read_bytes()).hexdigest()
    downloads.run()

    ops = downloads.history.of("download")
    assert sorted(op.args["leecher"] for op in ops) == ["leecher-1", "leecher-2", "leecher-3"]
    assert all(op.type == OK and op.result["bytes"] == FILE_BYTES for op in ops)
    assert all(op.result["downloaded"] >= FILE_BYTES for op in ops)
    verdict = downloads.check(banned_at_least=0)
    assert verdict.valid is True, verdict.problems
    assert verdict.figures["compared"] == 3 and verdict.figures["finished"] == 3


def test_a_file_altered_on_disk_after_it_finished_fails_the_check(swarm):
    machines = Machines(swarm)
    machines.add(swarm.seeder())
    leechers = [swarm.peer(f"leecher-{index}") for index in (1, 2)]
    for leecher in leechers:
        machines.add(leecher)
    downloads = workload(machines)
    downloads.run()
    assert all(op.type == OK for op in downloads.history.of("download"))

    content = swarm.data_dir / "leecher-2" / swarm.seed.name
    with open(content, "r+b") as altered:  # one byte, in place: the size stays
        altered.seek(FILE_BYTES // 2)
        byte = altered.read(1)
        altered.seek(FILE_BYTES // 2)
        altered.write(bytes([byte[0] ^ 0x01]))
    os.utime(content, ns=(1, 1))  # a modification time the last digest was not made from
    verdict = downloads.check()
    assert verdict.valid is False
    assert len(verdict.problems) == 1 and "leecher-2's content differs from the seed" in \
        verdict.problems[0], verdict.problems
    assert verdict.figures["compared"] == 2


def test_a_leecher_that_never_finishes_fails_the_check(swarm):
    machines = Machines(swarm)
    machines.add(swarm.seeder())
    machines.add(swarm.peer("leecher-1"))
    # 16 KiB/s for a 3 MiB file: it cannot be complete within the run, however fast the host.
    machines.add(swarm.peer("leecher-2", PEER_DOWNLOAD_RATE_BYTES=16 * 1024))
    downloads = workload(machines, seconds=NEVER_DONE_SECONDS)
    downloads.run()
    late = [op for op in downloads.history.of("download") if op.args["leecher"] == "leecher-2"]
    assert [op.type for op in late] == [INFO]
    assert late[0].result["pieces_have"] < late[0].result["pieces_total"]
    verdict = downloads.check()
    assert verdict.valid is False
    assert any(problem.startswith("leecher-2 did not finish") for problem in verdict.problems)
    assert verdict.figures["finished"] <= 1


def test_a_leecher_restarted_mid_run_is_followed_to_its_end_on_its_new_address(swarm, lab):
    machines = Machines(swarm)
    # 256 KiB/s: about 12 s for the file, time enough to stop it partway, whatever the load.
    machines.add(swarm.seeder(PEER_UPLOAD_RATE_BYTES=256 * 1024))
    first = swarm.peer("leecher-1")
    machines.add(first)
    downloads = workload(machines)
    runner = threading.Thread(target=downloads.run)
    runner.start()
    (watch,) = downloads.watches
    lab.wait_until(lambda: watch.last is not None and watch.last.pieces_have >= 8,
                   what="the workload saw a part downloaded")
    lab.stop(first)
    machines.add(swarm.peer("leecher-1"))  # the same machine, another process and port
    runner.join(RUN_SECONDS + 30)
    (op,) = downloads.history.of("download")
    assert op.type == OK and op.result["incarnations"] == 2
    assert downloads.check().valid is True


class InProcessRuntime:
    """The Runtime calls `fresh` makes (exec, stop, start), carried out on the swarm's nodes:
    /data is the swarm's data directory and starting a machine starts its node again."""

    def __init__(self, swarm: Swarm, machines: Machines) -> None:
        self.swarm = swarm
        self.machines = machines
        self.calls: list[tuple[str, ...]] = []

    def exec(self, container, argv, *, user, timeout, check):
        assert argv[:3] == ["rm", "-rf", "--"] and argv[3].startswith("/data/"), argv
        self.calls.append(("exec", container, f"as {user}", *argv))
        target = self.swarm.data_dir / Path(argv[3]).relative_to("/data")
        for path in sorted(target.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()

    def stop(self, container, timeout):
        self.calls.append(("stop", container))
        self.swarm.lab.stop(self.machines.nodes[container.removeprefix("distlab-")])

    def start(self, container):
        self.calls.append(("start", container))
        self.machines.add(self.swarm.peer(container.removeprefix("distlab-")))


def test_fresh_downloads_start_from_nothing_with_the_run(swarm, lab):
    machines = Machines(swarm)
    runtime = InProcessRuntime(swarm, machines)
    machines.runtime = runtime
    machines.add(swarm.seeder())
    done = swarm.peer("leecher-1")
    machines.add(done)
    swarm.wait_complete(done)  # a leecher left complete by an earlier run

    downloads = DownloadWorkload(machines, DownloadConfig(seconds=RUN_SECONDS, fresh=True))
    downloads.setup()
    # As the files' owner: root in a machine holds no capability and may not delete them.
    assert runtime.calls == [("exec", "distlab-leecher-1", "as distlab",
                              "rm", "-rf", "--", "/data/leecher-1"),
                             ("stop", "distlab-leecher-1")]
    assert not (swarm.data_dir / "leecher-1" / swarm.seed.name).exists()
    downloads.run()
    assert runtime.calls[-1] == ("start", "distlab-leecher-1")
    (op,) = downloads.history.of("download")
    assert op.type == OK and op.result["downloaded"] >= FILE_BYTES  # all of it, again
    assert downloads.check().valid is True


def test_a_leecher_turned_corrupt_while_it_runs_is_banned_and_the_others_still_finish(swarm,
                                                                                      lab):
    machines = Machines(swarm)
    machines.add(swarm.seeder(PEER_UPLOAD_RATE_BYTES=1024 * 1024))
    corrupt = swarm.peer("leecher-1")
    machines.add(corrupt)
    control = lab.control(corrupt)
    reply = control.Reconfigure(control_pb2.ReconfigureRequest(settings={"PEER_MODE": "corrupt"}),
                                timeout=5)
    assert dict(reply.settings) == {"PEER_MODE": "corrupt"}
    # It holds pieces the others will want from it before they come.
    lab.wait_until(lambda: corrupt.role.engine and len(corrupt.role.engine.store.have) >= 24,
                   what="a quarter at the corrupt leecher")
    for index in (2, 3):
        machines.add(swarm.peer(f"leecher-{index}"))
    downloads = workload(machines)
    downloads.run()
    assert swarm.status(corrupt).mode == "corrupt"
    verdict = downloads.check(banned_at_least=1)
    assert verdict.valid is True, verdict.problems  # its own file is right: it serves wrong
    assert verdict.figures["banned"] >= 1 and verdict.figures["pieces_bad"] >= 1

    back = control.Reconfigure(control_pb2.ReconfigureRequest(settings={"PEER_MODE": "normal"}),
                               timeout=5)
    assert dict(back.settings) == {"PEER_MODE": "normal"}
    for refused in ({"PEER_MODE": "free-rider"}, {"PEER_UPLOAD_RATE_BYTES": "1"}):
        with pytest.raises(grpc.RpcError) as raised:
            control.Reconfigure(control_pb2.ReconfigureRequest(settings=refused), timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_without_a_ban_the_check_asking_for_one_fails(swarm):
    machines = Machines(swarm)
    machines.add(swarm.seeder())
    machines.add(swarm.peer("leecher-1"))
    downloads = workload(machines)
    downloads.run()
    verdict = downloads.check(banned_at_least=1)
    assert verdict.valid is False
    assert verdict.problems == ["the leechers banned 0 peers, expected at least 1: no bad "
                                "piece was caught"]


DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
#: Labels Prometheus adds to every target (distlab.observe.targets_document), or PromQL makes.
TARGET_LABELS = {"machine", "role", "lab", "job", "instance"}


def test_every_metric_of_the_bittorrent_dashboard_is_exported_with_its_labels(swarm, lab):
    seeder = swarm.seeder()
    leecher = swarm.peer("leecher-1")
    swarm.wait_complete(leecher)
    exported: dict[str, set[str]] = {}
    lab.wait_until(lambda: lab.scrape(leecher).get("distlab_bittorrent_downloaded_bytes_total")
                   >= FILE_BYTES, what="the download counted")
    for node in (swarm.tracker, seeder, leecher):
        for name, labels in lab.scrape(node).samples:
            exported.setdefault(name, set()).update(label for label, _ in labels)
    (dashboard,) = [d for d in load_dashboards(DASHBOARDS, lab="bittorrent")
                    if d.uid == "distlab-bittorrent"]
    checked = 0
    for query in dashboard.panels:
        grouped = {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", query.expr)
                   for label in group.split(",")}
        for name in re.findall(r"\b(distlab_(?:bittorrent|tracker)_\w+)", query.expr):
            assert name in exported, f"{query}: {name} is not exported by the tracker or a peer"
            missing = grouped - exported[name] - TARGET_LABELS
            assert not missing, f"{query}: {name} has no label {sorted(missing)}"
            checked += 1
    assert checked >= 12
