"""Scenarios: the YAML format, its runner, the fault schedule, the fault gauge."""
