"""The tiers lab's registration: what it adds to scenarios and to the `distlab` command.

Workloads: `bank` (transfers, balances, audits through the switch; settled by replaying
indefinite transfers) and `register` (reads and writes of a few keys of the KV service,
which the kv lab serves too). Checks: `bank` (Jepsen's bank invariants) and
`linearizable` (the shared WGL checker over the register history). References:
`chain:head|middle|tail`. Migrations: `migrate-replica` (a data replica moved live into
a spare by dirty keys). Commands: `distlab tiers bank`, `distlab tiers migrate-replica`,
and `distlab bank`.
"""

from __future__ import annotations

from typing import Any

from distlab.registry import CheckKind, LabPlugin, WorkloadKind, WorkloadStart
from distlab.scenarios.model import Workload
from distlab.scenarios.reader import Field, Reader, integer_in, number_in
from distlab.tiers.bank import BankConfig, BankWorkload
from distlab.tiers.chain import CHAIN_REF
from distlab.tiers.cli import bank, tiers
from distlab.tiers.register import READ, WRITE, RegisterConfig, RegisterWorkload
from distlab.tiers.replicas import MIGRATE_REPLICA
from distlab.workloads.clients import ClientWorkload


def _common(spec: Workload, start: WorkloadStart) -> dict[str, Any]:
    return dict(processes=spec.processes, max_ops=spec.max_ops, seconds=start.seconds,
                timeout=spec.timeout, seed=start.seed, rate=spec.rate)


def _build_bank(spec: Workload, start: WorkloadStart) -> BankWorkload:
    return BankWorkload(start.channel, BankConfig(accounts=spec.accounts, **_common(spec, start)),
                        history=start.history, run_id=start.run_id,
                        first_process=start.first_process)


def _build_register(spec: Workload, start: WorkloadStart) -> RegisterWorkload:
    return RegisterWorkload(start.channel, RegisterConfig(
        keys=spec.keys, read_share=spec.read_share, **_common(spec, start)),
        history=start.history, run_id=start.run_id, first_process=start.first_process)


def _check(workload: ClientWorkload, options: dict[str, Any]):
    return workload.check(**options)


BANK = WorkloadKind(
    "bank", ("transfer", "balance", "audit"),
    (Field("accounts", integer_in(2, 1000), 6),), _build_bank,
    settle=lambda workload, seconds: workload.settle(deadline_seconds=seconds))
REGISTER = WorkloadKind(
    "register", (READ, WRITE),
    (Field("keys", integer_in(1, 100), 3),
     Field("read_share", number_in(lambda x: 0 <= x <= 1, "0..1"), 0.5)), _build_register)

LAB = LabPlugin(
    "tiers", entry_role="switch", serves=("bank", "register"),
    workloads=(BANK, REGISTER),
    checks=(CheckKind("bank", "bank", _check),
            CheckKind("linearizable", "register", _check,
                      (Field("time_limit", Reader.positive_duration, 10.0),
                       Field("max_ops_per_key", integer_in(1, None), 2000)))),
    refs=(CHAIN_REF,),
    migrations=(MIGRATE_REPLICA,),
    commands=(tiers, bank))
