"""Workloads: bounded client loads (count AND time) that record a History."""
