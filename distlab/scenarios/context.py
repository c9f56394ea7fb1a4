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

from distlab.checkers import Verdict
from distlab.checkers.expectations import check_availability, check_latency
from distlab.control import ControlError
from distlab.errors import DistlabError, UsageError
from distlab.history import History
from distlab.machine import Machine
from distlab.registry import MIGRATIONS, Injection, MigrationKind, MigrationRun, WorkloadStart
from distlab.report import FaultWindow
from distlab.scenarios.model import Check, Expectation, Fault, MachineRef, Migration, Workload
from distlab.scenarios.schedule import pick_rng
from distlab.testbed import Testbed
from distlab.workloads.clients import ClientWorkload

JOIN_GRACE_SECONDS = 10.0
SETTLE_SECONDS = 60.0
HEALTHY_AFTER_HEAL_SECONDS = 120.0
# A live migration still running when the scenario ends gets this long to finish.
MIGRATIONS_END_SECONDS = 300.0


class FaultObserver:
    """Told when a fault window opens and closes (the Prometheus exporter is one)."""

    def fault_started(self, fault_id: str, kind: str, machines: Sequence[str]) -> None: ...

    def fault_ended(self, fault_id: str) -> None: ...


@dataclass
class RunningWorkload:
    spec: Workload
    workload: ClientWorkload
    thread: threading.Thread


