"""The serverless lab's registration: `distlab fn ...`, the `invoke` workload (sync and
async calls of a function whose answers can be checked) and the `invocations` check (every
answer right, every accepted async invocation completed once). Clients talk to the
runner; `instance:busy` names a function instance for a fault."""

from __future__ import annotations

from typing import Any

from distlab.registry import CheckKind, LabPlugin, WorkloadKind, WorkloadStart
from distlab.scenarios.model import Workload
from distlab.scenarios.reader import Field, Reader, integer_in, number_in
from distlab.serverless.cli import fn
from distlab.serverless.client import RUNNER_ROLE
from distlab.serverless.instances import INSTANCE_REF
from distlab.serverless.workload import INVOKE, SUBMIT, InvokeConfig, InvokeWorkload


def _build(spec: Workload, start: WorkloadStart) -> InvokeWorkload:
    return InvokeWorkload(start.channel, InvokeConfig(
        processes=spec.processes, max_ops=spec.max_ops, seconds=start.seconds,
        timeout=spec.timeout, seed=start.seed, rate=spec.rate, async_share=spec.async_share,
        work_ms=spec.work_ms, storage=spec.storage, max_instances=spec.max_instances,
        burst=spec.burst),
        history=start.history, run_id=start.run_id, first_process=start.first_process,
        reconnect=start.reconnect)


def _check(workload: Any, options: dict[str, Any]):
    return workload.check(**options)


INVOKE_KIND = WorkloadKind(
    "invoke", (INVOKE, SUBMIT),
    (Field("async_share", number_in(lambda x: 0 <= x <= 1, "0..1"), 0.5),
     Field("work_ms", integer_in(0, 10_000), 100),
     Field("storage", Reader.boolean, False),
     Field("max_instances", integer_in(1, 16), 3),
     Field("burst", integer_in(1, 32), 1)), _build,
    settle=lambda workload, seconds: workload.settle(deadline_seconds=seconds))

LAB = LabPlugin("serverless", entry_role=RUNNER_ROLE, serves=("invoke",),
                workloads=(INVOKE_KIND,),
                checks=(CheckKind("invocations", "invoke", _check),), refs=(INSTANCE_REF,),
                commands=(fn,))
