"""The serverless lab's registration: `distlab fn ...`. Clients talk to the runner."""

from __future__ import annotations

from distlab.registry import LabPlugin
from distlab.serverless.cli import fn
from distlab.serverless.client import RUNNER_ROLE

LAB = LabPlugin("serverless", entry_role=RUNNER_ROLE, commands=(fn,))