class ScenarioContext:
    def __init__(self, testbed: Testbed, *, lab: str, seed: int,
                 scale: dict[str, int] | None = None, environment: dict[str, str] | None = None,
                 observer: FaultObserver | None = None,
                 say: Callable[[str], None] = lambda line: None) -> None:
        self.testbed = testbed
        self.lab = lab
        self.seed = seed
        self.scale = dict(scale or {})
        self.environment = dict(environment or {})  # kept when a migration scales the lab
        self.history = History()
        self.say = say
        self.verdicts: list[Verdict] = []
        self.windows: list[FaultWindow] = []
        self.migration_runs: list[MigrationRun] = []
        self._migrations: list[threading.Thread] = []
        self._migration_errors: list[str] = []
        self._observer = observer or FaultObserver()
        self._stop = threading.Event()
        self._workloads: list[RunningWorkload] = []
        self._run_id = uuid.uuid4().hex[:8]
        self._picks = 0
        self._reverts: list[Callable[[], object]] = []

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
        registry = self.testbed.registry
        role = registry.entry_role(self.lab)
        if role is None:
            served = [lab.name for lab in registry.labs.values() if lab.entry_role]
            raise UsageError(f"the {self.lab} lab has no client workload yet",
                             hint=f"workloads run against: {', '.join(served)}")
        for spec in specs:
            via = spec.options.get("via", role)  # a role of the lab other than its entry
            workload = self._build(spec, self.testbed.client(via), seconds, via)
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

    def _build(self, spec: Workload, channel, seconds: float, role: str) -> ClientWorkload:
        start = WorkloadStart(channel, seconds, seed=self.seed + len(self._workloads),
                              history=self.history, run_id=self._run_id,
                              first_process=sum(w.spec.processes for w in self._workloads),
                              reconnect=lambda: self.testbed.client(role),
                              machines=self.lab_machines)
        return self.testbed.registry.workloads[spec.type].build(spec, start)

    def stop_workloads(self) -> None:
        self._stop.set()
        for running in self._workloads:
            running.thread.join(running.spec.timeout * 3 + JOIN_GRACE_SECONDS)

    def workload(self, kind: str) -> ClientWorkload | None:
        return next((w.workload for w in self._workloads if w.spec.type == kind), None)

    # -- machines -------------------------------------------------------------------------

    def lab_machines(self) -> list[Machine]:
        """The run's lab's machines as they are now (a restarted one on its new port)."""
        return [m for m in self.testbed.machines() if m.info.lab == self.lab]

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
        kind = self.testbed.registry.refs.get(ref.kind)
        if kind is None:
            known = ", ".join(["role", "all", *self.testbed.registry.refs])
            raise UsageError(f"{ref}: no machine reference {ref.kind}:", hint=f"known: {known}")
        holder = kind.resolve(machines, ref.value)
        if holder is None:
            raise DistlabError(f"{ref}: no running machine is the {ref.value} now")
        return [holder]

    def names(self, refs: Iterable[MachineRef]) -> list[str]:
        """The machine names every reference of `refs` means now."""
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
        kind = self.testbed.registry.faults.get(fault.kind)
        if kind is None:
            raise UsageError(f"unknown fault kind {fault.kind!r}",
                             hint=f"fault kinds: {', '.join(self.testbed.registry.faults)}")
        target = self.resolve(fault.target)[0] if fault.target is not None else None
        started = self.now()
        record = kind.inject(Injection(self.testbed.nemesis, fault, target, self.names,
                                       seed=pick_rng(self.seed, index or 0).randrange(2**31)))
        ended = started if kind.instant else None
        # A partition involves every machine; the one it cuts off is what a reader wants named.
        victims = (target,) if target is not None else tuple(record.machines)
        window = FaultWindow(record.id, fault.kind, victims, started, ended)
        self.windows.append(window)
        self._observer.fault_started(record.id, fault.kind, victims)
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
        """Carry out a migration: at once, or beside the timeline for an action that runs
        in the background (a live migration takes seconds, and a fault may meet it)."""
        kind = self.testbed.registry.migrations[migration.action]
        window = FaultWindow(f"m{len(self.windows) + 1}", "migration", (), self.now(), None)
        self.windows.append(window)
        if not kind.background:
            self._migrate(kind, migration, window)
            return
        thread = threading.Thread(target=self._migrate_beside, name=f"migration-{window.id}",
                                  args=(kind, migration, window), daemon=True)
        self._migrations.append(thread)
        thread.start()

    def _migrate(self, kind: MigrationKind, migration: Migration, window: FaultWindow) -> None:
        try:
            label = kind.apply(self, migration)
        finally:
            # Shaded on the plots from its start to its end.
            self.windows[self.windows.index(window)] = FaultWindow(
                window.id, window.kind, window.machines, window.start, self.now())
        self.say(f"t={window.start:6.1f}s  {label}")

    def _migrate_beside(self, kind: MigrationKind, migration: Migration,
                        window: FaultWindow) -> None:
        try:
            self._migrate(kind, migration, window)
        except DistlabError as exc:
            self._migration_errors.append(f"{migration.action} at {migration.at:g} s: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported by wait_migrations, not lost
            self._migration_errors.append(f"{migration.action} at {migration.at:g} s: "
                                          f"{type(exc).__name__}: {exc}")

    def wait_migrations(self, timeout: float) -> None:
        """Wait for the migrations running in the background; DistlabError if one could
        not be carried out (a migration that failed is a MigrationRun, not an error)."""
        ends = time.monotonic() + timeout
        for thread in self._migrations:
            thread.join(max(0.0, ends - time.monotonic()))
        late = [thread.name for thread in self._migrations if thread.is_alive()]
        problems = self._migration_errors + [f"{name} still runs after {timeout:g} s"
                                             for name in late]
        if problems:
            raise DistlabError(f"migrations: {'; '.join(problems)}")

    def record_migration(self, run: MigrationRun) -> None:
        """A migration action's outcome, for the `migration` check and the report."""
        self.migration_runs.append(run)

    def on_revert(self, undo: Callable[[], object]) -> None:
        """Run `undo` when the run ends (newest first): a migration putting things back."""
        self._reverts.append(undo)

    def revert_migrations(self) -> list[str]:
        """Put back what migrations changed, newest first (scale stays as it is)."""
        problems = []
        while self._reverts:
            try:
                self._reverts.pop()()
            except DistlabError as exc:
                problems.append(str(exc))
        return problems

    def reconfigure(self, name: str, settings: dict[str, str]) -> dict[str, str]:
        """Change `name`'s run-time settings ({}: none); its settings as they are now."""
        try:
            with self.testbed.machine(name).control() as control:
                return control.reconfigure(settings)
        except ControlError as exc:
            raise DistlabError(f"{name} refused {settings}: {exc.code.name}: "
                               f"{exc.details}", hint=exc.hint) from None

    # -- checks ---------------------------------------------------------------------------

    def check(self, verdict: Verdict) -> None:
        """Add a verdict of the scenario's own (Python scenarios)."""
        self.verdicts.append(verdict)

    def settle_and_check(self, checks: Sequence[Check],
                         expectations: Sequence[Expectation]) -> list[Verdict]:
        """After the workloads stopped and the lab healed: resolve, then run every check."""
        registry = self.testbed.registry
        for running in self._workloads:
            settle = registry.workloads[running.spec.type].settle
            if settle is not None:
                settle(running.workload, SETTLE_SECONDS)
        for check in checks:
            kind = registry.checks[check.name]
            if kind.needs == MIGRATIONS:
                self.verdicts.append(kind.run(self.migration_runs, check.options))
                continue
            workload = self.workload(kind.needs)
            if workload is None:
                self.verdicts.append(Verdict(check.name, None, [f"no {kind.needs} workload ran"]))
                continue
            self.verdicts.append(kind.run(workload, check.options))
        spans = [(w.start, w.end) for w in self.windows if w.kind != "migration"]
        for expectation in expectations:
            self.verdicts.append(_expect(self.history, spans, expectation))
        return self.verdicts


def ref_of(text: str) -> MachineRef:
    """`app-2`, `role:app`, `all:data` or a registered `chain:head` as a MachineRef (a
    machine name has no colon)."""
    prefix, sep, value = text.partition(":")
    if sep:
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
