"""The mobile-code language: a tiny stack machine whose whole execution state is data.

Code shipped between hosts (nodes.mobility.service) is written in this language and
never in Python: a host holds the lab credential, and an interpreter that can only push,
pop, compute on integers, jump and emit cannot reach it. Because a running `Task` is
nothing but (pc, stack, variables, output, steps, state), it can stop between two
instructions, travel as JSON and go on elsewhere: strong mobility, as in the
interpreted mobile-agent systems (Telescript, Agent Tcl).

Sans-I/O: no gRPC, no clock, no randomness, so a program and its arguments always give
the same output in the same number of steps, moved or not.

    # one instruction or label per line; `#` starts a comment
    push N      store NAME   load NAME    (variables: the task's arguments and its own)
    add sub mul div mod      (pop b, pop a, push a OP b; div and mod floor, as Python's)
    lt eq       (push 1 if a < b / a == b, else 0)    not (0 -> 1, anything else -> 0)
    dup pop swap             jmp LABEL    jz LABEL (pop; jump if it was 0)
    emit        (pop, append to the output)           halt
    LABEL:      (a jump target; running past the last instruction halts too)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

RUNNING, DONE, FAILED = "running", "done", "failed"
STATES = (RUNNING, DONE, FAILED)

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
INTEGER = re.compile(r"^[+-]?[0-9]{1,1300}$")
# Instruction -> the kind of argument it takes (None: none).
ARGUMENTS = {
    "push": "integer", "load": "name", "store": "name", "jmp": "label", "jz": "label",
    "add": None, "sub": None, "mul": None, "div": None, "mod": None, "lt": None, "eq": None,
    "not": None, "dup": None, "pop": None, "swap": None, "emit": None, "halt": None,
}
BINARY = ("add", "sub", "mul", "div", "mod", "lt", "eq")


class LanguageError(Exception):
    """A program, its arguments or a travelling state that cannot be run; says what and where."""


@dataclass(frozen=True)
class Limits:
    """What one task may use. A host's tasks live in its memory and travel in gRPC messages,
    so every dimension is bounded: a task over one fails with the bound named."""

    program_bytes: int = 64 * 1024
    instructions: int = 10_000
    stack: int = 256
    variables: int = 64
    int_bits: int = 4096
    output: int = 256
    max_steps: int = 100_000_000


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Instruction:
    op: str
    arg: int | str | None
    line: int


@dataclass(frozen=True)
class Program:
    text: str
    instructions: tuple[Instruction, ...]
    digest: str  # sha256 of the text: a travelling state names the program it belongs to


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse(text: str, limits: Limits = DEFAULT_LIMITS) -> Program:
    """The program in `text`; LanguageError names the first wrong line."""
    size = len(text.encode())
    if size > limits.program_bytes:
        raise LanguageError(f"the program is {size} bytes, over the limit of "
                            f"{limits.program_bytes}")
    instructions: list[tuple[str, str | None, int]] = []
    labels: dict[str, tuple[int, int]] = {}  # label -> (instruction index, line)
    for number, raw in enumerate(text.splitlines(), start=1):
        words = raw.split("#", 1)[0].split()
        if words and words[0].endswith(":"):
            label = words.pop(0)[:-1]
            if not NAME.match(label):
                raise LanguageError(f"line {number}: {label[:40]!r} is not a label name")
            if label in labels:
                raise LanguageError(f"line {number}: label {label!r} is defined twice (first "
                                    f"on line {labels[label][1]})")
            labels[label] = (len(instructions), number)
        if not words:
            continue
        op, *rest = words
        if op not in ARGUMENTS:
            raise LanguageError(f"line {number}: unknown instruction {op[:40]!r}")
        kind = ARGUMENTS[op]
        if kind is None and rest:
            raise LanguageError(f"line {number}: {op} takes no argument")
        if kind is not None and len(rest) != 1:
            raise LanguageError(f"line {number}: {op} takes one {kind}")
        instructions.append((op, rest[0] if rest else None, number))
        if len(instructions) > limits.instructions:
            raise LanguageError(f"line {number}: over the limit of {limits.instructions} "
                                "instructions")
    if not instructions:
        raise LanguageError("the program has no instructions")
    return Program(text, tuple(_resolve(op, arg, number, labels, limits)
                               for op, arg, number in instructions), digest_of(text))


def _resolve(op: str, arg: str | None, number: int, labels: dict[str, tuple[int, int]],
             limits: Limits) -> Instruction:
    kind = ARGUMENTS[op]
    if kind == "integer":
        return Instruction(op, parse_integer(arg, f"line {number}: push", limits), number)
    if kind == "name" and not NAME.match(arg):
        raise LanguageError(f"line {number}: {arg[:40]!r} is not a variable name")
    if kind == "label":
        if arg not in labels:
            raise LanguageError(f"line {number}: {op} to unknown label {arg[:40]!r}")
        return Instruction(op, labels[arg][0], number)
    return Instruction(op, arg, number)


def parse_integer(text: str, what: str, limits: Limits = DEFAULT_LIMITS) -> int:
    if not INTEGER.match(text):
        raise LanguageError(f"{what} takes an integer, not {text[:40]!r}")
    value = int(text)
    if value.bit_length() > limits.int_bits:
        raise LanguageError(f"{what}: {text[:20]}... is over {limits.int_bits} bits")
    return value


def parse_args(raw: dict[str, str], limits: Limits = DEFAULT_LIMITS) -> dict[str, int]:
    """Arguments as they travel (name -> decimal text) -> the task's first variables."""
    if len(raw) > limits.variables:
        raise LanguageError(f"{len(raw)} arguments, over the limit of {limits.variables} "
                            "variables")
    args = {}
    for name, text in sorted(raw.items()):
        if not NAME.match(name):
            raise LanguageError(f"argument {name[:40]!r} is not a variable name")
        args[name] = parse_integer(str(text).strip(), f"argument {name}", limits)
    return args


