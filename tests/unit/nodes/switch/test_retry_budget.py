"""nodes/switch/retry_budget.py: retries stay within a share of requests plus a small floor."""

from nodes.switch.retry_budget import WINDOW_SECONDS, RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def withdrawals(budget: RetryBudget, attempts: int = 10_000) -> int:
    return sum(1 for _ in range(attempts) if budget.try_withdraw())


def test_a_quiet_switch_may_retry_the_floor_per_second_over_the_window():
    clock = Clock()
    budget = RetryBudget(percent=20, min_per_second=10, clock=clock)
    assert withdrawals(budget) == 10 * WINDOW_SECONDS
    clock.now += 1
    assert not budget.try_withdraw()  # spent: the window still remembers every retry
    clock.now += WINDOW_SECONDS
    assert withdrawals(budget) == 10 * WINDOW_SECONDS


def test_requests_earn_their_percentage_of_retries():
    clock = Clock()
    budget = RetryBudget(percent=20, min_per_second=0, clock=clock)
    assert not budget.try_withdraw()
    for _ in range(100):
        budget.deposit()
    assert budget.available() == 20
    assert withdrawals(budget) == 20
    assert budget.available() == 0


def test_deposits_expire_after_the_window():
    clock = Clock()
    budget = RetryBudget(percent=50, min_per_second=0, clock=clock)
    for _ in range(10):
        budget.deposit()
    clock.now += WINDOW_SECONDS
    assert withdrawals(budget) == 0


def test_a_retry_storm_is_capped():
    """Every request fails and wants two retries: the budget allows 20 % + the floor."""
    clock = Clock()
    budget = RetryBudget(percent=20, min_per_second=1, clock=clock)
    retried = 0
    for second in range(60):
        clock.now = 1000.0 + second
        for _ in range(100):
            budget.deposit()
            retried += sum(1 for _ in range(2) if budget.try_withdraw())
    # 6000 requests: at most 20 % of them plus 1 per second plus the first window's floor
    assert retried <= 6000 * 0.2 + 60 + 10
    assert retried >= 6000 * 0.2


def test_a_zero_budget_never_retries():
    budget = RetryBudget(percent=0, min_per_second=0, clock=Clock())
    budget.deposit()
    assert withdrawals(budget, 10) == 0
