"""`chain:head`, `chain:middle`, `chain:tail`: the data replica holding a chain position now.

Which replica is the head changes as the data master reconfigures the chain, so a
scenario names the position and the runner asks the replicas when the fault starts
(each says its `position` in Control.Status).
"""

from __future__ import annotations

from collections.abc import Sequence

from distlab.errors import DistlabError
from distlab.labs import Lab
from distlab.machine import Machine
from distlab.registry import RefKind

POSITIONS = ("head", "middle", "tail")
DATA_ROLE = "data"


def holder(machines: Sequence[Machine], position: str) -> str | None:
    """The running data replica that says it is at `position`, or None."""
    for machine in machines:
        if machine.info.role != DATA_ROLE or machine.info.state != "running":
            continue
        try:
            with machine.control() as control:
                state = control.status().state
        except DistlabError:
            continue
        if state.get("position") == position:
            return machine.name
    return None


def _unavailable(lab: Lab) -> str | None:
    if DATA_ROLE in lab.services:
        return None
    return f"needs a lab with a chain-replicated data service; lab '{lab.name}' has none"


CHAIN_REF = RefKind("chain", POSITIONS, "a chain position", _unavailable, holder)
