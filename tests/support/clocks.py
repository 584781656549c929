"""Fake clocks for the pure modules, which take their clock as an argument."""

from __future__ import annotations


class FakeClock:
    """Stands still at ``now`` until a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Ticks:
    """A fake perf_counter: each call advances by ``step``."""

    def __init__(self, start: float = 100.0, step: float = 0.25) -> None:
        self.now = start - step
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now
