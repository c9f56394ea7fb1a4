"""The nemesis: applies faults to machines, records each one, and undoes them all.

Process faults act through the runtime (kill -9, stop, pause, restart);
network faults run the plans of `distlab.faults.network` inside machines
(iptables, tc); RPC faults are rules given to a node's Control service. Each
fault is journaled (start, end, how to undo it) in `.distlab/faults.json`,
so `distlab heal` in a later process undoes what `distlab chaos` did; the
journal is locked and fsync'd (`Journal`), and a damaged one never stops a heal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from distlab.control import ControlError, ControlRefused
from distlab.errors import DistlabError, FaultError, UsageError
from distlab.faults import network
from distlab.files import locked, replace_durably
from distlab.machine import Machine
from distlab.runtime.base import Runtime, one_host_error
from nodes.common.durable import fsync_directory
from nodes.rpc import control_pb2

RPC_ACTIONS = {"delay": control_pb2.FaultRule.DELAY, "error": control_pb2.FaultRule.ERROR,
               "drop": control_pb2.FaultRule.DROP}
MARKED_KINDS = ("partition", "loss", "bandwidth", "delay")
NETEM_MISSING = "Specified qdisc kind is unknown"
NO_LAB = "none (is a lab up? distlab up)"
LOG = logging.getLogger(__name__)
# Ended faults the journal keeps (the newest recorded); active ones are always kept.
KEEP_ENDED = 1000
#: Machines swept at once by `heal` (the Docker SDK keeps 10 connections to the engine).
SWEEP_WORKERS = 8


@dataclass
class FaultRecord:
    id: str
    kind: str
    machines: list[str]
    params: dict
    started: float
    ended: float | None = None
    undo: list[list] = field(default_factory=list)  # steps, see Nemesis._undo_step

    @property
    def active(self) -> bool:
        return self.ended is None


class Journal:
    """Every fault applied, active or ended, kept in one JSON file that processes share.

    `distlab chaos` in one shell and a scenario or `distlab heal` in another
    may write it at once: every read and write holds an exclusive lock
    (fcntl.flock on `<journal>.lock`), and `update` holds it from load to save
    so no record is lost between them. A save writes a temporary file of its
    own, fsyncs it, renames it over the journal and fsyncs the directory: a
    crash leaves the old journal or the new one (both: distlab.files). A journal that does not
    parse is moved aside (kept as `<journal>.corrupt-<UTC time>`), reported in
    `set_aside` and the log, and read as empty, so `heal` still sweeps.

    Bounded: a save keeps every active fault and the `keep_ended` ended ones recorded
    last, so a long chaos run's journal (and every load of it) stays the same size.
    """

    def __init__(self, path: Path, *, keep_ended: int = KEEP_ENDED) -> None:
        self.path = path
        self.keep_ended = keep_ended
        #: What was found unreadable and where it was kept, one message each.
        self.set_aside: list[str] = []

    def load(self) -> list[FaultRecord]:
        with self._locked():
            return self._read()

    def save(self, records: list[FaultRecord]) -> None:
        with self._locked():
            self._write(records)

    @contextlib.contextmanager
    def update(self) -> Iterator[list[FaultRecord]]:
        """The records to change in place; saved on leaving, with no writer in between."""
        with self._locked():
            records = self._read()
            yield records
            self._write(records)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.path)

    def _read(self) -> list[FaultRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            return [FaultRecord(**entry) for entry in json.loads(raw)]
        except (ValueError, TypeError) as exc:  # not JSON, or not a list of fault records
            self._set_aside(exc)
            return []

    def _set_aside(self, problem: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        copy = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        try:
            os.replace(self.path, copy)
            fsync_directory(self.path.parent)
            kept = f"kept as {copy}"
        except OSError as exc:
            kept = f"could not be kept as {copy} ({exc}) and will be overwritten"
        message = (f"the fault journal {self.path} was unreadable ({problem}); {kept}. "
                   f"The faults it recorded were not undone one by one, only by the sweep of "
                   f"every machine")
        LOG.warning(message)
        self.set_aside.append(message)

    def take_set_aside(self) -> list[str]:
        """What was set aside since the last call (each reported once)."""
        taken, self.set_aside = self.set_aside, []
        return taken

    def _write(self, records: list[FaultRecord]) -> None:
        ended = [r for r in records if not r.active]
        if len(ended) > self.keep_ended:
            dropped = {id(r) for r in ended[:len(ended) - self.keep_ended]}
            records[:] = [r for r in records if id(r) not in dropped]
        replace_durably(self.path, [json.dumps([asdict(r) for r in records], indent=1)])


def _next_number(records: list[FaultRecord]) -> int:
    """The number of the next fault id ("f<number>-<kind>"): past every id the journal
    holds, so an id is never reused once older records were dropped (the newest is kept)."""
    numbers = [int(r.id[1:].partition("-")[0]) for r in records
               if r.id.startswith("f") and r.id[1:].partition("-")[0].isdigit()]
    return max([len(records), *numbers]) + 1


class Nemesis:
    def __init__(self, machines: Callable[[], list[Machine]], journal: Journal, *,
                 clock: Callable[[], float] = time.time, runtime: Runtime | None = None
                 ) -> None:
        self._machines = machines
        self.journal = journal
        self._clock = clock
        self._runtime = runtime  # host faults: where machines run on several hosts

    # -- host faults (a runtime over several hosts: the swarm) ----------------------------

    def _hosts(self) -> Runtime:
        if self._runtime is None or not self._runtime.hosts():
            raise one_host_error()
        return self._runtime

    def host_stop(self, host: str) -> FaultRecord:
        """Stop a host's engine (every machine on it with it); heal starts it again."""
        self._hosts().stop_host(host)
        return self._record("host-stop", [], {"host": host}, [["host-heal", host]])

    def host_partition(self, host: str) -> FaultRecord:
        self._hosts().partition_host(host)
        return self._record("host-partition", [], {"host": host}, [["host-heal", host]])

    def host_slow(self, host: str, other: str, rate: str) -> FaultRecord:
        self._hosts().slow_link(host, other, rate)
        return self._record("host-slow", [], {"host": host, "other": other, "rate": rate},
                            [["host-heal", host], ["host-heal", other]])

    # -- bookkeeping ---------------------------------------------------------------------

    def records(self) -> list[FaultRecord]:
        return self.journal.load()

    def active(self) -> list[FaultRecord]:
        return [r for r in self.records() if r.active]

    def _record(self, kind: str, machines: Sequence[Machine], params: dict,
                undo: list[list], *, instant: bool = False) -> FaultRecord:
        with self.journal.update() as records:
            now = self._clock()
            record = FaultRecord(id=f"f{_next_number(records)}-{kind}", kind=kind,
                                 machines=[m.name for m in machines], params=params,
                                 started=now, ended=now if instant else None, undo=undo)
            records.append(record)
        if kind in MARKED_KINDS:
            for machine in machines:
                _mark(machine, record.id, kind, True)
        return record

    def _by_name(self) -> dict[str, Machine]:
        return {m.name: m for m in self._machines()}

    def _pick(self, names: Sequence[str]) -> list[Machine]:
        known = self._by_name()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"unknown machine {unknown[0]!r}",
                             hint=f"machines: {', '.join(sorted(known)) or NO_LAB}")
        return [known[n] for n in names]

    def _lab_machines(self, *, running: bool = False) -> list[Machine]:
        """The lab's own machines, but ephemeral ones: the lab makes, replaces and removes
        those by itself, so no sweep restarts or scrubs them and no default partition
        counts them (a fault may still name one)."""
        return [m for m in self._machines() if m.info.lab != "common" and not m.info.ephemeral
                and (not running or m.info.state == "running")]

    # -- process faults ------------------------------------------------------------------

    def kill(self, name: str) -> FaultRecord:
        (machine,) = self._pick([name])
        machine.kill("SIGKILL")
        return self._record("kill", [machine], {}, _start_again(machine))

    def stop(self, name: str) -> FaultRecord:
        (machine,) = self._pick([name])
        machine.stop()
        return self._record("stop", [machine], {}, _start_again(machine))

    def pause(self, name: str) -> FaultRecord:
        (machine,) = self._pick([name])
        machine.pause()
        return self._record("pause", [machine], {}, [["resume", name]])

    def restart(self, name: str) -> FaultRecord:
        (machine,) = self._pick([name])
        machine.restart()
        return self._record("restart", [machine], {}, [], instant=True)

    def start(self, name: str) -> None:
        """Undo a kill or stop of `name` now; ends its records."""
        self._pick([name])[0].start()
        self._end_where(lambda r: r.kind in ("kill", "stop") and r.machines == [name])

    def resume(self, name: str) -> None:
        self._pick([name])[0].resume()
        self._end_where(lambda r: r.kind == "pause" and r.machines == [name])

    # -- network faults ------------------------------------------------------------------

    def partition(self, shape: str, names: Sequence[str] = (), *, target: str | None = None,
                  groups: Sequence[Sequence[str]] | None = None,
                  seed: int | None = None) -> FaultRecord:
        # By default every running lab machine: a stopped one has no address to cut.
        machines = self._pick(names) if names else self._lab_machines(running=True)
        if not machines:
            raise UsageError("no running lab machine to partition", hint=f"machines: {NO_LAB}")
        rng = random.Random(seed) if seed is not None else None
        try:
            grudge = network.partition(shape, [m.name for m in machines], target=target,
                                       groups=groups, rng=rng)
            plans = network.partition_plans(grudge, {m.name: m.info.addresses for m in machines})
        except network.NetworkFaultError as exc:
            raise UsageError(str(exc), hint="distlab chaos partition --help") from None
        undo = self._run_plans(machines, plans)
        cut = sorted(f"{a}-{b}" for a, drops in grudge.items() for b in drops if a < b)
        return self._record("partition", machines, {"shape": shape, "cut": cut}, undo)

    def loss(self, name: str, probability: float) -> FaultRecord:
        (machine,) = self._pick([name])
        plan = self._plan("loss", lambda: network.loss_plan(name, probability))
        undo = self._run_plans([machine], [plan])
        return self._record("loss", [machine], {"probability": probability}, undo)

    def bandwidth(self, name: str, rate: str) -> FaultRecord:
        (machine,) = self._pick([name])
        plan = self._plan("bandwidth", lambda: network.bandwidth_plan(name, rate))
        undo = self._run_plans([machine], [plan], chain=False)
        return self._record("bandwidth", [machine], {"rate": rate}, undo)

    def delay(self, name: str, delay_ms: float, jitter_ms: float = 0.0) -> FaultRecord:
        (machine,) = self._pick([name])
        plan = self._plan("delay",
                          lambda: network.delay_plan(name, delay_ms, jitter_ms=jitter_ms))
        try:
            undo = self._run_plans([machine], [plan], chain=False)
        except FaultError as exc:
            if NETEM_MISSING in str(exc):
                raise FaultError(
                    "kernel-level delay needs sch_netem, which this kernel does not have",
                    hint=f"use RPC-level delay instead: distlab chaos rpc {name} delay "
                         f"--seconds {delay_ms / 1000:g}") from None
            raise
        return self._record("delay", [machine],
                            {"delay_ms": delay_ms, "jitter_ms": jitter_ms}, undo)

    @staticmethod
    def _plan(kind: str, build: Callable[[], network.Plan]) -> network.Plan:
        try:
            return build()
        except network.NetworkFaultError as exc:
            raise UsageError(str(exc), hint=f"distlab chaos {kind} --help") from None

    def _run_plans(self, machines: Sequence[Machine], plans: Sequence[network.Plan], *,
                   chain: bool = True) -> list[list]:
        """Apply every plan; on a failure undo what was applied and raise FaultError."""
        by_name = {m.name: m for m in machines}
        undo: list[list] = []
        try:
            for plan in plans:
                machine = by_name[plan.machine]
                if chain:
                    for argv in network.ensure_chain_commands():
                        machine.exec(argv)
                for index, argv in enumerate(plan.apply):
                    machine.exec(argv)
                    if index == 0:
                        # From its first applied command on, a plan is undone whole: a later
                        # command failing must not leave the earlier ones in place.
                        undo.extend(["exec", plan.machine, list(a)] for a in plan.undo)
        except DistlabError as exc:
            known = {m.name: m for m in machines}
            for step in reversed(undo):
                self._undo_step(step, known)
            raise FaultError(f"could not apply the fault: {exc}") from None
        return undo

    # -- RPC-level faults ----------------------------------------------------------------

    def rpc(self, name: str, action: str, *, method: str = "*", peer: str = "",
            seconds: float = 0.0, jitter: float = 0.0, code: int = 14,
            probability: float = 1.0, duration: float = 0.0,
            outbound: bool = False) -> FaultRecord:
        (machine,) = self._pick([name])
        if action not in RPC_ACTIONS:
            raise UsageError(f"RPC fault action {action!r} is not one of "
                             f"{', '.join(RPC_ACTIONS)}", hint="distlab chaos rpc --help")
        rule = control_pb2.FaultRule(
            method=method, peer=peer, action=RPC_ACTIONS[action],
            direction=(control_pb2.FaultRule.OUTBOUND if outbound
                       else control_pb2.FaultRule.INBOUND),
            delay_seconds=seconds, jitter_seconds=jitter, status_code=code,
            probability=probability, duration_seconds=duration)
        try:
            with machine.control() as control:
                rule_id = control.add_fault_rule(rule)
        except ControlRefused as exc:
            full = exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            raise UsageError(f"{name} refused the rule: {exc.details}",
                             hint=("distlab chaos list shows the faults in force; distlab heal "
                                   "clears them" if full else "distlab chaos rpc --help")
                             ) from None
        except ControlError as exc:
            raise FaultError(f"{name} did not take the rule: {exc.code.name}",
                             hint=exc.hint) from None
        params = {"action": action, "method": method, "peer": peer, "seconds": seconds,
                  "code": code, "probability": probability, "duration": duration,
                  "outbound": outbound}
        return self._record("rpc", [machine], params, [["rpc-clear", name, rule_id]])

    # -- heal ------------------------------------------------------------------------------

    def heal(self) -> list[str]:
        """Undo every recorded fault, then sweep every machine clean; return what failed.

        The undoing runs without the journal's lock (it can take a while); the records
        it ended are marked so afterwards, next to whatever was recorded meanwhile."""
        problems: list[str] = []
        known = self._by_name()
        try:
            records = self.journal.load()
        except OSError as exc:
            records = []
            problems.append(f"the fault journal {self.journal.path} could not be read: {exc}")
        undone = []
        for record in reversed(records):
            if record.active:
                problems += self._undo(record, known)
                undone.append(record)
        problems += self._save_ended(undone)
        problems += self.journal.take_set_aside()
        problems += self._sweep()
        return problems

    def end(self, fault_id: str) -> list[str]:
        """Undo one recorded fault (a scenario's fault window closing); return what failed."""
        records = self.journal.load()
        record = next((r for r in records if r.id == fault_id), None)
        if record is None:
            raise UsageError(f"no fault {fault_id!r} in the journal",
                             hint="distlab chaos list shows the faults")
        if not record.active:
            return []
        problems = self._undo(record, self._by_name())
        return problems + self._save_ended([record])

    def _save_ended(self, ended: list[FaultRecord]) -> list[str]:
        """Mark `ended` (undone from an earlier load) ended in the journal as it is now."""
        if not ended:
            return []
        when = {record.id: record.ended for record in ended}
        try:
            with self.journal.update() as records:
                for record in records:
                    if record.active and record.id in when:
                        record.ended = when[record.id]
        except OSError as exc:
            return [f"the fault journal {self.journal.path} could not be written: {exc}"]
        return []

    def _undo(self, record: FaultRecord, known: dict[str, Machine]) -> list[str]:
        """Run a record's undo steps, newest first, and mark it ended."""
        problems = []
        for step in reversed(record.undo):
            problem = self._undo_step(step, known)
            if problem:
                problems.append(f"{record.id}: {problem}")
        if record.kind in MARKED_KINDS:
            for name in record.machines:
                if name in known:
                    _mark(known[name], record.id, record.kind, False)
        record.ended = self._clock()
        return problems

    def _sweep(self) -> list[str]:
        """Whatever the journal says: every host's engine running and its network whole,
        every lab machine running, no rule, no iptables, no qdisc."""
        problems = []
        for host in self._runtime.hosts() if self._runtime is not None else ():
            try:
                self._runtime.heal_host(host)
            except DistlabError as exc:
                problems.append(f"{host}: {exc}")
        for machine in self._lab_machines():
            try:
                if machine.info.state == "paused":
                    machine.resume()
                elif machine.info.state in ("exited", "created", "dead"):
                    machine.start()
            except DistlabError as exc:
                problems.append(f"{machine.name}: {exc}")
                continue
        running = [m for m in self._lab_machines() if m.info.state == "running"]
        # Each machine is an exec and an RPC of its own, a good part of a second for a lab
        # of a dozen machines one after the other, and every e2e test heals twice.
        with ThreadPoolExecutor(max_workers=SWEEP_WORKERS) as pool:
            for found in pool.map(_sweep_machine, running):
                problems += found
        return problems

    def _undo_step(self, step: list, known: dict[str, Machine]) -> str | None:
        kind, name, *rest = step
        if kind == "host-heal":
            try:
                self._hosts().heal_host(name)
            except DistlabError as exc:
                return f"{name}: {exc}"
            return None
        machine = known.get(name)
        if machine is None:
            return f"{name} no longer exists"
        try:
            if kind == "exec":
                machine.exec(rest[0], check=False)
            elif kind == "start":
                machine.refresh()
                if machine.info.state != "running":
                    machine.start()
            elif kind == "resume":
                if machine.refresh().info.state == "paused":
                    machine.resume()
            elif kind == "rpc-clear":
                _clear_rules(machine, [rest[0]])
        except DistlabError as exc:
            return f"{name}: {exc}"
        return None

    def _end_where(self, predicate: Callable[[FaultRecord], bool]) -> None:
        with self.journal.update() as records:
            for record in records:
                if record.active and predicate(record):
                    record.ended = self._clock()


def _start_again(machine: Machine) -> list[list]:
    """The undo of a kill or stop: start the machine, unless its lab replaces it by itself
    (an ephemeral machine, such as a serverless instance, is gone for good)."""
    return [] if machine.info.ephemeral else [["start", machine.name]]


def _mark(machine: Machine, fault_id: str, kind: str, active: bool) -> None:
    """Tell the node about a fault applied from outside, for its distlab_fault_active gauge.

    Best effort: a machine the fault cut off may not answer, and the fault holds either way.
    """
    try:
        with machine.control() as control:
            control.mark_fault(fault_id, kind, active)
    except DistlabError:
        pass


def _sweep_machine(machine: Machine) -> list[str]:
    """No iptables rule, no qdisc, no RPC fault rule left in one running machine."""
    problems = []
    try:
        for argv in network.heal_commands():
            machine.exec(argv)
    except DistlabError as exc:
        problems.append(f"{machine.name}: {exc}")
    _clear_rules(machine)
    return problems


def _clear_rules(machine: Machine, rule_ids: Sequence[str] = ()) -> None:
    try:
        with machine.control() as control:
            control.clear_fault_rules(rule_ids)
    except DistlabError:
        pass  # stopped, or an expired or already cleared rule: nothing left to undo
