"""Runtimes: where machines run. `Runtime` is the interface, `ComposeRuntime` the first backend."""

from distlab.runtime.base import MachineInfo, Runtime

__all__ = ["MachineInfo", "Runtime"]
