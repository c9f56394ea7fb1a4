"""Checkers: turn a History into a Verdict (valid true | false | unknown) with evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Verdict:
    name: str
    valid: bool | None          # None: unknown (the checker could not decide)
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        return {True: "valid", False: "invalid", None: "unknown"}[self.valid]

    def __str__(self) -> str:
        head = f"{self.name}: {self.outcome}"
        return "\n  ".join([head, *self.problems[:10]])
