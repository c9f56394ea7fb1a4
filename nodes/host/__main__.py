"""python -m nodes.host — the migration lab's hypervisor: starts and moves vm processes."""

import sys

from nodes.common.config import Setting, positive
from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.host.service import PROTECTED, HostNode, parse_pairs, parse_ports

SPEC = RoleSpec(
    name="host",
    summary="a hypervisor: starts `python -m nodes.vm` processes, moves them live to "
            "another host's hypervisor, and reports what it holds.",
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
    ),
    build=HostNode,
    protected=PROTECTED,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
