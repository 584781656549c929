"""The retry tiers' records, from the consumer to the pipeline: one queue and one task per
partition, never holding up the consumer.

A retry record waits in its partition until it is due (:meth:`Pipeline.handle_retry
<bridge.delivery.pipeline.Pipeline.handle_retry>`), holding up the records behind it, which
fell due later. Through a Faust agent, every retry record fetched cost the worker's consumer one
turn of the event loop (a record put in a stream's buffer is followed by a yield, see
:mod:`bridge.worker.faust_patches.handoff`), and at a few hundred retry records a second beside
thousands of events the consumer fell behind: a slow endpoint's deferrals put the other
endpoints' events a second late (until 2026-12-06; BENCHMARKS.md, "Retry records off the
consumer's path"). Here the tiers' topics are :class:`~bridge.worker.direct_topic.DirectTopic` s
like the events topic: a fetched record is appended to its partition's queue, with no yield,
and the partition's task hands the records on in offset order, one at a time. The agent's one
stream also made a record waiting in one partition hold up the tier's other partitions; each
partition now waits for its own records only.

Each record is handed on with the time it was taken here: it waits at most its tier's delay
from then, however far ahead it says it is due.

A queue holding :data:`HIGH_MARK` records, or :data:`HIGH_BYTES` of them, has its partition left
out of the consumer's fetches (``on_full``, Faust's ``Consumer.on_buffer_full``) until it is down
to :data:`LOW_MARK` and :data:`LOW_BYTES` (``on_drop``); records already fetched are still
taken, so a queue can pass the mark by one fetch. A rebalance empties the queues and stops
their tasks (:meth:`RetryIntake.clear`, which Faust's flow control calls as it clears the
queues it manages): their records are not acknowledged, and the partitions' owners read them
again from the committed offsets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping

from bridge.delivery.job import Ack, SourceRef

__all__ = ["RetryIntake", "HIGH_MARK", "LOW_MARK", "HIGH_BYTES", "LOW_BYTES"]

log = logging.getLogger(__name__)

#: Records queued in one partition at which its fetching stops (Faust's stream buffer held
#: 4,096 a tier; a tier has 6 partitions by default).
HIGH_MARK = 512
#: Records left in a stopped partition's queue at which its fetching goes on.
LOW_MARK = 128
#: Bytes of records (their values) queued in one partition at which its fetching stops, however
#: few they are: a tier's records carry their events, up to ``max_body_bytes`` each, and a
#: hostile or merely large event deferred by a slow endpoint must not make the queues hold
#: hundreds of megabytes. With the default 7 tiers of 6 partitions and the consumer's 1 MiB
#: fetch per partition past the mark, the queues hold at most about 210 MiB.
HIGH_BYTES = 4 * 1024 * 1024
#: Bytes left in a stopped partition's queue at which its fetching goes on (with LOW_MARK).
LOW_BYTES = 1024 * 1024

_Key = tuple[str, int]
#: A record's value, source, acknowledgement, and when it was taken (``clock``).
_Item = tuple[bytes | None, SourceRef, Ack, float]
_Handle = Callable[[bytes | None, SourceRef, Ack, int, float], Awaitable[None]]
_Mark = Callable[[str, int], None]


def _size(raw: bytes | None) -> int:
    """What a record's value counts toward :data:`HIGH_BYTES` (a tombstone: nothing)."""
    return 0 if raw is None else len(raw)


class _Queue:
    """One partition's records, and the bytes of their values."""

    __slots__ = ("items", "size")

    def __init__(self) -> None:
        self.items: deque[_Item] = deque()
        self.size = 0


