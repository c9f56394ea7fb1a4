"""The mobile-code language: what parses and what is refused (with its line), what each
instruction does, every bound, determinism, and the property strong mobility rests on:
a task stopped at any step, sent as JSON and resumed ends exactly as one never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.mobility.language import (
    DEFAULT_LIMITS,
    DONE,
    FAILED,
    RUNNING,
    LanguageError,
    Limits,
    Task,
    parse,
    parse_args,
)

PROGRAMS = Path(__file__).resolve().parents[4] / "nodes" / "mobility" / "programs"


def example(name: str):
    return parse((PROGRAMS / f"{name}.asm").read_text())


def run(text: str, limits: Limits = DEFAULT_LIMITS, **args: int) -> Task:
    task = Task(parse(text, limits), args, limits)
    task.run(10_000_000)
    return task


def parse_error(text: str, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(LanguageError) as raised:
        parse(text, limits)
    return str(raised.value)


def test_the_examples_compute_what_they_say():
    for name, n, output in (("primes", 1000, [168]), ("collatz", 1000, [871, 179]),
                            ("sum", 100, [5050])):
        task = Task(example(name), {"n": n})
        task.run(10_000_000)
        assert (task.state, task.output, task.error) == (DONE, output, ""), name


@pytest.mark.parametrize("text, says", [
    ("push 1\npsh 2\n", "line 2: unknown instruction 'psh'"),
    ("push x\n", "line 1: push takes an integer, not 'x'"),
    ("push\n", "line 1: push takes one integer"),
    ("add 1\n", "line 1: add takes no argument"),
    ("load 9x\n", "line 1: '9x' is not a variable name"),
    ("# nothing\n\njmp nowhere\n", "line 3: jmp to unknown label 'nowhere'"),
    ("a:\npush 1\na:\n", "line 3: label 'a' is defined twice (first on line 1)"),
    ("1a:\n", "line 1: '1a' is not a label name"),
    ("# only a comment\n", "the program has no instructions"),
])
def test_a_wrong_program_is_refused_with_its_line(text, says):
    assert parse_error(text) == says


def test_program_size_and_length_are_bounded():
    assert "over the limit of 100" in parse_error("push 1\n" * 20, Limits(program_bytes=100))
    assert "line 4: over the limit of 3 instructions" in parse_error(
        "push 1\n" * 4, Limits(instructions=3))


def test_labels_comments_and_a_label_before_an_instruction_on_one_line():
    assert run("  push 2  # two\nloop: push 3\nmul\nemit\n").output == [6]


@pytest.mark.parametrize("ops, output", [
    ("push 7\npush 3\nadd", 10), ("push 7\npush 3\nsub", 4), ("push 7\npush 3\nmul", 21),
    ("push 7\npush 3\ndiv", 2), ("push -7\npush 2\ndiv", -4), ("push -7\npush 2\nmod", 1),
    ("push 2\npush 3\nlt", 1), ("push 3\npush 2\nlt", 0), ("push 3\npush 3\neq", 1),
    ("push 0\nnot", 1), ("push 5\nnot", 0), ("push 4\ndup\nmul", 16),
    ("push 1\npush 2\npop", 1), ("push 1\npush 2\nswap\nsub", 1),
    ("push 9\nstore x\nload x", 9), ("push 1\njmp over\npush 5\nover:", 1),
    ("push 1\npush 0\njz skip\npush 5\nskip:", 1), ("push 8\npush 1\njz skip\npush 5\nskip:", 5),
])
def test_each_instruction(ops, output):
    task = run(ops + "\nemit\n")
    assert (task.state, task.output) == (DONE, [output])


def test_halt_ends_the_task_and_running_off_the_end_does_too():
    halted = run("push 1\nemit\nhalt\npush 2\nemit\n")
    assert (halted.state, halted.output, halted.steps) == (DONE, [1], 3)
    assert run("push 1\npop\n").state == DONE


def test_arguments_are_variables():
    assert run("load a\nload b\nsub\nemit\n", a=10, b=3).output == [7]
    assert parse_args({"n": " 12 ", "big": str(2**100)}) == {"n": 12, "big": 2**100}
    for raw, says in (({"n": "x"}, "argument n takes an integer"),
                      ({"1n": "1"}, "is not a variable name")):
        with pytest.raises(LanguageError, match=says):
            parse_args(raw)


@pytest.mark.parametrize("text, limits, says", [
    ("push 1\npush 0\ndiv\n", Limits(), "line 3: div: division by zero"),
    ("push 1\npush 0\nmod\n", Limits(), "line 3: mod: division by zero"),
    ("push 1\nadd\n", Limits(), "line 2: add: add needs two values, the stack has 1"),
    ("pop\n", Limits(), "line 1: pop: pop on an empty stack (stack underflow)"),
    ("swap\n", Limits(), "line 1: swap: swap needs two values"),
    ("load nope\n", Limits(), "line 1: load: unknown variable 'nope'"),
    ("loop: push 1\njmp loop\n", Limits(stack=8), "line 1: push: stack overflow (over 8"),
    ("push 2\nloop: dup\nmul\njmp loop\n", Limits(int_bits=64), "line 3: mul: integer over 64"),
    ("loop: push 1\nemit\njmp loop\n", Limits(output=5), "line 2: emit: over the limit of 5"),
    ("push 1\nstore a\npush 1\nstore b\n", Limits(variables=1), "line 4: store: over the limit"),
    ("loop: jmp loop\n", Limits(max_steps=100), "line 1: jmp: stopped after 100 steps"),
])
def test_a_runtime_error_fails_the_task_naming_the_line(text, limits, says):
    task = run(text, limits)
    assert task.state == FAILED and task.error.startswith(says), task.error
    assert task.run(10) == 0 and task.state == FAILED  # a failed task stays failed


def test_run_executes_at_most_the_steps_asked_and_counts_them():
    task = Task(example("sum"), {"n": 100})
    assert task.run(10) == 10 and task.steps == 10 and task.state == RUNNING
    total = 10
    while task.state == RUNNING:
        total += task.run(7)
    assert total == task.steps and task.output == [5050]


def test_the_same_program_and_arguments_give_the_same_output_and_steps():
    runs = [Task(example("collatz"), {"n": 300}) for _ in range(2)]
    for task in runs:
        task.run(10_000_000)
    assert runs[0].to_state() == runs[1].to_state()


def resumed(task: Task) -> Task:
    program = task.program
    return Task.from_state(program, json.loads(json.dumps(task.to_state())), task.args)


@settings(max_examples=60)
@given(name=st.sampled_from(["primes", "collatz", "sum"]), n=st.integers(0, 120),
       stops=st.lists(st.integers(1, 3000), min_size=1, max_size=4))
def test_a_task_moved_at_any_step_ends_as_one_never_moved(name, n, stops):
    program = example(name)
    unmoved = Task(program, {"n": n})
    unmoved.run(10_000_000)
    task = Task(program, {"n": n})
    for stop in stops:
        task.run(stop)
        task = resumed(task)
    task.run(10_000_000)
    assert (task.state, task.output, task.steps) == (unmoved.state, unmoved.output,
                                                      unmoved.steps)


def test_a_state_is_checked_on_arrival():
    program = example("sum")
    task = Task(program, {"n": 5})
    task.run(4)
    good = task.to_state()
    other = parse("push 1\n")
    with pytest.raises(LanguageError, match="another program"):
        Task.from_state(other, good, {"n": 5})
    for key, value, says in (("pc", 999, "pc 999 is outside"), ("steps", -1, "steps -1"),
                             ("state", "dancing", "'dancing' is not one of"),
                             ("stack", ["1"], "stack is not a list"),
                             ("stack", [1] * 300, "stack is not a list of at most 256"),
                             ("output", [2**5000], "of 4096 bits"),
                             ("variables", {"1x": 1}, "variables are not")):
        with pytest.raises(LanguageError, match=says):
            Task.from_state(program, {**good, key: value}, {"n": 5})
    with pytest.raises(LanguageError, match="not an object"):
        Task.from_state(program, [], {})
