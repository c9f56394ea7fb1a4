"""The textbook experiment, small (bench.bittorrent has the full one): the time to give a
1 MiB file to N = 1, 2, 4, 8 leechers, client-server against P2P, every upload capped at
1 MiB/s, with our tracker and peers over real TCP on loopback (in this process: the
benchmark starts a process per machine, which costs more than the transfers here).

Only the shape is asserted, as ratios within one run: client-server grows about linearly
with N (its bound is N F / u_s), P2P far slower (its bound stays F / u_s while N u keeps
up), and no time beats its lower bound by more than a full token bucket's worth."""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager

import pytest

from bench.bittorrent import CLIENT_SERVER, MIB, P2P, bounds, distribute
from nodes.peer.__main__ import SPEC as PEER_SPEC
from nodes.tracker.__main__ import SPEC as TRACKER_SPEC
from tests.integration.conftest import Lab, address_of

SIZES = (1, 2, 4, 8)
FILE_BYTES = MIB
RATE = MIB  # bytes/s
BURST_SECONDS = 0.25  # a bucket starts full: a quarter second's worth (nodes/peer/limits.py)


class InProcess:
    """bench.bittorrent's Machines as in-process nodes of a test lab."""

    SPECS = {"peer": PEER_SPEC, "tracker": TRACKER_SPEC}

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.credential_file, self.credential = lab.credential_file, lab.credential
        self._numbers = itertools.count(1)
        self._stopping: list[threading.Thread] = []

    @contextmanager
    def start(self, role: str, **settings):
        node = self.lab.start(f"{role}-{next(self._numbers)}", spec=self.SPECS[role],
                              **settings)
        try:
            yield address_of(node)
        finally:
            # A node takes about half a second to stop: in the background, all at once.
            stopping = threading.Thread(target=self.lab.stop, args=(node,))
            stopping.start()
            self._stopping.append(stopping)

    def close(self) -> None:
        for stopping in self._stopping:
            stopping.join()
        self.lab.close()


@pytest.fixture(scope="module")
def times(tmp_path_factory) -> dict[str, dict[int, float]]:
    machines = InProcess(Lab(tmp_path_factory))
    try:
        return {mode: {n: distribute(n, mode, file_bytes=FILE_BYTES, rate=RATE, timeout=60,
                                     machines=machines)
                       for n in SIZES}
                for mode in (CLIENT_SERVER, P2P)}
    finally:
        machines.close()


def test_client_server_grows_about_linearly_with_n(times):
    cs = times[CLIENT_SERVER]
    assert cs[8] / cs[1] >= 5, cs  # the bound's ratio is 8
    assert cs[1] < cs[2] < cs[4] < cs[8], cs


def test_p2p_grows_far_slower_and_wins_at_eight(times):
    p2p, cs = times[P2P], times[CLIENT_SERVER]
    assert p2p[8] / p2p[1] <= 3, p2p  # the bound's ratio is 1
    assert cs[8] / p2p[8] >= 3, (cs, p2p)


def test_no_time_beats_its_lower_bound(times):
    for mode, by_n in times.items():
        for n, seconds in by_n.items():
            bound = bounds(n, FILE_BYTES, RATE, RATE)[mode]
            assert seconds >= bound - BURST_SECONDS, (mode, n, seconds, bound)


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="client-server or p2p"):
        distribute(1, "multicast", file_bytes=FILE_BYTES, rate=RATE)
