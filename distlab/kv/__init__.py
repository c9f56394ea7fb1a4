"""The kv lab on the host: its registration. Its machines serve the KV service, so the
register workload (registered by the tiers lab) runs against them directly."""

from __future__ import annotations

from distlab.registry import LabPlugin

LAB = LabPlugin("kv", entry_role="kv", serves=("register",))
