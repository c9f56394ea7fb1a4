"""`python -m nodes.vm` as a real process: --help, a bad variable, JSON logs, and SIGTERM while
the guest runs: exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys

from nodes.rpc import vm_pb2
from tests.integration.vm_support import GUEST, vms  # noqa: F401 - vms is a fixture


def test_help_lists_the_vm_settings():
    done = subprocess.run([sys.executable, "-m", "nodes.vm", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    for name in ("VM_INCOMING", "VM_IMAGE_MIB", "VM_HOT_PAGES", "VM_HOT_FRACTION",
                 "VM_DIRTY_RATE", "VM_GUEST_STEPS", "VM_MIN_RATE_MIB", "VM_MAX_RATE_MIB",
                 "VM_MAX_ROUNDS", "GRPC_PORT", "METRICS_PORT"):
        assert name in done.stdout


def test_a_bad_variable_exits_2_naming_it(tmp_path):
    for name, value in (("VM_HOT_FRACTION", "2"), ("VM_IMAGE_MIB", "0"),
                        ("VM_CHUNK_PAGES", "1000"), ("VM_INCOMING", "maybe")):
        done = subprocess.run([sys.executable, "-m", "nodes.vm"], capture_output=True,
                              text=True, timeout=30,
                              env={"PATH": "", "GRPC_PORT": "0", "METRICS_PORT": "0",
                                   "DATA_DIR": str(tmp_path), name: value})
        assert done.returncode == 2, (name, done.stderr)
        assert name in done.stderr and "Traceback" not in done.stderr


def test_a_vm_whose_layout_cannot_hold_its_kv_exits_2_saying_why(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nodes.vm"], capture_output=True, text=True,
                          timeout=30, env={"GRPC_PORT": "0", "METRICS_PORT": "0",
                                           "DATA_DIR": str(tmp_path), "VM_IMAGE_MIB": "0.0625",
                                           "VM_KV_PAGES": "16"})
    assert done.returncode == 2 and "VM_KV_PAGES" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_while_the_guest_runs_exits_0_with_json_logs(vms):  # noqa: F811
    vm = vms.start("vm-7", **{**GUEST, "VM_GUEST_STEPS": "0"})
    assert vms.status(vm).state == "running"
    vms.data(vm).Put(vm_pb2.PutRequest(key=b"a", value=b"b"), timeout=10)
    vm.process.send_signal(signal.SIGTERM)
    assert vm.process.wait(timeout=20) == 0
    assert [e["event"] for e in vm.events][-2:] == ["node_stopping", "node_stopped"]
    assert all(e["node"] == "vm-7" and e["role"] == "vm" for e in vm.events)
