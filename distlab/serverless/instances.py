"""`instance:busy`: a function instance running a request now. Instances are made and
removed by the runner, not by Compose, so a scenario cannot name one in advance; the
runner says which are busy (Control.Status `busy`) when the fault starts. With none busy,
the newest running instance is taken (the one most likely to get the next request)."""

from __future__ import annotations

from collections.abc import Sequence

from distlab.errors import DistlabError
from distlab.labs import Lab
from distlab.machine import Machine
from distlab.registry import RefKind
from distlab.serverless.client import RUNNER_ROLE

INSTANCE_ROLE = "serverless-instance"


def busy_instance(machines: Sequence[Machine], _: str) -> str | None:
    running = [m for m in machines if m.info.role == INSTANCE_ROLE and m.info.state == "running"]
    busy: list[str] = []
    for runner in (m for m in machines if m.info.role == RUNNER_ROLE
                   and m.info.state == "running"):
        try:
            with runner.control() as control:
                busy = [b for b in control.status().state.get("busy", "").split(",") if b]
        except DistlabError:
            continue
    names = {m.name for m in running}
    chosen = next((b for b in busy if b in names), None)
    if chosen is None and running:
        chosen = max(running, key=lambda m: m.info.container).name
    return chosen


def _unavailable(lab: Lab) -> str | None:
    if lab.name == "serverless":
        return None
    return f"needs the serverless lab's function instances; lab '{lab.name}' has none"


INSTANCE_REF = RefKind("instance", ("busy",), "an instance state", _unavailable, busy_instance)
