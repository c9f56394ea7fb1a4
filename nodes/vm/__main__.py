"""python -m nodes.vm — a vm: a memory image with a guest, served and migrated live (see --help)."""

import sys

from nodes.common.config import Setting, non_negative, parse_bool, positive
from nodes.common.role import RoleSpec
from nodes.common.server import main
from nodes.vm.machine import GUESTS
from nodes.vm.service import PROTECTED, VmNode


def _fraction(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def _size(value: float) -> str | None:
    return None if 0 < value <= 64 * 1024 else "must be in (0, 65536] MiB"


def _count(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0"


SPEC = RoleSpec(
    name="vm",
    summary="a vm: a memory image of 4 KiB pages with a guest that dirties them, a page and "
            "KV data plane, and live migration to another vm process (stop-and-copy, "
            "pre-copy, post-copy).",
    settings=(
        Setting("VM_INCOMING", parse_bool, False, "start empty and wait for an incoming "
                "migration (as QEMU's -incoming); the VM_* guest settings then come from "
                "the source"),
        Setting("VM_GUEST", str, "pages", "what the vm runs: pages (a memory image and a "
                "guest that dirties it) or kv (the kv role's store, moved by dirty keys; its "
                "clients are its workload)",
                lambda v: None if v in GUESTS else f"must be one of {', '.join(GUESTS)}"),
        Setting("VM_INCOMING_MAX_MIB", float, 1024.0, "the largest image an incoming "
                "migration may bring (refused RESOURCE_EXHAUSTED above)", _size),
        Setting("VM_IMAGE_MIB", float, 64.0, "size of the memory image in MiB", _size),
        Setting("VM_KV_PAGES", int, 16, "pages at the start of the image that hold the KV",
                _count),
        Setting("VM_HOT_PAGES", int, 256, "the guest's writable working set: pages it "
                "writes most", positive),
        Setting("VM_HOT_FRACTION", float, 0.9, "share of guest writes that go to the hot "
                "pages (the rest: any guest page)", _fraction),
        Setting("VM_DIRTY_RATE", float, 1000.0, "guest page writes per second", non_negative),
        Setting("VM_GUEST_STEPS", int, 0, "the guest stops after this many writes (0: never), "
                "so a finished run's image is known", _count),
        Setting("VM_GUEST_SEED", int, 1, "seed of the guest's writes", _count),
        Setting("VM_HOLD_SECONDS", float, 5.0, "how long a client call waits while the vm "
                "is paused for a migration", positive),
        Setting("VM_FAULT_TIMEOUT_SECONDS", float, 10.0, "post-copy: how long an access waits "
                "for a page from the source", positive),
        Setting("VM_MIN_RATE_MIB", float, 32.0, "pre-copy: rate of the first round, MiB/s",
                positive),
        Setting("VM_MAX_RATE_MIB", float, 256.0, "pre-copy: highest rate (and the final "
                "round's), MiB/s; 0: unlimited", non_negative),
        Setting("VM_RATE_INCREMENT_MIB", float, 16.0, "pre-copy: a round's rate is the last "
                "round's dirtying rate plus this, MiB/s", non_negative),
        Setting("VM_MAX_ROUNDS", int, 29, "pre-copy: rounds before the final stop-and-copy",
                positive),
        Setting("VM_CHUNK_PAGES", int, 64, "pages per Transfer message (at most 256)",
                lambda v: None if 1 <= v <= 256 else "must be 1-256"),
        Setting("VM_MIGRATION_TIMEOUT_SECONDS", float, 300.0, "deadline of a whole migration",
                positive),
    ),
    build=VmNode,
    protected=PROTECTED,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
