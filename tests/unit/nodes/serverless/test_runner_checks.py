"""What the runner refuses to deploy, before any of the function's code runs."""

from __future__ import annotations

import pytest

from nodes.rpc import serverless_pb2
from nodes.serverless.runner import _check_function

GOOD = "def handle(event, context):\n    return event\n"


def spec(name: str = "f", source: str = GOOD, **limits) -> serverless_pb2.FunctionSpec:
    return serverless_pb2.FunctionSpec(name=name, source=source, **limits)


def test_a_good_function_passes():
    assert _check_function(spec()) == ""


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "Upper", "-x", "x" * 41, "a b", "é"])
def test_a_name_that_could_leave_its_directory_or_its_label_is_refused(name):
    assert "function name" in _check_function(spec(name=name))


def test_source_that_does_not_compile_says_where():
    assert _check_function(spec(source="def handle(e, c)\n    pass\n")) == (
        "function f does not compile: expected ':' (line 1)")


def test_source_without_a_top_level_handle_is_refused():
    assert "has no handle" in _check_function(spec(source="def other(e, c):\n    pass\n"))
    nested = "class K:\n    def handle(self, e, c):\n        pass\n"
    assert "has no handle" in _check_function(spec(source=nested))


def test_oversized_source_and_negative_limits_are_refused():
    assert "over 256 KiB" in _check_function(spec(source=GOOD + "#" * 300_000))
    assert "never negative" in _check_function(spec(timeout_seconds=-1))
