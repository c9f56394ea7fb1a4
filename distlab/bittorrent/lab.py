"""The bittorrent lab's registration: `distlab bt ...`, the `download` workload (every
leecher fetches the lab's torrent; one history operation per download) and the `pieces`
check (every leecher finished with the seed's bytes). The workload's clients are the lab's
own leechers, read through the lab's machines; the entry role is the tracker, the one
machine every peer talks to first."""

from __future__ import annotations

from typing import Any

from distlab.bittorrent.cli import bt
from distlab.bittorrent.download import OP, DownloadConfig, DownloadWorkload
from distlab.errors import DistlabError
from distlab.registry import CheckKind, LabPlugin, WorkloadKind, WorkloadStart
from distlab.scenarios.model import Workload
from distlab.scenarios.reader import Field, integer_in

TRACKER_ROLE = "tracker"


def _build(spec: Workload, start: WorkloadStart) -> DownloadWorkload:
    if start.machines is None:
        raise DistlabError("a download workload follows the lab's machines; none were given")
    return DownloadWorkload(start.machines, DownloadConfig(
        processes=spec.processes, max_ops=spec.max_ops, seconds=start.seconds,
        timeout=spec.timeout, seed=start.seed, rate=spec.rate, fresh=spec.fresh),
        history=start.history, run_id=start.run_id, first_process=start.first_process)


def _check(workload: Any, options: dict[str, Any]):
    return workload.check(**options)


DOWNLOAD = WorkloadKind(
    "download", (OP,),
    (Field("fresh", lambda reader, node, path: reader.boolean(node, path), True),), _build)

PIECES = CheckKind("pieces", "download", _check,
                   (Field("banned_at_least", integer_in(0, 1000), 0),))

LAB = LabPlugin("bittorrent", entry_role=TRACKER_ROLE, serves=("download",),
                workloads=(DOWNLOAD,), checks=(PIECES,), commands=(bt,))