class Task:
    """One run of a program: its state is plain data, so it can stop and go on elsewhere."""

    def __init__(self, program: Program, args: dict[str, int],
                 limits: Limits = DEFAULT_LIMITS) -> None:
        if len(args) > limits.variables:
            raise LanguageError(f"{len(args)} arguments, over the limit of {limits.variables} "
                                "variables")
        self.program, self.args, self.limits = program, dict(args), limits
        self.pc = 0
        self.stack: list[int] = []
        self.variables = dict(args)
        self.output: list[int] = []
        self.steps = 0
        self.state = RUNNING
        self.error = ""

    def run(self, steps: int) -> int:
        """Execute at most `steps` instructions; how many ran. A failing instruction does
        not count: `steps` is the number of instructions that completed."""
        ran = 0
        instructions = self.program.instructions
        end = len(instructions)
        stack, limits = self.stack, self.limits
        while ran < steps and self.state == RUNNING:
            if self.pc >= end:
                self.state = DONE
                break
            if self.steps >= limits.max_steps:
                self._fail(instructions[self.pc], f"stopped after {limits.max_steps} steps "
                                                  "(max_steps)")
                break
            index = self.pc
            instruction = instructions[index]
            try:
                self._execute(instruction, stack)
            except _Fault as fault:
                self.pc = index  # the state points at the instruction that failed
                self._fail(instruction, str(fault))
                break
            self.steps += 1
            ran += 1
        return ran

    def _execute(self, instruction: Instruction, stack: list[int]) -> None:
        op, arg = instruction.op, instruction.arg
        self.pc += 1
        if op in BINARY:
            if len(stack) < 2:
                raise _Fault(f"{op} needs two values, the stack has {len(stack)}")
            b, a = stack.pop(), stack.pop()
            if op == "add":
                value = a + b
            elif op == "sub":
                value = a - b
            elif op == "mul":
                value = a * b
            elif op in ("div", "mod"):
                if b == 0:
                    raise _Fault("division by zero")
                value = a // b if op == "div" else a % b
            elif op == "lt":
                value = int(a < b)
            else:
                value = int(a == b)
            self._push(value)
        elif op == "push":
            self._push(arg)
        elif op == "load":
            if arg not in self.variables:
                raise _Fault(f"unknown variable {arg!r}")
            self._push(self.variables[arg])
        elif op == "store":
            value = self._pop(op)
            if arg not in self.variables and len(self.variables) >= self.limits.variables:
                raise _Fault(f"over the limit of {self.limits.variables} variables")
            self.variables[arg] = value
        elif op == "jmp":
            self.pc = arg
        elif op == "jz":
            if self._pop(op) == 0:
                self.pc = arg
        elif op == "not":
            self._push(int(self._pop(op) == 0))
        elif op == "dup":
            value = self._pop(op)
            self._push(value)
            self._push(value)
        elif op == "pop":
            self._pop(op)
        elif op == "swap":
            if len(stack) < 2:
                raise _Fault(f"swap needs two values, the stack has {len(stack)}")
            stack[-1], stack[-2] = stack[-2], stack[-1]
        elif op == "emit":
            value = self._pop(op)
            if len(self.output) >= self.limits.output:
                raise _Fault(f"over the limit of {self.limits.output} output values")
            self.output.append(value)
        elif op == "halt":
            self.state = DONE

    def _push(self, value: int) -> None:
        if len(self.stack) >= self.limits.stack:
            raise _Fault(f"stack overflow (over {self.limits.stack} values)")
        if value.bit_length() > self.limits.int_bits:
            raise _Fault(f"integer over {self.limits.int_bits} bits")
        self.stack.append(value)

    def _pop(self, op: str) -> int:
        if not self.stack:
            raise _Fault(f"{op} on an empty stack (stack underflow)")
        return self.stack.pop()

    def _fail(self, instruction: Instruction, problem: str) -> None:
        self.state = FAILED
        self.error = f"line {instruction.line}: {instruction.op}: {problem}"

    # -- moving -----------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """The execution state, JSON-able; with the program it resumes with `from_state`."""
        return {"digest": self.program.digest, "pc": self.pc, "stack": list(self.stack),
                "variables": dict(self.variables), "output": list(self.output),
                "steps": self.steps, "state": self.state, "error": self.error}

    @classmethod
    def from_state(cls, program: Program, state: dict[str, Any], args: dict[str, int],
                   limits: Limits = DEFAULT_LIMITS) -> Task:
        """The task `state` describes, checked: it must be of `program` and within `limits`
        (it came over the network; LanguageError says what is wrong)."""
        if not isinstance(state, dict):
            raise LanguageError("the state is not an object")
        if state.get("digest") != program.digest:
            raise LanguageError("the state belongs to another program (its digest differs)")
        pc, steps = state.get("pc"), state.get("steps")
        if not _is_int(pc) or not 0 <= pc <= len(program.instructions):
            raise LanguageError(f"the state's pc {pc!r} is outside the program")
        if not _is_int(steps) or not 0 <= steps <= limits.max_steps:
            raise LanguageError(f"the state's steps {steps!r} is not 0..{limits.max_steps}")
        if state.get("state") not in STATES or not isinstance(state.get("error", ""), str):
            raise LanguageError(f"the state's state {state.get('state')!r} is not one of "
                                f"{', '.join(STATES)}")
        stack = _ints(state.get("stack"), "stack", limits.stack, limits)
        output = _ints(state.get("output"), "output", limits.output, limits)
        variables = state.get("variables")
        if (not isinstance(variables, dict) or len(variables) > limits.variables
                or not all(isinstance(k, str) and NAME.match(k) for k in variables)):
            raise LanguageError(f"the state's variables are not at most {limits.variables} "
                                "named integers")
        _ints(list(variables.values()), "variables", limits.variables, limits)
        task = cls(program, args, limits)
        task.pc, task.stack, task.variables, task.output = pc, stack, dict(variables), output
        task.steps, task.state, task.error = steps, state["state"], state.get("error", "")
        return task


class _Fault(Exception):
    """A runtime error of the running instruction."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(values: object, what: str, most: int, limits: Limits) -> list[int]:
    if (not isinstance(values, list) or len(values) > most
            or not all(_is_int(v) and v.bit_length() <= limits.int_bits for v in values)):
        raise LanguageError(f"the state's {what} is not a list of at most {most} integers "
                            f"of {limits.int_bits} bits")
    return list(values)
