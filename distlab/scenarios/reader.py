"""A YAML reader that checks as it reads and reports every problem with its line.

It reads a document node by node (PyYAML's composed nodes keep line numbers), so one
pass finds every problem, each as `file:line: path: reason`, with "did you mean" for
near misses. Generic: it knows mappings, lists, scalars, durations and variants (a
mapping whose `kind` field says which other fields it takes), and nothing of scenarios.
`distlab.scenarios.spec` builds the scenario parser on it; a lab's registered fields
(distlab.registry) are read with its methods. Pure: reads the text it is given.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

STR, INT, FLOAT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
BOOL, NULL = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)(?P<unit>ms|s|m)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
DURATION_FORM = "a number of seconds or <number><unit> with unit ms, s or m (500ms, 5s, 1.5m)"


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 when it is about the file as a whole (unreadable)
    path: str  # where in the document: "faults[1].kind"; "" for the top level
    reason: str

    def text(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


def parse_duration(value: object) -> float:
    """`5` -> 5.0, `"500ms"` -> 0.5, `"2m"` -> 120.0; ValueError saying the form otherwise."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if not match:
            raise ValueError(f"{value!r} is not a duration: write {DURATION_FORM}")
        return float(match["number"]) * _UNITS[match["unit"]]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a duration: write {DURATION_FORM}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a duration must be a finite number >= 0, got {value!r}")
    return float(value)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def all_fields(fields_by_kind: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Every field any kind takes, in order of first appearance."""
    return tuple(dict.fromkeys(f for fields in fields_by_kind.values() for f in fields))


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def describe(node: Node) -> str:
    """What the user wrote, for "expected X, got Y" messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kinds = {NULL: "nothing", BOOL: "a boolean", INT: "an integer", FLOAT: "a number",
             STR: "a string"}
    if node.tag == NULL:
        return "nothing (null)"
    if node.tag == STR:
        return f"'{node.value}' (a string)"
    return f"{node.value} ({kinds.get(node.tag, 'a ' + node.tag.rsplit(':', 1)[-1])})"


def an(what: str) -> str:
    return f"an {what}" if what[0] in "aeiou" else f"a {what}"


Entries = dict[str, tuple[Node, Node]]  # field name -> (key node, value node)
REQUIRED = object()  # the default of a field that must be written


@dataclass(frozen=True)
class Field:
    """One field a registered kind takes (a workload's `accounts`, a check's `time_limit`):
    its name, how it is read (`read(reader, node, path)`) and its default."""

    name: str
    read: Callable[[Reader, Node, str], Any]
    default: Any = REQUIRED


def integer_in(low: int, high: int | None) -> Callable[[Reader, Node, str], int | None]:
    return lambda reader, node, path: reader.integer(node, path, low, high)


def number_in(ok: Callable[[float], bool], within: str
              ) -> Callable[[Reader, Node, str], float | None]:
    return lambda reader, node, path: reader.number(node, path, ok, within)


class Reader:
    """Reads nodes, collecting a `Problem` for each thing wrong instead of stopping."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()

    def problem(self, node: Node, path: str, reason: str) -> None:
        self.problems.append(Problem(line_of(node), path, reason))

    def compose(self, text: str) -> Node | None:
        """The document's root node; None (and a problem) when it is not YAML."""
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            reason = ", ".join(filter(None, [exc.context, exc.problem]))
            self.problems.append(Problem(mark.line + 1 if mark else 1, "",
                                         f"invalid YAML: {reason}"))
        except yaml.YAMLError as exc:
            self.problems.append(Problem(1, "", f"invalid YAML: {exc}"))
        return None

    # -- scalars -----------------------------------------------------------------------

    def duration_value(self, node: Node, path: str) -> float | None:
        if isinstance(node, ScalarNode) and node.tag in (INT, FLOAT, STR):
            value = self.scalar(node) if node.tag != STR else node.value
            try:
                return parse_duration(value)
            except ValueError as exc:
                self.problem(node, path, str(exc))
                return None
        self.problem(node, path, f"expected a duration ({DURATION_FORM}), got {describe(node)}")
        return None

    def positive_duration(self, node: Node, path: str) -> float | None:
        value = self.duration_value(node, path)
        if value is not None and value <= 0:
            self.problem(node, path, f"must be more than 0, got {node.value}")
            return None
        return value

    def probability(self, node: Node, path: str) -> float | None:
        return self.number(node, path, lambda x: 0 < x <= 1, "with 0 < p <= 1")

    def number(self, node: Node, path: str, ok: Callable[[float], bool], within: str
               ) -> float | None:
        if isinstance(node, ScalarNode) and node.tag in (INT, FLOAT):
            value = float(self.scalar(node))
            if math.isfinite(value) and ok(value):
                return value
        self.problem(node, path, f"expected a number {within}, got {describe(node)}")
        return None

    def integer(self, node: Node, path: str, low: int, high: int | None) -> int | None:
        if isinstance(node, ScalarNode) and node.tag == INT:
            value = self.scalar(node)
            if low <= value and (high is None or value <= high):
                return value
        within = f"{low}..{high}" if high is not None else f">= {low}"
        self.problem(node, path, f"expected an integer {within}, got {describe(node)}")
        return None

    def boolean(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == BOOL:
            return self.scalar(node)
        self.problem(node, path, f"expected true or false, got {describe(node)}")
        return None

    def string(self, node: Node, path: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == STR:
            return node.value
        self.problem(node, path, f"expected a string, got {describe(node)}")
        return None

    def choice(self, node: Node, path: str, choices: Collection[str]) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == STR:
            if node.value in choices:
                return node.value
            self.problem(node, path, f"'{node.value}' is not one of {', '.join(choices)}"
                                     f"{did_you_mean(node.value, choices)}")
            return None
        self.problem(node, path, f"expected one of {', '.join(choices)}, got {describe(node)}")
        return None

    def scalar(self, node: ScalarNode) -> Any:
        return self.constructor.construct_object(node)

    # -- structure ---------------------------------------------------------------------

    def variant(self, node: Node, path: str, what: str, tag: str,
                fields_by_variant: Mapping[str, tuple[str, ...]]
                ) -> tuple[Entries | None, str | None]:
        """A mapping whose `tag` field (a fault's kind, ...) says which fields it may have:
        its entries and tag, every field the tag does not use being a problem."""
        entries = self.entries(node, path, an(what))
        if entries is None:
            return None, None
        variant = self.required(entries, node, path, tag,
                                lambda n, p: self.choice(n, p, tuple(fields_by_variant)))
        self.unknown(entries, path, fields_by_variant.get(variant, ()),
                     known=all_fields(fields_by_variant),
                     used_by=f"{an(variant)} {what}" if variant else None)
        return entries, variant

    def entries(self, node: Node, path: str, what: str) -> Entries | None:
        """A mapping's fields by name; duplicate and non-string keys are problems."""
        if not isinstance(node, MappingNode):
            form = "" if "mapping" in what else " (a mapping of field: value)"
            self.problem(node, path, f"expected {what}{form}, got {describe(node)}")
            return None
        entries: Entries = {}
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and key.tag == STR):
                reason = ("merge keys (<<) are not supported: repeat the fields"
                          if key.tag == "tag:yaml.org,2002:merge"
                          else f"a field name is a string, got {describe(key)}")
                self.problem(key, path, reason)
            elif key.value in entries:
                self.problem(key, path, f"duplicate field '{key.value}' (first on line "
                                        f"{line_of(entries[key.value][0])})")
            else:
                entries[key.value] = (key, value)
        return entries

    def unknown(self, entries: Entries, path: str, allowed: Collection[str], *,
                known: Collection[str] = (), used_by: str | None = None) -> None:
        """Fields not in `allowed`: "not used by X" when `known` has them, else unknown.
        With no `used_by` (the kind itself is missing or wrong) only unknown names count."""
        for name, (key, _) in entries.items():
            if name in allowed or (used_by is None and name in known):
                continue
            if name in known:
                self.problem(key, path, f"field '{name}' is not used by {used_by}")
                continue
            choices = allowed or known
            self.problem(key, path, f"unknown field '{name}' (fields: {', '.join(choices)})"
                                    f"{did_you_mean(name, choices)}")

    def required(self, entries: Entries, node: Node, path: str, name: str,
                 parse: Callable[[Node, str], Any]) -> Any:
        if name not in entries:
            self.problem(node, path, f"missing required field '{name}'")
            return None
        return parse(entries[name][1], join(path, name))

    def getter(self, entries: Entries, path: str) -> Callable[..., Any]:
        """get(name, default, parse): the parsed field, or its default when absent."""
        def get(name: str, default: Any, parse: Callable[[Node, str], Any]) -> Any:
            if name not in entries:
                return default
            return parse(entries[name][1], join(path, name))
        return get

    def fields(self, entries: Entries, anchor: Node, path: str, fields: Iterable[Field]
               ) -> dict[str, Any]:
        """Each declared field read, or its default; a missing required one is a problem
        reported on `anchor` (the line that holds the mapping)."""
        values = {}
        for declared in fields:
            if declared.name in entries:
                values[declared.name] = declared.read(self, entries[declared.name][1],
                                                      join(path, declared.name))
            elif declared.default is REQUIRED:
                self.problem(anchor, path, f"missing required field '{declared.name}'")
                values[declared.name] = None
            else:
                values[declared.name] = declared.default
        return values

    def sequence(self, node: Node, path: str, *, minimum: int = 0) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.problem(node, path, f"expected a list, got {describe(node)}")
            return None
        if len(node.value) < minimum:
            self.problem(node, path, f"needs at least {minimum} "
                                     f"entr{'y' if minimum == 1 else 'ies'}")
            return None
        return list(node.value)

    def one_key(self, node: Node, path: str, what: str, form: str
                ) -> tuple[ScalarNode | None, Node | None]:
        """A `name` or `{name: value}` element: the name's node and the value's (or None)."""
        if isinstance(node, ScalarNode) and node.tag == STR:
            return node, None
        if isinstance(node, MappingNode) and len(node.value) == 1:
            key, value = node.value[0]
            if isinstance(key, ScalarNode) and key.tag == STR:
                return key, value
        self.problem(node, path, f"{what} is {form}, got {describe(node)}")
        return None, None
