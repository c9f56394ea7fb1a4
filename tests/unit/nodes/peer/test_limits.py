"""nodes/peer/limits.py: the token bucket behind PEER_UPLOAD_RATE_BYTES and
PEER_DOWNLOAD_RATE_BYTES."""

from __future__ import annotations

from nodes.peer.limits import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_a_burst_through_then_paces_at_the_rate():
    clock = Clock()
    bucket = TokenBucket(1000, burst=4000, clock=clock)
    assert bucket.delay(4000) == 0
    bucket.take(4000)
    assert bucket.delay(500) == 0.5
    clock.now += 0.5
    assert bucket.delay(500) == 0
    bucket.take(500)


def test_idle_time_fills_it_only_up_to_the_burst():
    clock = Clock()
    bucket = TokenBucket(1000, burst=2000, clock=clock)
    bucket.take(2000)
    clock.now += 3600
    assert bucket.available() == 2000


def test_a_take_larger_than_the_balance_is_paid_back_before_the_next():
    clock = Clock()
    bucket = TokenBucket(1000, burst=1000, clock=clock)
    bucket.take(3000)  # a read may bring more than was waited for
    assert bucket.delay(1) == 2.001


def test_rate_zero_means_no_limit():
    bucket = TokenBucket(0, burst=0, clock=Clock())
    bucket.take(10**12)
    assert bucket.unlimited and bucket.delay(10**9) == 0
