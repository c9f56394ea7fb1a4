"""The bank checker (Jepsen's bank invariants, plus "no acknowledged transfer is lost").

- total: every successful audit sums to the money the accounts were opened with;
- no negative balance in any successful read;
- no lost transfer: the final balances equal the opening balances plus every
  applied transfer (the acknowledged ones, and the indefinite ones a replay of
  their idempotency key proved applied). Indefinite transfers nothing could
  resolve (the bank unreachable, or the key's idempotency window passed
  before the replay) make the verdict unknown rather than invalid.
Pure: reads the history and the outcome it is given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from distlab.checkers import Verdict
from distlab.history import FAIL, INFO, OK, History

EVIDENCE_LIMIT = 5


@dataclass
class BankOutcome:
    accounts: list[str]
    initial: dict[str, int]
    final: dict[str, int] | None         # balances from the final audit (None: no audit)
    applied: list[dict]                  # transfer args known to be applied
    unresolved: list[dict]               # indefinite transfers nobody could resolve


def expected_balances(outcome: BankOutcome) -> dict[str, int]:
    balances = dict(outcome.initial)
    for transfer in outcome.applied:
        balances[transfer["from"]] -= transfer["amount"]
        balances[transfer["to"]] += transfer["amount"]
    return balances


def check_bank(history: History, outcome: BankOutcome) -> Verdict:
    problems: list[str] = []
    total = sum(outcome.initial.values())
    audits = history.of("audit", OK)
    torn = [op for op in audits if sum(op.result.values()) != total
            or set(op.result) != set(outcome.accounts)]
    problems += [_torn(op, total, outcome.accounts) for op in torn[:EVIDENCE_LIMIT]]
    negative = [f"{op.op} at t={op.invoke:.3f}s saw a negative balance: {op.result}"
                for op in audits + history.of("balance", OK)
                # An audit that saw no account at all (the data tier lost them) has no
                # balance to be negative: the torn-audit check above reports it.
                if min(op.result.values() if isinstance(op.result, dict) else [op.result],
                       default=0) < 0]
    problems += negative[:EVIDENCE_LIMIT]
    lost = _final_mismatch(outcome)
    problems += lost
    writes = Counter(op.type for op in history.of("transfer"))
    figures = {
        "operations": history.counts(),
        "audits_checked": len(audits),
        "transfers_acknowledged": writes[OK],
        "transfers_failed_definite": writes[FAIL],
        "transfers_failed_indefinite": writes[INFO],
        "indefinite_resolved_applied": len(outcome.applied) - writes[OK],
        "indefinite_unresolved": len(outcome.unresolved),
        "torn_audits": len(torn),
        "negative_reads": len(negative),
    }
    if problems:
        return Verdict("bank", False, problems, figures)
    if outcome.unresolved or outcome.final is None:
        reason = ("no final audit answered" if outcome.final is None else
                  f"{len(outcome.unresolved)} indefinite transfers could not be resolved")
        return Verdict("bank", None, [reason], figures)
    return Verdict("bank", True, [], figures)


def _torn(audit, total: int, accounts: list[str]) -> str:
    missing = sorted(set(accounts) - set(audit.result))
    if missing:
        return (f"audit at t={audit.invoke:.3f}s did not show accounts {', '.join(missing)}: "
                f"{audit.result}")
    return (f"audit at t={audit.invoke:.3f}s summed to {sum(audit.result.values())}, "
            f"not {total}: {audit.result}")


def _final_mismatch(outcome: BankOutcome) -> list[str]:
    if outcome.final is None or outcome.unresolved:
        return []  # cannot tell what the final state should be
    expected = expected_balances(outcome)
    return [f"final balance of {account} is {outcome.final.get(account)}, expected "
            f"{expected[account]} from {len(outcome.applied)} applied transfers"
            for account in outcome.accounts if outcome.final.get(account) != expected[account]]
