"""`distlab run`: bring the lab up, play a scenario, heal, check, report, clean up.

A scenario is a YAML file (distlab.scenarios.spec) or a Python file holding the
same YAML as `SCENARIO` plus a `run(ctx)` function given the ScenarioContext,
for what YAML cannot say. The runner owns everything around it: the lab (up
before, down after unless `keep`, left running when it was running before),
the fault gauge Prometheus scrapes, Ctrl-C (heal and clean before exiting),
and the report directory. Exit codes, for CI: 0 every check valid, 1 a check
invalid, 2 unknown or the run itself failed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from distlab.errors import DistlabError
from distlab.history import History
from distlab.report import FaultWindow, RunSummary, report_dir, write_report
from distlab.scenarios.context import (
    HEALTHY_AFTER_HEAL_SECONDS,
    MIGRATIONS_END_SECONDS,
    ScenarioContext,
)
from distlab.scenarios.exporter import RUNNER_TARGETS_PATH, FaultExporter, lab_gateway
from distlab.scenarios.model import Scenario
from distlab.scenarios.schedule import Event, plan
from distlab.scenarios.spec import load_scenario, parse_scenario
from distlab.testbed import Testbed

Script = Callable[[ScenarioContext], None]
UNSERVED_METHODS = ("grpc.health", "distlab.control.Control/", "ServerReflection")
INTERRUPTED = "interrupted (Ctrl-C) before the checks: the lab was healed; no verdict"


@dataclass(frozen=True)
class RunOptions:
    seed: int | None = None
    keep: bool = False
    short: bool = False
    reports_root: Path = Path("reports")
    up_timeout: float = 240.0


@dataclass(frozen=True)
class RunResult:
    summary: RunSummary
    directory: Path


def load(path: Path, testbed: Testbed) -> tuple[Scenario, Script | None]:
    """The scenario of a YAML or Python file, validated; ScenarioError says what is wrong."""
    if not path.exists():
        raise DistlabError(f"no scenario file {path}", hint="scenarios are under scenarios/")
    if path.suffix == ".py":
        module = _import(path)
        text = getattr(module, "SCENARIO", None)
        script = getattr(module, "run", None)
        if not isinstance(text, str) or not callable(script):
            raise DistlabError(f"{path}: a Python scenario defines SCENARIO (its YAML header, "
                               f"a string) and run(ctx)", hint="see docs/scenarios.md")
        return parse_scenario(text, testbed.catalogue, registry=testbed.registry,
                              source=str(path), default_name=path.stem), script
    if path.suffix not in (".yaml", ".yml"):
        raise DistlabError(f"{path}: a scenario is a .yaml or .py file")
    return load_scenario(path, testbed.catalogue, testbed.registry), None


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"distlab_scenario_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in the user's file is reported as such
        raise DistlabError(f"{path}: could not load: {type(exc).__name__}: {exc}") from None
    return module


class ScenarioRunner:
    def __init__(self, testbed: Testbed, scenario: Scenario, script: Script | None = None, *,
                 options: RunOptions = RunOptions(), command: str = "",
                 say: Callable[[str], None] = print) -> None:
        if options.seed is not None:
            scenario = scenario.with_seed(options.seed)
        if options.short:
            scenario = scenario.shortened()
        self.scenario = scenario
        self.testbed = testbed
        self.script = script
        self.options = options
        self.command = command
        self.say = say
        self.ctx: ScenarioContext | None = None
        self._exporter = FaultExporter(scenario.name, lab=scenario.lab)
        self._started_lab = False

    def run(self) -> RunResult:
        scenario = self.scenario
        started_wall = time.time()
        error = ""
        try:
            self._bring_up()
            self.ctx = ScenarioContext(self.testbed, lab=scenario.lab, seed=scenario.seed,
                                       scale=dict(scenario.scale),
                                       environment=dict(scenario.environment),
                                       observer=self._exporter, say=self.say)
            self._export_faults()
            self._play()
        except KeyboardInterrupt:
            error = INTERRUPTED
            self.say(error)
        except DistlabError as exc:
            error = str(exc) + (f" ({exc.hint})" if exc.hint else "")
            self.say(f"the run failed: {error}")
        except Exception as exc:  # noqa: BLE001 - a Python scenario's own bug: still heal, clean
            error = f"{type(exc).__name__}: {exc}"
            self.say(traceback.format_exc().rstrip())
            self.say(f"the run failed: {error}")
        with _ctrl_c_ignored():
            return self._finish(started_wall, error)

    # -- the run --------------------------------------------------------------------------

    def _bring_up(self) -> None:
        scenario = self.scenario
        running = [m for m in self.testbed.machines()
                   if m.info.lab == scenario.lab and m.info.state in ("running", "paused")]
        if running:
            self.say(f"using the running {scenario.lab} lab; healing what is left of faults")
            self.testbed.nemesis.heal()
        else:
            self.say(f"bringing the {scenario.lab} lab up")
        self._started_lab = not running
        self.testbed.up(scenario.lab, [f"{s}={n}" for s, n in scenario.scale.items()],
                        timeout=self.options.up_timeout, environment=scenario.environment)

    def _export_faults(self) -> None:
        """Best effort: the gauge is for dashboards; the verdict does not depend on it."""
        gateway = lab_gateway(self.testbed.runtime.machines())
        if gateway is None:
            self.say("no lab network address on this host: faults are not exported")
            return
        try:
            self._exporter.start(gateway)
            self.testbed.write_targets(RUNNER_TARGETS_PATH,
                                       self._exporter.target_document(gateway))
        except (OSError, DistlabError) as exc:
            self.say(f"faults are not exported to Prometheus: {exc}")

    def _play(self) -> None:
        scenario, ctx = self.scenario, self.ctx
        ctx.start_workloads(scenario.workloads, seconds=scenario.duration)
        self.say(f"t=   0.0s  {scenario.name}: seed {scenario.seed}, "
                 f"{scenario.duration:g} s")
        if self.script is not None:
            self.script(ctx)
        else:
            self._play_timeline(plan(scenario, self.testbed.registry))
        ctx.sleep_until(scenario.duration)
        ctx.wait_migrations(MIGRATIONS_END_SECONDS)
        ctx.stop_workloads()
        problems = ctx.heal_all() + ctx.revert_migrations()
        if problems:
            raise DistlabError(f"healing left problems: {'; '.join(problems)}")
        self.testbed.wait_healthy(self.testbed.catalogue.lab(scenario.lab),
                                  timeout=HEALTHY_AFTER_HEAL_SECONDS)
        self.say(f"healed; checking {len(ctx.history)} operations")
        ctx.settle_and_check(scenario.checks, scenario.expectations)

    def _play_timeline(self, events: list[Event]) -> None:
        ctx = self.ctx
        windows: dict[int, FaultWindow] = {}
        for event in events:
            ctx.sleep_until(event.at)
            try:
                if event.action == "fault":
                    windows[event.index] = ctx.inject(event.fault, index=event.index)
                elif event.action == "heal":
                    if event.ref in windows:
                        ctx.heal(windows[event.ref])
                else:
                    ctx.migrate(event.migration)
            except DistlabError as exc:
                if event.source != "nemesis":
                    raise
                # A random fault may name a machine another fault just took away: skip it.
                self.say(f"t={ctx.now():6.1f}s  nemesis skipped {event.label}: {exc}")

    # -- the end --------------------------------------------------------------------------

    def _finish(self, started_wall: float, error: str) -> RunResult:
        ctx, scenario = self.ctx, self.scenario
        if ctx is not None and error:
            ctx.stop_workloads()
            problems = ctx.heal_all() + ctx.revert_migrations()
            if problems:
                error += f"; healing left problems: {'; '.join(problems)}"
        self._exporter.stop()
        try:
            self.testbed.write_targets(RUNNER_TARGETS_PATH, b"[]")
        except DistlabError:
            pass  # Prometheus is gone with the lab, or never came
        summary = RunSummary(
            scenario=scenario.name, description=scenario.description, lab=scenario.lab,
            seed=scenario.seed, duration=scenario.duration, started_wall=started_wall,
            finished_wall=time.time(), verdicts=list(ctx.verdicts) if ctx else [],
            faults=list(ctx.windows) if ctx else [],
            rpc_counts=self._rpc_counts(started_wall) if ctx else {},
            versions=versions(), error=error, command=self.command,
            migrations=[asdict(run) for run in ctx.migration_runs] if ctx else [])
        directory = report_dir(self.options.reports_root, scenario.name, started_wall)
        history = ctx.history if ctx else None
        write_report(directory, summary, history if history is not None else History())
        if self._started_lab and not self.options.keep:
            self.say(f"bringing the {scenario.lab} lab down (--keep leaves it up)")
            try:
                self.testbed.down()
            except DistlabError as exc:
                summary.error = summary.error or f"could not bring the lab down: {exc}"
        return RunResult(summary, directory)

    def _rpc_counts(self, since_wall: float) -> dict[str, dict[str, float]]:
        """Calls each machine served during the run, by method, from Prometheus."""
        seconds = max(10, int(time.time() - since_wall) + 10)
        expr = (f'sum by (machine, method) (increase(distlab_rpc_server_handled_total'
                f'{{lab="{self.scenario.lab}"}}[{seconds}s]))')
        try:
            self.testbed.sync_targets()
            rows = self.testbed.prometheus.query(expr)
        except DistlabError as exc:
            self.say(f"no RPC counts: {exc}")
            return {}
        counts: dict[str, dict[str, float]] = {}
        for row in rows:
            labels, value = row["metric"], float(row["value"][1])
            method = labels.get("method", "")
            if value > 0 and not any(part in method for part in UNSERVED_METHODS):
                counts.setdefault(labels.get("machine", "?"), {})[method] = round(value)
        return counts


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("distlab", "grpcio", "protobuf", "docker"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


@contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Healing and cleaning up are not to be cut short by a second Ctrl-C."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to protect
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
