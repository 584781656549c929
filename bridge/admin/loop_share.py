"""A share of the event loop that background scans (recoveries) take together, and no more.

A recovery reads the events topic from a time on and matches each event against one webhook: a
week of a busy platform's events is millions of records, every one parsed, on the event loop a
worker's deliveries run on. Left alone, a scan is ready to run again whenever it awaits (its
consumer has the next batch fetched already), so it took as much of the loop as the deliveries
left it, and eight at once (``api_max_recoveries``) most of it. A site's own tools, given a
site-restricted token, could keep that up. With a :class:`LoopShare`, every recovery of a
process pays for each stretch of work it did without awaiting (at most
:data:`STRETCH_RECORDS` records) by sleeping, so that together they work at most ``share`` of
the time, however many run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["STRETCH_RECORDS", "LoopShare"]

#: Records a scan handles between two payments: at ~10-15 us each (an event parsed and
#: matched, BENCHMARKS.md), a stretch holds the loop for a few milliseconds.
STRETCH_RECORDS = 128


class LoopShare:
    """At most ``share`` (0 < share <= 1) of the time for the work of everyone paying here.

    Work is lined up on one lane at ``1 / share`` of its length: a stretch of ``d`` seconds
    ending now begins on the lane where the lane is free, or where it began when that is later,
    and takes ``d / share`` there; its payer sleeps until the lane is free again. So over any
    time, the stretches paid for since sum to at most ``share`` of it plus one stretch each
    payer did before its first payment. ``share`` 1 never sleeps."""

    def __init__(
        self,
        share: float,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self.share = share
        self._clock = clock
        self._sleep = sleep
        #: Where the lane is free (the clock's seconds).
        self._free_at = float("-inf")

    def __repr__(self) -> str:
        return f"LoopShare({self.share})"

    def since(self) -> float:
        """The clock now: where a stretch begins (give it back to :meth:`pay`)."""
        return self._clock()

    async def pay(self, began: float) -> float:
        """Pay for the stretch of work from ``began`` (:meth:`since`) to now: sleep until the
        lane is free. Returns the clock after the sleep (where the next stretch begins)."""
        now = self._clock()
        worked = max(0.0, now - began)
        if self.share >= 1:
            return now
        self._free_at = max(self._free_at, began) + worked / self.share
        wait = self._free_at - now
        if wait > 0:
            await self._sleep(wait)
            return self._clock()
        return now
