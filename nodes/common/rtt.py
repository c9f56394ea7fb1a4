"""Per-peer call timeouts learned from measured round trips, as TCP's retransmission timer
does (Jacobson/Karels; RFC 6298) and as Bamboo's DHT does for its hops (Rhea et al.,
"Handling Churn in a DHT", USENIX 2004).

A fixed deadline is wrong both ways on a shared laptop: too long for a peer that
answers in 2 ms (a dead one is noticed late), too short for one starved of CPU
(a live one is taken for dead, and the retries make the starvation worse).
`RttEstimator.timeout(peer)` is srtt + 4·rttvar for that peer, clamped to
[minimum, maximum]; a peer never measured gets `initial`. A timed-out call is no
sample (Karn's rule: its round trip is unknown) and doubles that peer's timeout
until an answer comes. Sans-I/O and thread-safe; the caller measures and reports.
At most `capacity` peers are remembered (the least recently used go first), so
a long churn cannot grow it without bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

ALPHA = 1 / 8  # gain of the smoothed round trip (RFC 6298)
BETA = 1 / 4  # gain of its mean deviation
K = 4  # deviations of margin above the smoothed round trip
MAX_BACKOFF = 64.0  # timeout() clamps to maximum anyway; this only keeps the number small


@dataclass
class _Peer:
    srtt: float
    rttvar: float
    backoff: float = 1.0


class RttEstimator:
    def __init__(self, *, initial: float, minimum: float, maximum: float,
                 capacity: int = 1024) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError(f"need 0 < minimum ({minimum}) <= maximum ({maximum})")
        self.initial = min(max(initial, minimum), maximum)
        self.minimum = minimum
        self.maximum = maximum
        self.capacity = capacity
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._lock = threading.Lock()

    def timeout(self, peer: str) -> float:
        """The deadline for the next call to `peer`, in seconds."""
        with self._lock:
            state = self._peers.get(peer)
            if state is None:
                return self.initial
            rto = (state.srtt + K * state.rttvar) * state.backoff
            return min(max(rto, self.minimum), self.maximum)

    def observe(self, peer: str, seconds: float) -> None:
        """A call to `peer` was answered after `seconds`."""
        with self._lock:
            state = self._peers.get(peer)
            if state is None:  # the first sample sets the deviation to half of it (RFC 6298)
                self._remember(peer, _Peer(srtt=seconds, rttvar=seconds / 2))
                return
            self._peers.move_to_end(peer)
            state.rttvar = (1 - BETA) * state.rttvar + BETA * abs(state.srtt - seconds)
            state.srtt = (1 - ALPHA) * state.srtt + ALPHA * seconds
            state.backoff = 1.0

    def timed_out(self, peer: str) -> None:
        """A call to `peer` hit its deadline: wait longer next time (never past maximum)."""
        with self._lock:
            state = self._peers.get(peer)
            if state is None:  # silent before any answer: back off from the initial deadline
                state = self._remember(peer, _Peer(srtt=self.initial, rttvar=0.0))
            state.backoff = min(state.backoff * 2, MAX_BACKOFF)

    def _remember(self, peer: str, state: _Peer) -> _Peer:
        self._peers[peer] = state
        if len(self._peers) > self.capacity:
            self._peers.popitem(last=False)
        return state

    def forget(self, peer: str) -> None:
        with self._lock:
            self._peers.pop(peer, None)

    def __len__(self) -> int:
        return len(self._peers)
