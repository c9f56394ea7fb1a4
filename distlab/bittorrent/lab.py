"""The bittorrent lab's registration: `distlab bt ...`. No workload yet (its clients are
the peers, which come in a later slice), so no entry role."""

from __future__ import annotations

from distlab.bittorrent.cli import bt
from distlab.registry import LabPlugin

LAB = LabPlugin("bittorrent", commands=(bt,))
