"""ScenarioContext: what a running scenario does to a lab, and what it remembers of it.

One object per run, given the Testbed: it starts workloads on one shared
History, injects faults through the nemesis and remembers each one's window
(for the expectations, the plots and the Prometheus gauge), applies
migrations, and at the end stops the workloads, heals, settles them and runs
the checks. A YAML scenario is a timeline played on it
(`distlab.scenarios.runner`); a Python scenario calls it directly.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from distlab.checkers import Verdict
from distlab.checkers.expectations import check_availability, check_latency
from distlab.errors import DistlabError, UsageError
from distlab.history import History
from distlab.report import FaultWindow
from distlab.scenarios.schedule import pick_rng
from distlab.scenarios.spec import Check, Expectation, Fault, MachineRef, Migration, Workload
from distlab.testbed import Testbed
from distlab.workloads.bank import BankConfig, BankWorkload
from distlab.workloads.register import RegisterConfig, RegisterWorkload
from nodes.rpc import control_pb2

# The machine of each lab that clients talk to.
ENTRY_ROLES = {"tiers": "switch", "kv": "kv"}
CHECK_WORKLOADS = {"bank": "bank", "linearizable": "register"}
JOIN_GRACE_SECONDS = 10.0
SETTLE_SECONDS = 60.0
HEALTHY_AFTER_HEAL_SECONDS = 120.0


class FaultObserver:
    """Told when a fault window opens and closes (the Prometheus exporter is one)."""

    def fault_started(self, fault_id: str, kind: str, machines: Sequence[str]) -> None: ...

    def fault_ended(self, fault_id: str) -> None: ...


@dataclass
class RunningWorkload:
    spec: Workload
    workload: BankWorkload | RegisterWorkload
    thread: threading.Thread


class ScenarioContext:
    def __init__(self, testbed: Testbed, *, lab: str, seed: int,
                 scale: dict[str, int] | None = None, observer: FaultObserver | None = None,
                 say: Callable[[str], None] = lambda line: None) -> None:
        self.testbed = testbed
        self.lab = lab
        self.seed = seed
        self.scale = dict(scale or {})
        self.history = History()
        self.say = say
        self.verdicts: list[Verdict] = []
        self.windows: list[FaultWindow] = []
        self._observer = observer or FaultObserver()
        self._stop = threading.Event()
        self._workloads: list[RunningWorkload] = []
        self._run_id = uuid.uuid4().hex[:8]
        self._picks = 0
        self._reverts: list[tuple[str, dict[str, str]]] = []

    # -- time -----------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the run's history began (the clock of every op and fault window)."""
        return self.history.now()

    def sleep_until(self, at: float) -> None:
        """Wait until `at` seconds into the run, in short steps so Ctrl-C is felt at once."""
        while (left := at - self.now()) > 0:
            time.sleep(min(left, 0.1))

    # -- workloads ------------------------------------------------------------------------

    def start_workloads(self, specs: Sequence[Workload], *, seconds: float) -> None:
        """Set every workload up, make now time zero, then start them all for `seconds`."""
        role = ENTRY_ROLES.get(self.lab)
        if role is None:
            raise UsageError(f"the {self.lab} lab has no client workload yet",
                             hint=f"workloads run against: {', '.join(ENTRY_ROLES)}")
        channel = self.testbed.client(role)
        for spec in specs:
            workload = self._build(spec, channel, seconds)
            workload.setup()
            thread = threading.Thread(target=workload.run, args=(self._stop,),
                                      name=f"workload-{spec.type}", daemon=True)
            self._workloads.append(RunningWorkload(spec, workload, thread))
        if not len(self.history):
            self.history.restart_clock()
        for running in self._workloads:
            if running.thread.ident is not None:
                continue  # started by an earlier call
            running.thread.start()
            spec = running.spec
            self.say(f"workload {spec.type}: {spec.processes} processes"
                     + (f" at {spec.rate:g} ops/s" if spec.rate else ", closed loop"))

    def _build(self, spec: Workload, channel: grpc.Channel,
               seconds: float) -> BankWorkload | RegisterWorkload:
        first = sum(w.spec.processes for w in self._workloads)
        seed = self.seed + len(self._workloads)
        if spec.type == "bank":
            return BankWorkload(channel, BankConfig(
                accounts=spec.accounts, processes=spec.processes, max_ops=spec.max_ops,
                seconds=seconds, timeout=spec.timeout, seed=seed, rate=spec.rate),
                history=self.history, run_id=self._run_id, first_process=first)
        return RegisterWorkload(channel, RegisterConfig(
            keys=spec.keys, processes=spec.processes, max_ops=spec.max_ops,
            seconds=seconds, timeout=spec.timeout, seed=seed, rate=spec.rate,
            read_share=spec.read_share),
            history=self.history, run_id=self._run_id, first_process=first)

    def stop_workloads(self) -> None:
        self._stop.set()
        for running in self._workloads:
            running.thread.join(running.spec.timeout * 3 + JOIN_GRACE_SECONDS)

    def workload(self, kind: str) -> BankWorkload | RegisterWorkload | None:
        return next((w.workload for w in self._workloads if w.spec.type == kind), None)

    # -- machines -------------------------------------------------------------------------

    def resolve(self, ref: MachineRef | str) -> list[str]:
        """The machine names a reference means now (one, except for `all:`)."""
        if isinstance(ref, str):
            return [ref]
        if ref.kind == "name":
            return [ref.value]
        machines = sorted((m for m in self.testbed.machines() if m.info.lab == self.lab),
                          key=lambda m: m.name)
        if ref.kind == "all":
            return [m.name for m in machines if m.info.role == ref.value]
        if ref.kind == "role":
            running = [m.name for m in machines
                       if m.info.role == ref.value and m.info.state == "running"]
            if not running:
                raise DistlabError(f"{ref}: no machine of role {ref.value} is running")
            self._picks += 1
            return [pick_rng(self.seed, self._picks).choice(running)]
        holder = self._chain_position(ref.value, machines)
        if holder is None:
            raise DistlabError(f"{ref}: no data replica says it is the {ref.value}")
        return [holder]

    def _chain_position(self, position: str, machines) -> str | None:
        for machine in machines:
            if machine.info.role != "data" or machine.info.state != "running":
                continue
            try:
                channel, control = machine.control()
            except DistlabError:
                continue
            with channel:
                try:
                    state = control.Status(control_pb2.StatusRequest(), timeout=3).state
                except grpc.RpcError:
                    continue
            if state.get("position") == position:
                return machine.name
        return None

    def _names(self, refs: Iterable[MachineRef]) -> list[str]:
        return [name for ref in refs for name in self.resolve(ref)]

    # -- faults ---------------------------------------------------------------------------

    def fault(self, kind: str, target: str | None = None, **params) -> FaultWindow:
        """Apply a fault now, as a YAML timeline entry would (for Python scenarios):
        `ctx.fault("kill", "chain:head")`, `ctx.fault("partition", shape="halves")`,
        `ctx.fault("rpc", "app-1", action="delay", delay=0.2)`."""
        params["machines"] = tuple(ref_of(text) for text in params.get("machines", ()))
        if "groups" in params:
            params["groups"] = tuple(tuple(ref_of(t) for t in g) for g in params["groups"])
        fault = Fault(at=self.now(), for_=None, kind=kind,
                      target=ref_of(target) if target else None, **params)
        return self.inject(fault)

    def inject(self, fault: Fault, *, index: int | None = None) -> FaultWindow:
        """Apply one fault now and open its window."""
        nemesis = self.testbed.nemesis
        target = self.resolve(fault.target)[0] if fault.target is not None else None
        started = self.now()
        kind = fault.kind
        if kind in ("kill", "stop", "pause", "restart"):
            record = getattr(nemesis, kind)(target)
        elif kind == "partition":
            record = nemesis.partition(
                fault.shape, self._names(fault.machines), target=target,
                groups=[self._names(group) for group in fault.groups] or None,
                seed=pick_rng(self.seed, index or 0).randrange(2**31))
        elif kind == "loss":
            record = nemesis.loss(target, fault.probability)
        elif kind == "bandwidth":
            record = nemesis.bandwidth(target, fault.rate)
        elif kind == "delay":
            record = nemesis.delay(target, fault.delay * 1000, fault.jitter * 1000)
        elif kind == "rpc":
            record = nemesis.rpc(target, fault.action, method=fault.method or "*",
                                 seconds=fault.delay or 0.0, jitter=fault.jitter,
                                 code=grpc.StatusCode[fault.code or "UNAVAILABLE"].value[0],
                                 probability=fault.probability or 1.0, outbound=fault.outbound)
        else:
            raise UsageError(f"unknown fault kind {kind!r}")
        ended = started if kind == "restart" else None
        # A partition involves every machine; the one it cuts off is what a reader wants named.
        victims = (target,) if target is not None else tuple(record.machines)
        window = FaultWindow(record.id, kind, victims, started, ended)
        self.windows.append(window)
        self._observer.fault_started(record.id, kind, victims)
        if ended is not None:
            self._observer.fault_ended(record.id)
        self.say(f"t={started:6.1f}s  {window.label} ({record.id})")
        return window

    def heal(self, window: FaultWindow) -> None:
        """Close one fault window (the one with `window`'s id): undo that fault now."""
        window = next(w for w in self.windows if w.id == window.id)  # closing replaces it
        if window.end is not None:
            return
        problems = self.testbed.nemesis.end(window.id)
        self._close(window)
        self.say(f"t={self.now():6.1f}s  healed {window.label}"
                 + (f": {'; '.join(problems)}" if problems else ""))

    def heal_all(self) -> list[str]:
        """Undo every fault still active and sweep every machine; close every window."""
        problems = self.testbed.nemesis.heal()
        for window in list(self.windows):
            if window.end is None:
                self._close(window)
        return problems

    def _close(self, window: FaultWindow) -> None:
        closed = FaultWindow(window.id, window.kind, window.machines, window.start, self.now())
        self.windows[self.windows.index(window)] = closed
        self._observer.fault_ended(window.id)

    def active_windows(self) -> list[FaultWindow]:
        return [w for w in self.windows if w.end is None]

    # -- migrations -----------------------------------------------------------------------

    def migrate(self, migration: Migration) -> None:
        at = self.now()
        if migration.action == "reconfigure":
            names = self._names(migration.targets)
            for name in names:
                before = self.reconfigure(name, {})  # no change: what the settings are now
                self._reverts.append((name, {k: before[k] for k in migration.settings
                                             if k in before}))
                self.reconfigure(name, migration.settings)
            label = f"reconfigure {','.join(names)}"
        else:
            # Every count again: Compose puts a service it is not told about back to its default.
            self.scale[migration.service] = migration.count
            self.testbed.up(self.lab, [f"{s}={n}" for s, n in self.scale.items()])
            label = f"scale {migration.service}={migration.count}"
        self.windows.append(FaultWindow(f"m{len(self.windows) + 1}", "migration", (), at, at))
        self.say(f"t={at:6.1f}s  {label}")

    def revert_migrations(self) -> list[str]:
        """Put back every setting a migration changed, newest first (scale stays as it is)."""
        problems = []
        while self._reverts:
            name, settings = self._reverts.pop()
            try:
                self.reconfigure(name, settings)
            except DistlabError as exc:
                problems.append(str(exc))
        return problems

    def reconfigure(self, name: str, settings: dict[str, str]) -> dict[str, str]:
        channel, control = self.testbed.machine(name).control()
        with channel:
            try:
                reply = control.Reconfigure(control_pb2.ReconfigureRequest(settings=settings),
                                            timeout=5)
            except grpc.RpcError as exc:
                raise DistlabError(f"{name} refused {settings}: {exc.code().name}: "
                                   f"{exc.details()}") from None
        return dict(reply.settings)

    # -- checks ---------------------------------------------------------------------------

    def check(self, verdict: Verdict) -> None:
        """Add a verdict of the scenario's own (Python scenarios)."""
        self.verdicts.append(verdict)

    def settle_and_check(self, checks: Sequence[Check],
                         expectations: Sequence[Expectation]) -> list[Verdict]:
        """After the workloads stopped and the lab healed: resolve, then run every check."""
        bank = self.workload("bank")
        if isinstance(bank, BankWorkload):
            bank.settle(deadline_seconds=SETTLE_SECONDS)
        for check in checks:
            workload = self.workload(CHECK_WORKLOADS[check.name])
            if workload is None:
                self.verdicts.append(Verdict(check.name, None, [
                    f"no {CHECK_WORKLOADS[check.name]} workload ran"]))
                continue
            self.verdicts.append(workload.check(**check.options))
        spans = [(w.start, w.end) for w in self.windows if w.kind != "migration"]
        for expectation in expectations:
            self.verdicts.append(_expect(self.history, spans, expectation))
        return self.verdicts


def ref_of(text: str) -> MachineRef:
    """`app-2`, `role:app`, `chain:head` or `all:data` as a MachineRef."""
    prefix, sep, value = text.partition(":")
    if sep and prefix in ("role", "chain", "all"):
        return MachineRef(text, prefix, value)
    return MachineRef(text, "name", text)


def _expect(history: History, spans: list[tuple[float, float | None]],
            expectation: Expectation) -> Verdict:
    common = dict(window=expectation.window, ops=list(expectation.ops) or None,
                  grace=expectation.grace)
    if expectation.kind == "availability":
        return check_availability(history, spans, at_least=expectation.at_least, **common)
    return check_latency(history, spans, at_most=expectation.at_most,
                         percentile=expectation.percentile, **common)
