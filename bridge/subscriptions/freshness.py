"""Knowing when the subscription table has caught up with its topic.

A subscription change must apply to every event published after the change reached the topic.
The table and the events are different topics, read independently, so before an event is matched
the worker checks that the table has applied everything that was in the subscriptions topic when
the event was received: a *round* reads the topic's end offsets, then waits until the table has
applied records up to them. Events received before a round started are covered by it; rounds are
shared by all waiting events, so the cost is one offsets request per batch of events, not per event.

A round also covers every source record below the high-water marks the worker's consumer had
seen when the round started (``source_ends``): such a record was in its partition before the
broker answered that fetch, so before the round asked for the subscriptions topic's end, and so
was every subscription change published before it. That covers the records of a fetch that
reach the worker while a round runs, and records fetched before a round started and handed on
after it, without another round. (Covering them because they arrived while the round waited,
as the first version did, was wrong: a record published after the round read the end offsets
could arrive before the round ended.)

That rule holds while a partition's offsets only grow. A partition read again from a lower
offset breaks it when the topic was deleted and created again under the worker: its new records
start over below the marks earlier rounds saw, and would count as covered without a round. So
the worker reports each source record as it arrives (:meth:`TableFreshness.received`); a record
at or below the last one of its partition forgets that partition's marks, and a round already
running when that happens does not put them back. Its records are then covered by arrival time
until a round sees the partition again. The same happens, harmlessly (one more round), when a
partition is read again after a rebalance or a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple, Protocol

__all__ = ["TableFreshness", "Placed", "Position"]

_EndOffsets = Callable[[], Awaitable[Mapping[int, int]]]
#: The consumer's high-water marks of the source partitions, by (topic, partition): what the
#: latest fetch responses reported, read without a request.
_SourceEnds = Callable[[], Mapping[tuple[str, int], int]]


class Position(Protocol):
    """Where a source record is (:class:`bridge.delivery.dead_letters.SourceRef` is one)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


class Placed(NamedTuple):
    """Where the broker acknowledged a record this process wrote to the subscriptions topic."""

    partition: int
    offset: int


class TableFreshness:
    """Tracks the table's applied offsets and answers "is it current as of time t?"."""

    def __init__(
        self,
        end_offsets: _EndOffsets,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        source_ends: _SourceEnds | None = None,
    ) -> None:
        self._end_offsets = end_offsets
        self._source_ends = source_ends
        #: Source records below these offsets, by (topic, partition), are covered.
        self._covered_offsets: dict[tuple[str, int], int] = {}
        #: The offset of the last source record received, by (topic, partition).
        self._last_received: dict[tuple[str, int], int] = {}
        #: How many times each partition was read again from a lower offset.
        self._rereads: dict[tuple[str, int], int] = {}
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

    def has_applied(self, placed: Placed) -> bool:
        """Whether the table applied the record at ``placed`` (or a later one of its
        partition, which it reads in order)."""
        return self._applied.get(placed.partition, 0) > placed.offset

    def received(self, source: Position) -> None:
        """Note a source record's arrival; call it for each, in the order its partition
        delivers them (see the module's docstring)."""
        key = (source.topic, source.partition)
        last = self._last_received.get(key)
        self._last_received[key] = source.offset
        if last is not None and source.offset <= last:
            self._covered_offsets.pop(key, None)
            self._rereads[key] = self._rereads.get(key, 0) + 1

    def covers(self, received_at: float, source: Position | None = None) -> bool:
        """True when a finished round already covers a record received at ``received_at``
        (from ``source``, when it is a source record)."""
        if received_at <= self._covered_until:
            return True
        if source is None:
            return False
        return source.offset < self._covered_offsets.get((source.topic, source.partition), 0)

    @property
    def ever_current(self) -> bool:
        """A round has finished: the table applied everything the topic held at some moment
        since it started. Before that it may hold only part of the topic (it is still being
        read at the worker's start), and a webhook missing from it may well exist."""
        return self._covered_until > float("-inf")

    def caught_up_to(self, ends: Mapping[int, int]) -> bool:
        return all(self._applied.get(p, 0) >= end for p, end in ends.items() if end > 0)

    async def wait_current(self, received_at: float, source: Position | None = None) -> bool:
        """Wait until every subscription change that reached the topic before ``received_at``
        (a value of ``clock``), or before the record at ``source``, is applied. False when that
        could not be shown within the timeout: the caller then matches against the table as it
        is (and counts it). True means :meth:`covers` says so from then on."""
        if self.covers(received_at, source):
            return True
        deadline = self._clock() + self._timeout
        while not self.covers(received_at, source):
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
        # Read before the request goes out: these records were in the topic before it.
        seen = dict(self._source_ends()) if self._source_ends is not None else {}
        rereads = dict(self._rereads)
        ends = await self._end_offsets()
        while not self.caught_up_to(ends):
            self._progress.clear()
            await self._progress.wait()
        self._covered_until = max(self._covered_until, started)
        covered = self._covered_offsets
        for key, end in seen.items():
            if self._rereads.get(key, 0) != rereads.get(key, 0):
                continue  # read again from a lower offset since this round saw its mark
            if end > covered.get(key, 0):
                covered[key] = end
