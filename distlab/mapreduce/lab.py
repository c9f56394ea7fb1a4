"""The mapreduce lab's registration: `distlab mr ...`, the `mapreduce` workload (jobs
submitted one after another by each client process) and the `output` check (each done
job's output equals a sequential run). Clients talk to the master."""

from __future__ import annotations

from typing import Any

from distlab.mapreduce.cli import mr
from distlab.mapreduce.client import MASTER_ROLE
from distlab.mapreduce.workload import MapReduceConfig, MapReduceWorkload
from distlab.registry import CheckKind, LabPlugin, WorkloadKind, WorkloadStart
from distlab.scenarios.model import Workload
from distlab.scenarios.reader import Field, integer_in


def _build(spec: Workload, start: WorkloadStart) -> MapReduceWorkload:
    return MapReduceWorkload(start.channel, MapReduceConfig(
        processes=spec.processes, max_ops=spec.max_ops, seconds=start.seconds,
        timeout=spec.timeout, seed=start.seed, rate=spec.rate, reducers=spec.reducers,
        corpus_kib=spec.corpus_kib), history=start.history, run_id=start.run_id,
        first_process=start.first_process, reconnect=start.reconnect)


def _check(workload: Any, options: dict[str, Any]):
    return workload.check(**options)


MAPREDUCE = WorkloadKind(
    "mapreduce", ("job",),
    (Field("reducers", integer_in(1, 100), 3),
     Field("corpus_kib", integer_in(1, 1024 * 1024), 1024)), _build)

LAB = LabPlugin("mapreduce", entry_role=MASTER_ROLE, serves=("mapreduce",),
                workloads=(MAPREDUCE,), checks=(CheckKind("output", "mapreduce", _check),),
                commands=(mr,))
