"""The hypervisor's vm table: names checked, ports handed out from the range and reused."""

import pytest

from nodes.host.table import TableError, VmEntry, VmTable


def test_ports_come_from_the_range_in_order_and_are_reused_when_freed():
    table = VmTable(50100, 50102)
    for name in ("vm-1", "vm-2"):
        table.add(VmEntry(name, table.reserve(name), process=None, incoming=False))
    assert [e.port for e in table.entries.values()] == [50100, 50101]
    table.remove("vm-1")
    assert table.reserve("vm-3") == 50100


def test_a_full_range_a_taken_name_a_bad_name_and_an_unknown_name_are_refused():
    table = VmTable(50100, 50100)
    table.add(VmEntry("vm-1", table.reserve("vm-1"), process=None, incoming=False))
    for name, code in (("vm-2", "RESOURCE_EXHAUSTED"), ("vm-1", "ALREADY_EXISTS"),
                       ("VM 1", "INVALID_ARGUMENT"), ("", "INVALID_ARGUMENT")):
        with pytest.raises(TableError) as refused:
            table.reserve(name)
        assert refused.value.code == code
    with pytest.raises(TableError, match="no vm named 'vm-9'"):
        table.get("vm-9")


def test_a_bad_range_is_refused():
    with pytest.raises(ValueError):
        VmTable(50110, 50100)
