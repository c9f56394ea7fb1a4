"""nodes/common/faults.py: which calls a rule delays, fails or drops."""

import random

import grpc
import pytest

from nodes.common.faults import (
    MAX_RULES,
    FaultRuleError,
    FaultRules,
    RuleSpec,
    TooManyRules,
    status_code_from_value,
)

GET = "/distlab.kv.KV/Get"
PUT = "/distlab.kv.KV/Put"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def error_rule(**fields) -> RuleSpec:
    return RuleSpec(action="error", **fields)


@pytest.mark.parametrize("fields, fragment", [
    ({"action": "explode"}, "action 'explode' is not one of delay, error, drop"),
    ({"action": "error", "direction": "sideways"}, "direction 'sideways'"),
    ({"action": "error", "method": "bogus"}, "method 'bogus' must be"),
    ({"action": "error", "method": "/svc"}, "method '/svc' must be"),
    ({"action": "error", "method": "/a/b/c"}, "method '/a/b/c' must be"),
    ({"action": "error", "method": "/distlab.control.Control/Status"}, "Control service is exempt"),
    ({"action": "error", "method": "/distlab.control.Control/*"}, "Control service is exempt"),
    ({"action": "error", "probability": 0}, "probability 0 must be in (0, 1]"),
    ({"action": "error", "probability": 2}, "probability 2 must be in (0, 1]"),
    ({"action": "error", "duration_seconds": -1}, "duration_seconds must be >= 0"),
    ({"action": "delay"}, "a delay rule needs 0 < delay_seconds + jitter_seconds"),
    ({"action": "delay", "delay_seconds": 301}, "<= 300"),
    ({"action": "delay", "delay_seconds": 2, "jitter_seconds": -1},
     "delay_seconds and jitter_seconds must be >= 0"),
    ({"action": "error", "status_code": grpc.StatusCode.OK}, "status code other than OK"),
])
def test_invalid_rule_says_what_is_wrong(fields, fragment):
    with pytest.raises(FaultRuleError) as caught:
        RuleSpec(**fields)
    assert fragment in str(caught.value)


def test_status_code_from_value():
    assert status_code_from_value(14) is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(FaultRuleError, match="status_code 99 is not a gRPC status code"):
        status_code_from_value(99)


@pytest.mark.parametrize("pattern, method, expected", [
    ("*", GET, True),
    ("*", "/grpc.health.v1.Health/Check", True),
    ("/distlab.kv.KV/*", GET, True),
    ("/distlab.kv.KV/*", "/distlab.kvx.KV/Get", False),
    ("/distlab.kv.KV/*", "/grpc.health.v1.Health/Check", False),
    (GET, GET, True),
    (GET, PUT, False),
    (GET, GET + "X", False),
])
def test_method_matching(pattern, method, expected):
    assert error_rule(method=pattern).matches(method, "", "inbound") is expected


def test_peer_filter():
    rule = error_rule(peer="kv-2")
    assert rule.matches(GET, "kv-2", "inbound")
    assert not rule.matches(GET, "kv-3", "inbound")
    assert not rule.matches(GET, "", "inbound")
    assert error_rule().matches(GET, "anyone", "inbound")


def test_direction():
    inbound, outbound = error_rule(), error_rule(direction="outbound")
    assert inbound.matches(GET, "", "inbound") and not inbound.matches(GET, "", "outbound")
    assert outbound.matches(GET, "", "outbound") and not outbound.matches(GET, "", "inbound")


def test_control_methods_never_match_even_a_wildcard():
    rules = FaultRules()
    rules.add(error_rule())
    rules.add(error_rule(direction="outbound"))
    for direction in ("inbound", "outbound"):
        assert rules.decide("/distlab.control.Control/ClearFaultRules", "", direction) is None
        assert rules.decide(GET, "", direction) is not None


def test_decision_carries_action_delay_and_code():
    rules = FaultRules()
    rule_id = rules.add(error_rule(status_code=grpc.StatusCode.ABORTED))
    decision = rules.decide(GET, "", "inbound")
    assert (decision.rule_id, decision.action, decision.status_code) == (
        rule_id, "error", grpc.StatusCode.ABORTED)
    rules.clear()
    rules.add(RuleSpec(action="delay", delay_seconds=0.5))
    assert rules.decide(GET, "", "inbound").delay_seconds == 0.5


