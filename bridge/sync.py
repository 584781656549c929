"""Knowing when the subscription table has caught up with its topic.

A subscription change must apply to every event published after the change reached the topic.
The table and the events are different topics, read independently, so before an event is matched
the worker checks that the table has applied everything that was in the subscriptions topic when
the event was received: a *round* reads the topic's end offsets, then waits until the table has
applied records up to them. Events received before a round started are covered by it; rounds are
shared by all waiting events, so the cost is one offsets request per batch of events, not per event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

__all__ = ["TableFreshness"]

EndOffsets = Callable[[], Awaitable[Mapping[int, int]]]


class TableFreshness:
    """Tracks the table's applied offsets and answers "is it current as of time t?"."""

    def __init__(
        self,
        end_offsets: EndOffsets,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._end_offsets = end_offsets
        self._timeout = timeout
        self._clock = clock
        #: Next offset to apply, by partition (i.e. last applied offset + 1).
        self._applied: dict[int, int] = {}
        self._progress = asyncio.Event()
        #: Everything received up to this clock value is covered by a finished round.
        self._covered_until = float("-inf")
        self._round: asyncio.Task[None] | None = None
        self._round_started = float("-inf")

    def applied(self, partition: int, offset: int) -> None:
        """Record that the table applied the record at ``offset`` of ``partition``."""
        if offset + 1 > self._applied.get(partition, 0):
            self._applied[partition] = offset + 1
            self._progress.set()

    def covers(self, received_at: float) -> bool:
        """True when a finished round already covers a record received at ``received_at``."""
        return received_at <= self._covered_until

    def caught_up_to(self, ends: Mapping[int, int]) -> bool:
        return all(self._applied.get(p, 0) >= end for p, end in ends.items() if end > 0)

    async def wait_current(self, received_at: float) -> bool:
        """Wait until every subscription change that reached the topic before ``received_at``
        (a value of ``clock``) is applied. False when that could not be shown within the timeout:
        the caller then matches against the table as it is (and counts it)."""
        if received_at <= self._covered_until:
            return True
        deadline = self._clock() + self._timeout
        while received_at > self._covered_until:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            # Other waiters may replace ``self._round`` while this one waits: only ever look
            # at the round this waiter awaited.
            current = self._round
            if current is not None and current.done() and not current.cancelled():
                current.exception()  # handled here even when no waiter looked at it
            if current is None or current.done() or self._round_started < received_at:
                if current is not None and not current.done():
                    # A round that started before this record arrived does not cover it; wait
                    # for it to end, then start the next one.
                    await asyncio.wait({current}, timeout=remaining)
                    continue
                self._round_started = self._clock()
                current = self._round = asyncio.ensure_future(
                    asyncio.wait_for(self._run_round(self._round_started), self._timeout)
                )
            done, _ = await asyncio.wait({current}, timeout=remaining)
            if not done:
                return False
            if current.cancelled() or current.exception() is not None:
                # The offsets request failed (or the round timed out); the next loop tries
                # again within the deadline.
                if self._round is current:
                    self._round = None
                await asyncio.sleep(min(0.05, max(0.0, deadline - self._clock())))
        return True

    async def _run_round(self, started: float) -> None:
        ends = await self._end_offsets()
        while not self.caught_up_to(ends):
            self._progress.clear()
            await self._progress.wait()
        self._covered_until = max(self._covered_until, started)
