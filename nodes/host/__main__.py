"""python -m nodes.host — the migration lab's hypervisor: starts and moves vm processes, and
runs and moves mobile code (nodes.mobility) beside them."""

import sys

from nodes.common.config import Setting, non_negative, positive
from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.host.service import PROTECTED, HostNode, parse_pairs, parse_ports

SPEC = RoleSpec(
    name="host",
    summary="a hypervisor: starts `python -m nodes.vm` processes, moves them live to "
            "another host's hypervisor, and reports what it holds; runs shipped programs "
            "(nodes.mobility) and moves them mid-run.",
    settings=(
        Setting("HOST_VM_PORTS", parse_ports, (50100, 50131), "gRPC ports of the vm processes, "
                "first-last (each vm's metrics: its port + 1000)"),
        Setting("HOST_ADVERTISE", str, "", "the name or address other machines reach this "
                "host's vms at (default: its container name, else the hostname)"),
        Setting("HOST_VM_START_SECONDS", float, 30.0, "how long a vm process gets to answer",
                positive),
        Setting("HOST_MIGRATION_TIMEOUT_SECONDS", float, 600.0, "deadline of one migration",
                positive),
        Setting("HOST_INCOMING_WAIT_SECONDS", float, 60.0, "an incoming vm no source has "
                "begun sending to by then is stopped (so is one whose transfer broke off)",
                positive),
        Setting("HOST_SWITCHES", lambda raw: parse_pairs(raw, "="), {},
                "the switch in front of each vm, vm=host:port, comma list: held while the vm "
                "pauses, re-pointed when it has moved"),
        Setting("HOST_BOOT_VMS", lambda raw: parse_pairs(raw, "@"), {},
                "vms started with the host, vm@host comma list (a host starts those naming "
                "it, with its own VM_* settings)"),
        Setting("HOST_VM_GUESTS", lambda raw: parse_pairs(raw, "="), {},
                "what a booted vm runs when it is not a memory image of pages, vm=guest "
                "comma list (kv-1=kv: the kv role's store, moved by dirty keys)"),
        Setting("MOBILITY_STEPS_PER_SECOND", int, 20_000, "instructions a shipped task runs "
                "a second at most (slow enough for a demo task to be moved mid-run)",
                positive),
        Setting("MOBILITY_MAX_TASKS", int, 32, "tasks running here at once; more are refused "
                "(RESOURCE_EXHAUSTED)", positive),
        Setting("MOBILITY_KEEP_FINISHED", int, 256, "finished tasks and forwarding entries of "
                "moved ones kept to be asked about (the oldest go first)", non_negative),
    ),
    build=HostNode,
    protected=PROTECTED,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
