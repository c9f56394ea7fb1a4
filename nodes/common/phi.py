"""The phi accrual failure detector (Hayashibara et al. 2004; Akka, Cassandra). Sans-I/O.

`HeartbeatHistory` keeps a bounded window of heartbeat inter-arrival times;
`PhiAccrual` turns the time since the last heartbeat into phi, the suspicion
level: phi = -log10(P(a heartbeat arrives later than this)), from a normal
distribution of the window's mean (plus an acceptable pause) and standard
deviation (never below a minimum), with the logistic approximation of the
normal CDF Akka uses. phi 1 means a 10 % chance the peer is only late, phi 8
one in 10^8. `PhiDetector` judges many peers with it and adds what a heartbeat
stream cannot say: an answer that says no (a refused connection, an error, a
node that reports it does not serve) is a failure in itself, and `fall` of
them in a row make a peer down at once; silence (a timeout) is only evidence,
and phi decides when there has been enough of it.

Callers: nodes.common.peers (the peer watcher every node runs, and the health
checks the data-master runs on the chain) and nodes.chord.peer (ring
neighbours). Time is always an argument (`now`, seconds on any monotonic
clock): nothing here reads a clock, sleeps or does I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

#: Akka's and Cassandra's default: a false suspicion once in 10^8 judgements, were the
#: inter-arrival times normal.
DEFAULT_THRESHOLD = 8.0
#: Samples kept per peer: at one heartbeat a second, about three minutes of history,
#: enough to learn a machine's jitter and short enough to forget a busy spell.
DEFAULT_WINDOW = 200


class HeartbeatHistory:
    """A bounded window of inter-arrival times with a running mean and variance."""

    def __init__(self, window: int) -> None:
        if window < 2:
            raise ValueError("a history needs room for at least 2 intervals")
        self._intervals: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._squares = 0.0

    def __len__(self) -> int:
        return len(self._intervals)

    def add(self, interval: float) -> None:
        if len(self._intervals) == self._intervals.maxlen:
            oldest = self._intervals[0]
            self._sum -= oldest
            self._squares -= oldest * oldest
        self._intervals.append(interval)
        self._sum += interval
        self._squares += interval * interval

    @property
    def mean(self) -> float:
        return self._sum / len(self._intervals)

    @property
    def std_deviation(self) -> float:
        mean = self.mean
        # max(): the running sums round, and a variance a hair below 0 has no root.
        return math.sqrt(max(0.0, self._squares / len(self._intervals) - mean * mean))


def phi_of(elapsed: float, mean: float, std_deviation: float) -> float:
    """Suspicion after `elapsed` seconds of silence, for normal(mean, std_deviation)
    inter-arrival times. Akka's logistic approximation of the normal CDF (error below
    1e-4), written so that neither branch loses precision to 1 - (almost 1)."""
    y = (elapsed - mean) / std_deviation
    exponent = -y * (1.5976 + 0.070566 * y * y)
    if exponent < -700:  # far past the mean: e underflows; phi ~ -log10(e)
        return -exponent / math.log(10)
    if exponent > 700:  # far before the mean: no suspicion at all
        return 0.0
    e = math.exp(exponent)
    if elapsed > mean:
        return -math.log10(e / (1.0 + e))
    return -math.log10(1.0 - 1.0 / (1.0 + e))


class PhiAccrual:
    """One monitored peer's heartbeat arrivals and the phi they give.

    Before the first heartbeat phi is 0 (nothing is expected yet). The first one
    seeds the window with `first_interval` +- a quarter of it (Akka's way), so
    the detector has an opinion from the start and learns the real rate within
    a few heartbeats.
    """

    def __init__(self, *, first_interval: float, acceptable_pause: float = 0.0,
                 min_std_deviation: float, window: int = DEFAULT_WINDOW) -> None:
        if first_interval <= 0 or min_std_deviation <= 0 or acceptable_pause < 0:
            raise ValueError("first_interval and min_std_deviation must be > 0, "
                             "acceptable_pause >= 0")
        self.first_interval = first_interval
        self.acceptable_pause = acceptable_pause
        self.min_std_deviation = min_std_deviation
        self.history = HeartbeatHistory(window)
        self.last: float | None = None

    def heartbeat(self, now: float, *, record_interval: bool = True) -> None:
        """A heartbeat arrived at `now`. `record_interval=False`: restart the clock without
        learning from the gap (it spanned a failure, and is no sample of a live peer)."""
        if self.last is None:
            spread = self.first_interval / 4
            self.history.add(self.first_interval - spread)
            self.history.add(self.first_interval + spread)
        elif record_interval and now >= self.last:
            self.history.add(now - self.last)
        self.last = now

    def phi(self, now: float) -> float:
        if self.last is None:
            return 0.0
        mean = self.history.mean + self.acceptable_pause
        std_deviation = max(self.history.std_deviation, self.min_std_deviation)
        return phi_of(max(0.0, now - self.last), mean, std_deviation)


@dataclass
class _Peer:
    accrual: PhiAccrual
    up: bool = False
    good: int = 0  # heartbeats in a row while down
    refusals: int = 0  # answers that said no since the last heartbeat
    refusing: bool = False  # the latest result was a refusal


class PhiDetector:
    """Up/down verdicts for many peers: phi for silence, a count for refusals.

    - `heartbeat(peer, now)`: the peer answered. A peer that is down comes back
      after `rise` heartbeats in a row; a new peer starts down and needs them too
      (use `presume_up` for one known to be serving).
    - `refused(peer, now)`: the peer, or the path to it, answered no: connection
      refused, an error status, "not serving". Definite: `fall` in a row make it
      down at once, whatever phi says (fall=1: at the first). While a peer keeps
      answering no, the count decides, not phi: a machine that refuses is
      reachable, and its operator may have asked for a high `fall` to keep a
      peer restarting in place.
    - `silent(peer, now)`: no answer within a deadline. Only evidence: the peer is
      down once phi(now) reaches `threshold`.
    - `judge(peer, now)`: re-read phi without a new result (silence keeps growing
      while a check is still in flight).
    Each returns the new verdict when it changed, else None. A new peer starts
    down without a verdict: its first one is "up".
    """

    def __init__(self, *, threshold: float = DEFAULT_THRESHOLD, first_interval: float,
                 acceptable_pause: float, min_std_deviation: float,
                 window: int = DEFAULT_WINDOW, rise: int = 1, fall: int = 1) -> None:
        if threshold <= 0 or rise < 1 or fall < 1:
            raise ValueError("threshold must be > 0, rise and fall >= 1")
        PhiAccrual(first_interval=first_interval, acceptable_pause=acceptable_pause,
                   min_std_deviation=min_std_deviation, window=window)  # validates the rest
        self.threshold = threshold
        self.rise = rise
        self.fall = fall
        self._accrual = dict(first_interval=first_interval, acceptable_pause=acceptable_pause,
                             min_std_deviation=min_std_deviation, window=window)
        self._peers: dict[str, _Peer] = {}

    def _peer(self, peer: str) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer(PhiAccrual(**self._accrual))
        return state

    def presume_up(self, peer: str, now: float) -> bool | None:
        """Count `peer` as up and just heard from (a configured member, a re-registration)."""
        state = self._peer(peer)
        state.accrual.heartbeat(now, record_interval=state.up)
        state.refusals = state.good = 0
        state.refusing = False
        return self._set(state, True)

    def heartbeat(self, peer: str, now: float) -> bool | None:
        state = self._peer(peer)
        # A gap that ended a failure (refusals, or a down verdict) says nothing about the
        # live peer's rate: learning it would make the next detection slower.
        state.accrual.heartbeat(now, record_interval=state.up and not state.refusals)
        state.refusals = 0
        state.refusing = False
        if state.up:
            return None
        state.good += 1
        return self._set(state, True) if state.good >= self.rise else None

    def refused(self, peer: str, now: float) -> bool | None:
        state = self._peer(peer)
        state.good = 0
        state.refusals += 1
        state.refusing = True
        return self._set(state, False) if state.refusals >= self.fall else None

    def silent(self, peer: str, now: float) -> bool | None:
        state = self._peer(peer)
        state.good = 0
        state.refusing = False
        return self._judge(state, now)

    def judge(self, peer: str, now: float) -> bool | None:
        state = self._peers.get(peer)
        return None if state is None else self._judge(state, now)

    def _judge(self, state: _Peer, now: float) -> bool | None:
        if state.up and not state.refusing and state.accrual.phi(now) >= self.threshold:
            return self._set(state, False)
        return None

    def _set(self, state: _Peer, up: bool) -> bool | None:
        if up == state.up:
            return None
        state.up = up
        state.good = 0
        return up

    def phi(self, peer: str, now: float) -> float:
        state = self._peers.get(peer)
        return 0.0 if state is None else state.accrual.phi(now)

    def is_up(self, peer: str) -> bool:
        state = self._peers.get(peer)
        return bool(state and state.up)

    def verdicts(self) -> dict[str, bool]:
        return {peer: state.up for peer, state in self._peers.items()}

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)
