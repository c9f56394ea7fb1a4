"""RPC-level fault rules: which calls to delay, fail or drop. Sans-I/O.

The Control service adds and clears rules; the server and client
interceptors ask `FaultRules.decide` about every call and carry the decision
out. Time and chance are injected (`clock`, `rng`) so tests are exact.
Rules never apply to the Control service itself, so a rule can always be
cleared and the host can always see the node. At most MAX_RULES are in force
at once: every call walks the rules, so an unbounded list slows every call.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc

ACTIONS = ("delay", "error", "drop")
DIRECTIONS = ("inbound", "outbound")
EXEMPT_PREFIX = "/distlab.control.Control/"
MAX_DELAY_SECONDS = 300.0
# Every call on the node walks the rules in force: 20 000 of them slowed each call
# x6.7. A scenario needs a handful per node; 64 leaves ample room.
MAX_RULES = 64
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class FaultRuleError(ValueError):
    """A rule that cannot be applied; the message says which field and why."""


class TooManyRules(FaultRuleError):
    """MAX_RULES rules are already in force on this node."""


@dataclass(frozen=True)
class RuleSpec:
    method: str = "*"
    peer: str = ""
    action: str = "delay"
    direction: str = "inbound"
    delay_seconds: float = 0.0
    jitter_seconds: float = 0.0
    status_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    probability: float = 1.0
    duration_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise FaultRuleError(f"action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.direction not in DIRECTIONS:
            raise FaultRuleError(
                f"direction {self.direction!r} is not one of {', '.join(DIRECTIONS)}")
        if not (self.method == "*" or (self.method.startswith("/") and self.method.count("/") == 2
                                       and len(self.method) > 3)):
            raise FaultRuleError(
                f"method {self.method!r} must be '*', '/pkg.Service/*' or '/pkg.Service/Method'")
        if self.method.startswith(EXEMPT_PREFIX):
            raise FaultRuleError("the Control service is exempt from fault rules")
        if not 0 < self.probability <= 1:
            raise FaultRuleError(f"probability {self.probability} must be in (0, 1]")
        if not self.duration_seconds >= 0:  # written so that NaN is refused too
            raise FaultRuleError("duration_seconds must be >= 0 (0 means until cleared)")
        if self.action == "delay":
            if not 0 < self.delay_seconds + self.jitter_seconds <= MAX_DELAY_SECONDS:
                raise FaultRuleError(
                    f"a delay rule needs 0 < delay_seconds + jitter_seconds <= {MAX_DELAY_SECONDS}")
            if self.delay_seconds < 0 or self.jitter_seconds < 0:
                raise FaultRuleError("delay_seconds and jitter_seconds must be >= 0")
        if self.action == "error" and self.status_code == grpc.StatusCode.OK:
            raise FaultRuleError("an error rule needs a status code other than OK")

    def matches(self, method: str, peer: str, direction: str) -> bool:
        if direction != self.direction or method.startswith(EXEMPT_PREFIX):
            return False
        if self.peer and self.peer != peer:
            return False
        if self.method == "*":
            return True
        if self.method.endswith("/*"):
            return method.startswith(self.method[:-1])
        return method == self.method


def status_code_from_value(value: int) -> grpc.StatusCode:
    try:
        return _CODES_BY_VALUE[value]
    except KeyError:
        raise FaultRuleError(f"status_code {value} is not a gRPC status code (1-16)") from None


@dataclass(frozen=True)
class Decision:
    rule_id: str
    action: str
    delay_seconds: float = 0.0
    status_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


@dataclass
class ActiveRule:
    rule_id: str
    spec: RuleSpec
    expires_at: float | None
    matched: int = 0


@dataclass
class FaultRules:
    """The rules in force on one node, oldest first; the first rule that fires wins."""

    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    max_rules: int = MAX_RULES

    def __post_init__(self) -> None:
        self._rules: dict[str, ActiveRule] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, spec: RuleSpec) -> str:
        """Put `spec` in force; TooManyRules (nothing added) when max_rules already are."""
        with self._lock:
            self._expire()  # a rule past its duration does not count against the cap
            if len(self._rules) >= self.max_rules:
                raise TooManyRules(
                    f"{len(self._rules)} fault rules are in force on this node, the most it "
                    f"takes at once ({self.max_rules}): clear some first")
            rule_id = f"r{next(self._ids)}"
            expires = self.clock() + spec.duration_seconds if spec.duration_seconds else None
            self._rules[rule_id] = ActiveRule(rule_id, spec, expires)
            return rule_id

    def clear(self, rule_ids: Iterable[str] = ()) -> int:
        """Remove the named rules, or every rule when none is named; return how many went."""
        wanted = list(rule_ids)
        with self._lock:
            if not wanted:
                count = len(self._rules)
                self._rules.clear()
                return count
            unknown = [rule_id for rule_id in wanted if rule_id not in self._rules]
            if unknown:
                raise FaultRuleError(f"no such rule: {', '.join(unknown)}")
            for rule_id in wanted:
                del self._rules[rule_id]
            return len(wanted)

    def active(self) -> list[ActiveRule]:
        with self._lock:
            self._expire()
            return list(self._rules.values())

    def remaining(self, rule: ActiveRule) -> float:
        return max(0.0, rule.expires_at - self.clock()) if rule.expires_at is not None else 0.0

    def decide(self, method: str, peer: str, direction: str) -> Decision | None:
        with self._lock:
            if not self._rules:
                return None
            self._expire()
            for rule in self._rules.values():
                spec = rule.spec
                if not spec.matches(method, peer, direction):
                    continue
                if spec.probability < 1 and self.rng.random() >= spec.probability:
                    continue
                rule.matched += 1
                delay = spec.delay_seconds + self.rng.uniform(0, spec.jitter_seconds)
                return Decision(rule.rule_id, spec.action, delay, spec.status_code)
            return None

    def _expire(self) -> None:
        now = self.clock()
        for rule_id in [r.rule_id for r in self._rules.values()
                        if r.expires_at is not None and r.expires_at <= now]:
            del self._rules[rule_id]