def test_jitter_stays_within_bounds():
    rules = FaultRules(rng=random.Random(7))
    rules.add(RuleSpec(action="delay", delay_seconds=0.1, jitter_seconds=0.2))
    delays = [rules.decide(GET, "", "inbound").delay_seconds for _ in range(1000)]
    assert all(0.1 <= d <= 0.3 for d in delays)
    assert max(delays) - min(delays) > 0.15  # jitter actually varies


@pytest.mark.parametrize("probability", [0.1, 0.5, 0.9])
def test_probability_hit_rate(probability):
    rules = FaultRules(rng=random.Random(1234))
    rules.add(error_rule(probability=probability))
    decisions = 10_000
    hits = sum(rules.decide(GET, "", "inbound") is not None for _ in range(decisions))
    assert abs(hits / decisions - probability) < 0.02
    assert rules.active()[0].matched == hits


def test_duration_expires_with_the_clock():
    clock = FakeClock()
    rules = FaultRules(clock=clock)
    lasting = rules.add(error_rule(method=PUT))
    rules.add(error_rule(duration_seconds=10))
    assert rules.remaining(rules.active()[1]) == 10
    clock.now += 9.5
    assert rules.decide(GET, "", "inbound") is not None
    assert rules.remaining(rules.active()[1]) == pytest.approx(0.5)
    clock.now += 0.5
    assert rules.decide(GET, "", "inbound") is None
    assert [rule.rule_id for rule in rules.active()] == [lasting]
    assert rules.remaining(rules.active()[0]) == 0.0


def test_first_matching_rule_wins():
    rules = FaultRules()
    narrow = rules.add(error_rule(method=PUT))
    first = rules.add(error_rule(status_code=grpc.StatusCode.ABORTED))
    rules.add(error_rule(status_code=grpc.StatusCode.INTERNAL))
    assert rules.decide(GET, "", "inbound").rule_id == first
    assert rules.decide(PUT, "", "inbound").rule_id == narrow
    rules.clear([first])
    assert rules.decide(GET, "", "inbound").status_code is grpc.StatusCode.INTERNAL


def test_a_rule_that_does_not_fire_by_chance_lets_the_next_one_decide():
    rules = FaultRules(rng=random.Random(5))
    rules.add(error_rule(probability=0.5, status_code=grpc.StatusCode.ABORTED))
    fallback = rules.add(error_rule(status_code=grpc.StatusCode.INTERNAL))
    decisions = [rules.decide(GET, "", "inbound") for _ in range(200)]
    assert all(d is not None for d in decisions)
    assert any(d.rule_id == fallback for d in decisions)


def test_clear_all_by_id_and_unknown_id():
    rules = FaultRules()
    ids = [rules.add(error_rule()) for _ in range(3)]
    assert len(set(ids)) == 3
    assert rules.clear([ids[1]]) == 1
    assert [r.rule_id for r in rules.active()] == [ids[0], ids[2]]
    with pytest.raises(FaultRuleError, match="no such rule: r99"):
        rules.clear(["r99", ids[0]])
    assert len(rules.active()) == 2  # a refused clear removes nothing
    assert rules.clear() == 2
    assert rules.active() == []
    assert rules.decide(GET, "", "inbound") is None
    assert rules.clear() == 0


@pytest.mark.parametrize("field", ["duration_seconds", "probability", "delay_seconds"])
def test_not_a_number_is_refused(field):
    fields = {"action": "delay", "delay_seconds": 1.0, field: float("nan")}
    with pytest.raises(FaultRuleError, match=field.split("_")[0]):
        RuleSpec(**fields)


def test_rules_are_capped_and_a_cleared_or_expired_rule_makes_room():
    clock = FakeClock()
    rules = FaultRules(clock=clock)
    ids = [rules.add(error_rule(method=GET)) for _ in range(MAX_RULES - 1)]
    rules.add(error_rule(method=PUT, duration_seconds=5))
    with pytest.raises(TooManyRules, match=f"the most it takes at once \\({MAX_RULES}\\)"):
        rules.add(error_rule())
    assert len(rules.active()) == MAX_RULES  # the refused rule was not added
    clock.now += 5  # the timed rule expired: it no longer counts
    rules.add(error_rule())
    rules.clear(ids[:1])
    rules.add(error_rule())
    with pytest.raises(TooManyRules):
        rules.add(error_rule())
