"""A function as an instance loads and runs it: results, the function's own errors with
their line and log lines, bad events and results, bad source, and the context."""

from __future__ import annotations

import json

import pytest

from nodes.serverless.function import MAX_LOG_LINES, Context, LoadError, load

WORDS = '''
def handle(event, context):
    context.log(f"counting for {context.invocation_id}")
    print("printed too")
    return {"words": len(event["text"].split())}
'''


def run(source, event, **kwargs):
    return load("f", source).run(json.dumps(event), invocation_id="inv-1", timeout=5, **kwargs)


def test_a_result_comes_back_as_json_with_the_log_lines():
    outcome = run(WORDS, {"text": "to be or not to be"})
    assert outcome.ok and json.loads(outcome.result) == {"words": 6}
    assert outcome.logs == ("counting for inv-1", "printed too")


def test_the_functions_exception_is_its_error_with_message_line_and_logs():
    outcome = run(WORDS, {"no text": 1})
    assert not outcome.ok
    assert outcome.error == "KeyError: 'text' (line 5)"
    assert outcome.logs == ("counting for inv-1", "printed too")


def test_a_function_that_calls_exit_gets_an_error_not_a_stopped_instance():
    outcome = run("import sys\ndef handle(event, context):\n    sys.exit(2)\n", {})
    assert outcome.error == "SystemExit: 2 (line 3)"


def test_the_same_function_serves_the_next_request_after_an_error():
    function = load("f", WORDS)
    assert not function.run("{}", invocation_id="a", timeout=5).ok
    assert function.run('{"text": "x y"}', invocation_id="b", timeout=5).result == '{"words": 2}'


def test_an_event_that_is_not_json_and_a_result_that_is_not_are_clear_errors():
    function = load("f", "def handle(event, context):\n    return {1, 2}\n")
    assert function.run("{nope", invocation_id="a", timeout=5).error.startswith(
        "the event is not JSON")
    assert function.run("{}", invocation_id="a", timeout=5).error.startswith(
        "the function returned a value that is not JSON")


@pytest.mark.parametrize("source, message", [
    ("def handle(event, context)\n    return 1\n",
     "does not load: SyntaxError: expected ':' (line 1)"),
    ("x = 1\n", "has no handle(event, context)"),
    ("handle = 3\n", "has no handle(event, context)"),
    ("raise RuntimeError('no config')\n", "does not load: RuntimeError: no config"),
    ("import sys\nsys.exit(3)\n", "does not load: SystemExit: 3"),
])
def test_bad_source_is_refused_at_load_saying_why(source, message):
    with pytest.raises(LoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load("f", source)


def test_the_context_counts_down_and_bounds_the_log():
    now = [100.0]
    context = Context("inv", deadline=105.0, clock=lambda: now[0])
    assert context.remaining_seconds() == 5.0
    now[0] = 107.0
    assert context.remaining_seconds() == 0.0
    for n in range(MAX_LOG_LINES + 50):
        context.log(n)
    assert len(context.logs) == MAX_LOG_LINES + 1
    assert context.logs[-1].startswith("... (log lines past")


def test_storage_reaches_the_function_through_the_context():
    store = {}
    source = "def handle(event, context):\n    context.storage[event['k']] = event['v']\n"
    assert run(source, {"k": "a", "v": 1}, storage=store).ok
    assert store == {"a": 1}
