"""`distlab task`: its arguments as typed, and what `show` prints of a task that moved."""

from __future__ import annotations

import pytest

from distlab.errors import UsageError
from distlab.migration.tasks import Whereabouts, describe, parse_arg
from nodes.rpc import mobility_pb2


@pytest.mark.parametrize("text, expected", [
    ("n=5000", ("n", "5000")), (" limit=-3 ", ("limit", "-3")),
    ("big=" + "9" * 100, ("big", "9" * 100)),
])
def test_an_argument_is_name_equals_integer(text, expected):
    assert parse_arg(text) == expected


@pytest.mark.parametrize("text", ["n", "n=", "n=five", "=5", "9n=5", "n=5.0"])
def test_a_wrong_argument_says_what_it_should_look_like(text):
    with pytest.raises(UsageError) as raised:
        parse_arg(text)
    assert "is not NAME=INTEGER" in str(raised.value) and raised.value.hint == "--arg n=5000"


def test_show_names_where_a_moved_task_is_its_path_output_and_error():
    info = mobility_pb2.TaskInfo(id="abc", name="primes", host="host-3", state="done",
                                 steps=1234, output=["669"], mode="strong",
                                 arrived_from="host-2")
    assert describe(Whereabouts(info, ("host-1", "host-2", "host-3"))) == [
        "task abc (primes): done on host-3 after 1234 steps",
        "path: host-1 -> host-2 -> host-3", "output: 669"]
    failed = mobility_pb2.TaskInfo(id="x", name="t", host="host-1", state="failed", steps=2,
                                   mode="shipped", error="line 3: div: division by zero")
    assert describe(Whereabouts(failed, ("host-1",))) == [
        "task x (t): failed on host-1 after 2 steps", "came shipped",
        "error: line 3: div: division by zero"]
