"""The chord lab's registration: `distlab chord ring` and `distlab sim chord`."""

from __future__ import annotations

from distlab.chord.cli import chord, sim_chord
from distlab.registry import LabPlugin

LAB = LabPlugin("chord", commands=(chord,), sim_commands=(sim_chord,))
