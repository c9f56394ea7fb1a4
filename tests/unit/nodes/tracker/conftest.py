"""A clock the tracker's sans-I/O cores read, moved by hand (`clock.now += 90`)."""

from __future__ import annotations

import pytest


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()