class RetryIntake:
    """Takes the retry tiers' records (an :class:`~bridge.worker.direct_topic.Intake`) and hands
    each partition's on to ``handle`` in order, with its tier (counted from 1) and when it was
    taken (on ``clock``, the one ``handle`` counts time with)."""

    def __init__(
        self,
        handle: _Handle,
        tiers: Mapping[str, int],
        *,
        on_full: _Mark,
        on_drop: _Mark,
        high_mark: int = HIGH_MARK,
        low_mark: int = LOW_MARK,
        high_bytes: int = HIGH_BYTES,
        low_bytes: int = LOW_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= low_mark < high_mark or not 0 <= low_bytes < high_bytes:
            raise ValueError("need 0 <= low < high, for records and for bytes")
        self._handle = handle
        self._tiers = dict(tiers)
        self._on_full = on_full
        self._on_drop = on_drop
        self._high = high_mark
        self._low = low_mark
        self._high_bytes = high_bytes
        self._low_bytes = low_bytes
        self._clock = clock
        self._queues: dict[_Key, _Queue] = {}
        self._tasks: dict[_Key, asyncio.Task[None]] = {}
        self._stopped: set[_Key] = set()
        self._closed = False

    @property
    def queued(self) -> int:
        """Records taken and not yet handed on."""
        return sum(len(queue.items) for queue in self._queues.values())

    @property
    def queued_bytes(self) -> int:
        """The bytes of those records' values."""
        return sum(queue.size for queue in self._queues.values())

    def waiting(self, tier: int) -> tuple[int, int]:
        """The records of ``tier`` taken and not yet handed on, and their bytes."""
        records = size = 0
        for (topic, _), queue in self._queues.items():
            if self._tiers.get(topic) == tier:
                records += len(queue.items)
                size += queue.size
        return records, size

    @property
    def full(self) -> int:
        """Partitions whose fetching is stopped (their queue reached a high mark)."""
        return len(self._stopped)

    def offsets(self, topic: str, partition: int) -> list[int]:
        """The offsets queued for ``partition`` of ``topic``, oldest first."""
        queue = self._queues.get((topic, partition))
        return [] if queue is None else [item[1].offset for item in queue.items]

    def accepts(self) -> bool:
        """Always: a record is queued, never waited for (a full queue stops its fetching)."""
        return True

    def offer(self, raw: bytes | None, source: SourceRef, ack: Ack) -> None:
        if self._closed:
            return  # stopping: left unacknowledged, read again after the restart
        tier = self._tiers.get(source.topic)
        if tier is None:
            raise ValueError(f"not a retry tier's topic: {source.topic!r}")
        key = (source.topic, source.partition)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        queue.items.append((raw, source, ack, self._clock()))
        queue.size += _size(raw)
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._run(key, queue, tier))
        if len(queue.items) >= self._high or queue.size >= self._high_bytes:
            # Marked again at every record past the mark: Faust recomputes the partitions it
            # fetches (after a table's recovery), which may have dropped the mark.
            self._stopped.add(key)
            self._mark(self._on_full, key)

    async def handle_event(self, raw: bytes | None, source: SourceRef, ack: Ack) -> None:
        self.offer(raw, source, ack)

    async def _run(self, key: _Key, queue: _Queue, tier: int) -> None:
        items = queue.items
        try:
            while items:
                raw, source, ack, taken_at = items.popleft()
                queue.size -= _size(raw)
                if (
                    key in self._stopped
                    and len(items) <= self._low
                    and queue.size <= self._low_bytes
                ):
                    self._stopped.discard(key)
                    self._mark(self._on_drop, key)
                try:
                    await self._handle(raw, source, ack, tier, taken_at)
                except Exception:
                    # handle_retry settles every record it is given: this is a bug. The record
                    # stays unacknowledged (no commit passes it; it is read again after a
                    # restart or rebalance) and the partition's next records go on.
                    log.exception(
                        "retry record not handled; it stays unacknowledged",
                        extra={"topic": source.topic, "offset": source.offset},
                    )
        finally:
            if self._tasks.get(key) is asyncio.current_task():
                del self._tasks[key]

    def revoke(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        """Forget the queued records of ``partitions`` (all when ``None``) and stop their
        tasks: a rebalance took them, or may give them back read again from the committed
        offset. A record being waited for when its task stops (not yet due, or waiting for the
        table or for room in the pipeline) is not acknowledged either; one whose delivery
        started runs on and settles as any other (at least once: the next owner may attempt it
        again, with the same delivery id). A partition whose fetching was stopped is let go
        (Faust keeps a partition paused by the rebalance paused; left marked, records of its
        fetches from before a pause would still be handed on)."""
        keys = list(self._queues) if partitions is None else list(partitions)
        for key in keys:
            queue = self._queues.pop(key, None)
            if queue is not None:
                queue.items.clear()
                queue.size = 0
            task = self._tasks.pop(key, None)
            if task is not None:
                task.cancel()
            if key in self._stopped:
                self._stopped.discard(key)
                self._mark(self._on_drop, key)

    @staticmethod
    def _mark(mark: _Mark, key: _Key) -> None:
        """Tell the consumer to stop or go on fetching a partition; a failure is logged, never
        raised (into the consumer's hand-off, a partition's task, or a rebalance's clear of
        every queue)."""
        try:
            mark(*key)
        except Exception:
            log.exception(
                "retry partition's fetching not changed",
                extra={"topic": key[0], "partition": key[1]},
            )

    def clear(self) -> None:
        """:meth:`revoke` of every partition, as Faust's flow control clears the queues it
        manages: at the start of a rebalance, at once (before Faust waits for its producer
        and before it signals the revocation, which a handler of the signal may wait in front
        of), and before the seek to the committed offsets that ends a table recovery."""
        self.revoke()

    async def close(self) -> None:
        """Stop taking records and stop every task (on shutdown, before the pipeline drains:
        what was queued or waiting to fall due is left unacknowledged)."""
        self._closed = True
        tasks = list(self._tasks.values())
        self.revoke()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
