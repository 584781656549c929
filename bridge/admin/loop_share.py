"""A share of the event loop that background scans (recoveries, dead letters) take together.

A recovery reads the events topic from a time on and matches each event against one webhook: a
week of a busy platform's events is millions of records, every one parsed, on the event loop a
worker's deliveries run on. Left alone, a scan is ready to run again whenever it awaits (its
consumer has the next batch fetched already), so it took as much of the loop as the deliveries
left it, and eight at once (``api_max_recoveries``) most of it; a dead-letter listing whose
filter selects few letters parses the whole topic likewise. A site's own tools, given a
site-restricted token, could keep that up. With a :class:`LoopShare`, every such read of a
process pays for each stretch of work it did without awaiting (at most
:data:`STRETCH_RECORDS` records) by sleeping, so that together they work at most ``share`` of
the time, however many run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from typing import TypeVar

__all__ = ["STRETCH_RECORDS", "MIN_SLEEP", "LoopShare", "Payer"]

#: Records a scan handles between two payments: at ~10-15 us each (an event parsed and
#: matched, BENCHMARKS.md), a stretch holds the loop for a few milliseconds.
STRETCH_RECORDS = 128
#: A wait shorter than this is not slept: it stays owed (the lane keeps it), and a later
#: payment sleeps it with its own, so that payments after each record cost no timer each.
MIN_SLEEP = 0.001


class LoopShare:
    """At most ``share`` (0 < share <= 1) of the time for the work of everyone paying here.

    Work is lined up on one lane at ``1 / share`` of its length: a stretch of ``d`` seconds
    ending now begins on the lane where the lane is free, or where it began when that is later,
    and takes ``d / share`` there; its payer sleeps until the lane is free again. So over any
    time, the stretches paid for since sum to at most ``share`` of it plus one stretch each
    payer did before its first payment. ``share`` 1 never waits, but lets the loop run a turn
    at each payment that asks for one (``turn``)."""

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

    async def pay(self, began: float, *, turn: bool = True) -> float:
        """Pay for the stretch of work from ``began`` (:meth:`since`) to now: sleep until the
        lane is free, and with ``turn`` let the event loop run a turn in any case (a scan whose
        consumer has its records fetched already never awaits anything else, and held the loop
        for as long as they lasted; without, for a caller about to await something itself).
        Returns the clock after the sleep (where the next stretch begins)."""
        if self.share < 1:
            now = self._clock()
            worked = max(0.0, now - began)
            self._free_at = max(self._free_at, began) + worked / self.share
            wait = self._free_at - now
            if wait >= MIN_SLEEP:
                await self._sleep(wait)
                return self._clock()
        if turn:
            await self._sleep(0)
        return self._clock()


class _Turn:
    """Set when the event loop ran a turn after it was made (:meth:`Payer.fetching`)."""

    __slots__ = ("ran",)

    def __init__(self) -> None:
        self.ran = False

    def __call__(self) -> None:
        self.ran = True


_Record = TypeVar("_Record")
_Made = TypeVar("_Made")


class Payer:
    """One scan's payments to a :class:`LoopShare` (none without one): a stretch of work
    begins at :meth:`start` (after an await) or with a fetch that did not wait
    (:meth:`fetching`), and is paid for after :data:`STRETCH_RECORDS` records (:meth:`handled`,
    with a turn of the loop) and before the scan awaits anything else (:meth:`settle`)."""

    def __init__(self, share: LoopShare | None) -> None:
        self._share = share
        self._began = 0.0
        self._records = 0

    def start(self) -> None:
        if self._share is not None:
            self._began = self._share.since()
            self._records = 0

    def fetching(self) -> _Turn | None:
        """A fetch begins: so does a stretch (aiokafka unpacks records it fetched already in
        ``getmany``, on the caller's task, without awaiting); the returned turn tells
        :meth:`fetched` whether the fetch let the loop run (it waited for the broker, and
        what ran meanwhile was not this scan's work)."""
        if self._share is None:
            return None
        self.start()
        turn = _Turn()
        asyncio.get_running_loop().call_soon(turn)
        return turn

    def fetched(self, turn: _Turn | None) -> None:
        if turn is not None and turn.ran:
            self.start()

    async def handled(self) -> None:
        """One record handled; the stretch paid for when it holds ``STRETCH_RECORDS``."""
        self._records += 1
        if self._records >= STRETCH_RECORDS:
            await self.pay()

    async def pay(self) -> None:
        """Pay for the stretch so far, and let the loop run a turn."""
        if self._share is not None:
            self._began = await self._share.pay(self._began)
            self._records = 0

    async def settle(self) -> None:
        """Pay for the stretch so far before the scan awaits something else (which lets the
        loop run: no turn is added, so that a record handed over costs no turn of its own)."""
        if self._share is not None:
            self._began = await self._share.pay(self._began, turn=False)
            self._records = 0

    async def each(
        self,
        batches: AsyncIterable[Iterable[_Record]],
        make: Callable[[_Record], _Made | None],
    ) -> AsyncGenerator[_Made, None]:
        """What ``make`` makes of each record of ``batches`` (those it makes ``None`` of left
        out), as they come, with the making paid for: what the caller does with each is not."""
        async for batch in batches:
            self.start()
            for record in batch:
                await self.handled()
                made = make(record)
                if made is not None:
                    await self.settle()
                    yield made
                    self.start()
            await self.pay()
