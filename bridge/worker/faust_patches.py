"""Adjustments to faust-streaming that its settings do not expose, applied by bridge.worker.app.

Faust creates its consumer with ``fetch_max_wait_ms=1500`` hard-coded. Real Kafka answers a
waiting fetch as soon as records arrive, but the embedded broker (Tansu) holds it for the whole
wait, which put up to 1.5 s between an event and its delivery. The bridge sets the wait from
``kafka_fetch_max_wait`` instead (idle fetches then cost one small request per wait per broker).

After a rebalance Faust drops the records fetched while it recovered its tables, then seeks each
partition to its committed offset; aiokafka skips partitions with none, so their first records
were lost until a restart. The bridge seeks those to their beginning (``auto_offset_reset``
earliest, as configured).

Faust recovers a table by awaiting ``asyncio.wait_for(queue.get(), timeout=5.0)`` for every
record. On Python 3.11 each ``wait_for`` call starts a task, the largest single cost of reading
100,000 subscriptions at start; the bridge gives that module ``wait_for`` as Python 3.12
implements it (``asyncio.timeout`` around the awaitable, same results and errors, no task).

Faust's consumer hands every fetched record to its streams and tables with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: four tasks and an
``asyncio.wait`` per record, so that a rebalance can interrupt a callback that waits for room in
a full stream buffer. The bridge first runs the callback directly; almost always it finishes
without waiting, and one yield to the event loop follows, as Faust's own hand-off yields per
record (without it a rebalance could not stop the flow inside a fetched batch, and records
were lost after a worker was killed and replaced: those records were in a stream's buffer,
which a rebalance clears). A callback that put its record in no such buffer says so by returning
``UNBUFFERED`` (the events topic's hand-off, :mod:`bridge.worker.direct_topic`); after those the
yield comes once every ``UNBUFFERED_YIELD_EVERY`` records, as Faust's consumer yields every 100
records of a fetch. Only when the callback would wait does the rest of it become a task, raced
against the flow suspension exactly as before (``fast_record_handoff``).

Faust's fetcher asks the consumer thread for records with a one-second timeout, and sleeps a
second when no partition is active (while its tables recover). A partition resumed meanwhile
waited for the end of that second: the worker said ready about a second before it delivered
anything, and the first events after every start or rebalance arrived up to a second late. The
bridge polls every ``FETCHER_POLL`` seconds instead (``prompt_fetcher``).

Faust recovers a global table's partitions as active partitions, then seeks them again, as
standby partitions, to where the recovery *started*, re-reading (and skipping) every record of
the subscription topic right after ready. The bridge starts the standby reading of partitions
that were just recovered as active where that recovery ended (``standby_after_active``).

When its recovery is complete Faust resumes the app's flow control once more
(``Recovery.on_recovery_completed``), and that clears every queue it manages, the tables'
changelog queue among them. The standby reading of the global tables' partitions has been
running since just before, so that queue held records the consumer had fetched (its position
already past them) and the tables had not applied yet: they were never read again, and a
subscription change written while a worker started stayed missing from its table until the next
restart (one rename in about every other start under a stream of writes, since
``standby_after_active``: Faust's own standby reading starts over from the topic's start, so
what the clear dropped had mostly been applied already). The bridge keeps that queue
(``keep_fetched_records``): its records are applied in order, and one read twice is skipped by
its offset as before.

The same resume cleared the retry agents' stream queues, and Faust resumes the stream
partitions *before* it seeks them to their committed offsets, while the flow already runs for
that standby reading. A retry record fetched and handed to its agent's queue after the seek was
dropped by the clear that followed, its partition's position already past it: not processed
until the next rebalance, and, handed on and never acknowledged, it held the partition's commits
(``commit_settled_only``) meanwhile. One handed on while the seek was under way (between the
seek of the partitions with a committed offset and that of the others) was also forgotten by the
seek's fresh count of records handed on, and the commits of later records passed it: never
processed. This could happen at every start and every rebalance. The bridge
(``keep_fetched_records``) clears the stream queues *before* the seek (what they hold then was
read before it, and is read again from the committed offset), seeks while the stream partitions
are still paused (Faust pauses every assigned partition when the assignment arrives; the seek
applies to them all the same), then resumes them and the flow without clearing anything. A
record handed on during the seek (only from a batch fetched before it, of a partition under
buffer pressure, which Faust hands on while paused) may be processed twice, never dropped.

Faust's consumer hands on a fetched batch record by record, yielding after each, and a seek can
come in between: the standby start of a table's recovery seeks its partitions back to where the
table is, and the rest of the batch, fetched before that seek, went on being handed on after it.
Its later records of a sought partition were applied before the re-read earlier ones, which the
table then skipped as applied: subscription changes lost until the next restart (hundreds of
records a run when every changelog record counted as buffer pressure, the state in which Faust
hands on a paused partition; a full retry tier can put a worker in it). The bridge counts the
consumer thread's seeks (:class:`SeekStamps`), stamps each batch with the count when it was
fetched, and skips a batch's records of a partition sought since
(``skip_records_fetched_before_a_seek``): the seek decides what is read next.

Faust pauses a global table's partitions when their active recovery ends, seeks them to where
the table is for the standby reading, then resumes them and its flow together, and that resume
clears the tables' changelog queue: harmless for records fetched before the seek, which are read
again. But Faust's consumer makes a partition active again when the pressure on its buffer drops
(``Consumer.on_buffer_drop``), paused or not. Under that pressure (every changelog record, with a
changelog queue of one) the partition was fetched from the seek on while still paused, and a
record of that fetch that waited in the queue at the resume was never read again: a subscription
change missing until the next restart (one record in 4 of 7 runs of the opt-in probe with such
a queue, then in 2 of 10 traced; in 5 of those 10 the partition was fetched between the seek and
the resume). The bridge leaves a paused partition out of the fetch until it is resumed
(``paused_partitions_stay_paused``).

Faust's consumer reads a partition's high-water mark from its consumer thread and reports it
to the sensors for every record it hands on, the same value for every record of a fetch. The
bridge reads and reports it once per partition per fetch (``end_offset_once_per_fetch``).

Faust commits, for each partition, the end of the first run of consecutive acknowledged offsets,
and it takes that run to start right after the committed offset even when it starts one past it:
with offset 14 unacknowledged (a job still running, or one that crashed) and 15 to 38
acknowledged, it committed 39, and record 14 was never read again. Its gap bookkeeping also
counts as done an offset read after a hole in the offsets before that record is acknowledged.
The bridge commits a partition only up to the first offset it was handed and has not seen
acknowledged (``commit_settled_only``; :class:`TakenOffsets` is fed by the consumer's callback):
a committed offset never passes an unsettled record.

Faust's table manager sleeps one second when it starts, before it registers the tables'
changelog channels, in case tables are still being defined. The bridge defines every table
before the app starts, so the pause only added a second to every start and every replacement
of a failed worker (``no_table_registration_pause``).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
import sys
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Coroutine, Generator, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka.errors import ConsumerStoppedError
from faust.app import base as faust_app
from faust.tables import manager as faust_tables
from faust.tables import recovery as faust_recovery
from faust.transport import conductor as faust_conductor
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults as _WaitResults
from mode.utils.queues import FlowControlEvent

from bridge.errors import ConfigError

__all__ = [
    "install",
    "PATCHES",
    "Patch",
    "PatchMismatch",
    "FAUST_VERSION",
    "fingerprint",
    "ORIGINALS",
    "set_fetch_max_wait",
    "wait_for",
    "UNBUFFERED",
    "UNBUFFERED_YIELD_EVERY",
    "FETCHER_POLL",
    "TakenOffsets",
    "taken_offsets",
    "SeekStamps",
    "seek_stamps",
]

_T = TypeVar("_T")

_fetch_max_wait_ms = 1500
_original_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original_create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = _fetch_max_wait_ms  # read when the consumer starts
    return consumer


def set_fetch_max_wait(seconds: float) -> None:
    """Use ``seconds`` as the longest time a fetch waits for records, for consumers created
    from now on."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = max(1, int(seconds * 1000))


class SeekStamps:
    """Which partitions the consumer thread sought, and when, counted in seeks: a batch of
    records is stamped with the count when the thread's fetch returned it, and a record of a
    partition sought after that (a higher stamp) was fetched before the seek.

    Stamps and seeks both happen in the consumer thread's event loop, each with no ``await``
    between it and what it marks (the fetch's return, aiokafka's position change), so the order
    of the two is exact. (The thread's synchronous ``seek``, called from the worker's loop, is
    counted before it seeks: a batch the thread returns in between is taken for one fetched
    after the seek, as it was without the count, and no batch fetched after a seek is ever
    taken for one fetched before it, which would lose its records.)
    """

    __slots__ = ("count", "latest")

    def __init__(self) -> None:
        #: Seeks made so far.
        self.count = 0
        #: The count after the latest seek of each partition.
        self.latest: dict[Any, int] = {}

    def sought(self, partitions: Iterable[Any]) -> None:
        """Count one seek of ``partitions``."""
        self.count += 1
        count = self.count
        for tp in partitions:
            self.latest[tp] = count

    def stale(self, tp: Any, fetched_at: int) -> bool:
        """Whether a record of ``tp`` in a batch stamped ``fetched_at`` was fetched before a
        seek of ``tp``."""
        return self.count != fetched_at and self.latest.get(tp, 0) > fetched_at


class _Fetched(dict):  # type: ignore[type-arg]  # faust's RecordMap, stamped
    __slots__ = ("fetched_at",)
    fetched_at: int


def seek_stamps(thread: Any) -> SeekStamps:
    """The :class:`SeekStamps` of a Faust consumer thread."""
    stamps: SeekStamps | None = thread.__dict__.get("_bridge_seek_stamps")
    if stamps is None:
        stamps = thread.__dict__["_bridge_seek_stamps"] = SeekStamps()
    return stamps


async def _seek_uncommitted_to_start(
    consumer: Any, changelog_topics: frozenset[str] = frozenset(), stamps: SeekStamps | None = None
) -> dict[Any, Any]:
    # aiokafka's seek_to_committed, with every committed offset asked for first and the seeks
    # made together after (aiokafka seeks each as its answer arrives), so that they are
    # counted where they happen (SeekStamps).
    partitions = consumer.assignment()
    committed: dict[Any, Any] = {tp: await consumer.committed(tp) for tp in partitions}
    sought = [tp for tp, offset in committed.items() if offset and offset > 0]
    # aiokafka seeks only partitions with a committed offset above 0. The others keep the
    # position of whatever was fetched while Faust's flow was suspended for the rebalance, and
    # Faust drops those buffered records: a partition's first records (a fresh retry tier, say)
    # would be skipped until the next restart. Table partitions are not committed by the group
    # and are positioned by the table's own recovery: left where they are (seeking them to the
    # start would re-read, and briefly re-apply, every older subscription record).
    fresh = [
        tp
        for tp, offset in committed.items()
        if (offset is None or offset <= 0) and tp.topic not in changelog_topics
    ]
    if stamps is not None:
        stamps.sought([*sought, *fresh])
    for tp in sought:
        consumer.seek(tp, committed[tp])
    if fresh:
        # One request for all of them (one each took ~0.1 s per partition on a rebalance).
        await consumer.seek_to_beginning(*fresh)
    return committed


async def _seek_to_committed(self: Any) -> Any:
    changelog_topics = frozenset(self.app.tables.changelog_topics)
    return await self.call_thread(
        _seek_uncommitted_to_start, self._ensure_consumer(), changelog_topics, seek_stamps(self)
    )


async def _fetch_records(
    self: Any,
    consumer: Any,
    active_partitions: Any,
    timeout: float | None = None,
    max_records: int | None = None,
) -> Any:
    # faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._fetch_records (faust-streaming
    # 0.15), its batch stamped with the seeks made so far (SeekStamps).
    if not self.consumer.flow_active:
        return {}
    fetcher = consumer._fetcher
    if consumer._closed or fetcher._closed:
        raise ConsumerStoppedError()
    with fetcher._subscriptions.fetch_context():
        records = await fetcher.fetched_records(
            active_partitions, timeout=timeout, max_records=max_records
        )
    fetched = _Fetched(records)
    fetched.fetched_at = seek_stamps(self).count
    return fetched


async def _seek_wait(self: Any, consumer: Any, partitions: Any) -> None:
    # faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._seek_wait (faust-streaming
    # 0.15), its seeks counted (SeekStamps).
    seek_stamps(self).sought(partitions)
    for tp, offset in partitions.items():
        consumer.seek(tp, offset)
        if offset > 0:
            self.consumer._read_offset[tp] = offset
        elif tp in self.consumer._read_offset.keys():
            del self.consumer._read_offset[tp]
    await asyncio.wait_for(
        asyncio.gather(*[consumer.position(tp) for tp in partitions]),
        timeout=self.app.conf.broker_request_timeout,
    )


def _seek(self: Any, partition: Any, offset: int) -> None:
    # faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.seek, its seek counted first.
    seek_stamps(self).sought([partition])
    self._ensure_consumer().seek(partition, offset)


async def _seek_to_beginning(self: Any, *partitions: Any) -> None:
    # faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.seek_to_beginning, its seek
    # counted in the thread as it is requested (no record is fetched until it is done).
    consumer = self._ensure_consumer()

    async def seek() -> None:
        seek_stamps(self).sought(partitions)
        await consumer.seek_to_beginning(*partitions)

    await self.call_thread(seek)


async def wait_for(awaitable: Awaitable[_T], timeout: float | None) -> _T:
    """``asyncio.wait_for`` as Python 3.12 implements it: no task of its own."""
    if timeout is None:
        return await awaitable
    async with asyncio.timeout(timeout):
        return await awaitable


class _AsyncioFor312WaitFor:
    """The ``asyncio`` module as one Faust module sees it, with the task-free ``wait_for``."""

    wait_for = staticmethod(wait_for)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


class _Rest:
    """Awaiting this continues a coroutine that already ran to its first suspension: what it
    yielded goes up to the task first, then every value and error is passed through."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # delivered into the coroutine, as ``await`` would
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _Rest(coro, yielded)


class _Unbuffered:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNBUFFERED"


#: Returned by a record callback that put its record in no buffer a rebalance clears.
UNBUFFERED: Any = _Unbuffered()
#: After that many such records in a row the hand-off yields to the loop.
UNBUFFERED_YIELD_EVERY = 32
_unbuffered_since_yield = 0

_EVENT_WAIT = asyncio.Event.wait.__code__
_original_wait_first = faust_consumer.Consumer.wait_first


async def _wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
    # Only the record hand-off of ``Consumer._drain_messages``: a callback coroutine raced
    # against ``suspend_flow.wait()``, while the flow is not suspended and the service runs.
    if not (
        len(coros) == 2
        and timeout is None
        and asyncio.iscoroutine(coros[0])
        and getattr(coros[1], "cr_code", None) is _EVENT_WAIT
        and not self.suspend_flow.is_set()
        and not self._stopped.is_set()
        and not self._crashed.is_set()
    ):
        return await _original_wait_first(self, *coros, timeout=timeout)
    callback, suspended = coros
    try:
        yielded = callback.send(None)
    except StopIteration as stop:
        suspended.close()  # never started
        # Yield to the loop once per record, as Faust's own hand-off does: a rebalance must be
        # able to stop the flow between two records of a fetched batch, before the stream that
        # buffered the first hands it on. Records no stream buffered need not wait for that.
        global _unbuffered_since_yield
        if stop.value is not UNBUFFERED or _unbuffered_since_yield >= UNBUFFERED_YIELD_EVERY - 1:
            _unbuffered_since_yield = 0
            await asyncio.sleep(0)
        else:
            _unbuffered_since_yield += 1
        return _WaitResults([callback], [stop.value], False)
    except BaseException:
        suspended.close()
        raise
    # It has to wait (a full stream buffer): race the rest of it against the suspension.
    rest = asyncio.ensure_future(_finish(callback, yielded))
    return await _original_wait_first(self, rest, suspended)


#: Longest time Faust's fetcher waits before it looks at which partitions are active again.
FETCHER_POLL = 0.05


async def _wait_next_records(self: Any, timeout: float) -> tuple[Any, Any]:
    # faust.transport.consumer.Consumer._wait_next_records (faust-streaming 0.15), with the
    # timeout and the idle sleep bounded by FETCHER_POLL.
    if not self.flow_active:
        await self.wait(self.can_resume_flow)
    try:
        self.not_waiting_next_records.set()
        active_partitions = None if self.app.client_only else self._get_active_partitions()
        records: Any = {}
        if self.app.client_only or active_partitions:
            records = await self._getmany(
                active_partitions=active_partitions, timeout=min(timeout, FETCHER_POLL)
            )
        else:
            await self.sleep(FETCHER_POLL)
        return records, active_partitions
    finally:
        self.not_waiting_next_records.set()


_original_seek_offsets = faust_recovery.Recovery._seek_offsets


async def _seek_offsets(self: Any, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
    if title == "standby":
        # A partition both active and standby (a global table's) was just read up to
        # active_offsets by the active recovery: continue from there, not from the start.
        offsets = offsets.copy()
        for tp in tps & self.active_tps:
            offsets[tp] = max(offsets[tp], self.active_offsets[tp])
    await _original_seek_offsets(self, consumer, tps, offsets, title)


def _clear_stream_queues(app: Any) -> None:
    """``app.flow_control.clear()`` except for the tables' changelog queue."""
    changelog = app.tables.changelog_queue
    for queue in list(app.flow_control._queues):  # mode: the queues resume() clears
        if queue is not changelog:
            queue.clear()


def _resume_flow_clearing_nothing(app: Any) -> None:
    """``app.flow_control.resume()`` without the clear of every queue it manages (which stay
    managed, so that the explicit clear of a rebalance still empties them)."""
    flow_control = app.flow_control
    managed = flow_control._queues  # mode: the queues resume() clears
    flow_control._queues = type(managed)()
    try:
        flow_control.resume()
    finally:
        flow_control._queues = managed


async def _on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    # faust.tables.recovery.Recovery.on_recovery_completed (faust-streaming 0.15), with the
    # stream queues cleared before the seek instead of after it, the stream partitions resumed
    # after the seek instead of before it, and the flow resumed without clearing any queue:
    # what is handed on after the seek (the retry agents' records, and the changelog records
    # of the global tables' standby reading, running already) is never dropped.
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(
            table.on_recovery_completed(
                self.actives_for_table[table],
                self.standbys_for_table[table],
            )
        )
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(
            f"Recovery rebalancing again app id "
            f"{self.app.consumer_generation_id} param {generation_id}"
        )
        return
    # Read before the seek (the stream partitions are paused since the assignment): dropped,
    # and read again from the committed offsets.
    _clear_stream_queues(self.app)
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    self.completed.set()
    self.log.dev("Resume stream partitions")
    # No await from here to the flow's resume: nothing is handed on in between, and nothing
    # handed on from now on is cleared.
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    _resume_flow_clearing_nothing(self.app)
    consumer.resume_flow()
    # finally make sure the fetcher is running.
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _start_table_manager(self: Any) -> None:
    # faust.tables.manager.TableManager.on_start (faust-streaming 0.15) without its
    # ``await self.sleep(1.0)``: every table exists before the app starts.
    if not self.should_stop:
        await self._update_channels()
        await self.recovery.start()


async def _getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
    # faust.transport.consumer.Consumer.getmany (faust-streaming 0.15), with the high-water
    # mark of each partition read and reported once per fetch instead of once per record.
    records, active_partitions = await self._wait_next_records(timeout)
    generation_id = self.app.consumer_generation_id
    if records is None or self.should_stop:
        return
    fetched_at: int = getattr(records, "fetched_at", -1)  # -1: not stamped (no thread)
    stamps = seek_stamps(self._thread) if fetched_at >= 0 else None
    records_it = self.scheduler.iterate(records)
    to_message = self._to_message
    if self.flow_active:
        reported: set[Any] = set()
        for tp, record in records_it:
            if not self.flow_active:
                break
            if self.app.consumer_generation_id != generation_id:
                break  # a rebalance since the fetch: its records are read again
            # No seek since the fetch (the usual case): the count alone says so.
            if stamps is not None and stamps.count != fetched_at and stamps.stale(tp, fetched_at):
                # Sought since this batch was fetched (a table's standby start, a seek to the
                # committed offsets): the seek decides what is read next, not this batch.
                continue
            if (
                active_partitions is None
                or tp in active_partitions
                or tp in self._buffered_partitions
            ):
                if tp not in reported:
                    reported.add(tp)
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)
    else:
        try:
            await self.perform_seek()
        except Exception as exc:
            self.log.warning(f"exception performing seek when flow not active {exc}")


def _on_buffer_drop(self: Any, tp: Any) -> None:
    # faust.transport.consumer.Consumer.on_buffer_drop (faust-streaming 0.15), without making a
    # paused partition active: it is fetched again when it is resumed, not when its buffer drains.
    buffered_partitions = self._buffered_partitions
    if tp in buffered_partitions:
        if tp not in self._paused_partitions:
            self._get_active_partitions().add(tp)
        buffered_partitions.discard(tp)


class _Taken:
    """One partition's offsets handed to the bridge since the consumer last sought it."""

    __slots__ = ("offsets", "settled_end", "last")

    def __init__(self) -> None:
        #: Offsets handed over and not yet seen acknowledged, in the order they were read.
        self.offsets: deque[int] = deque()
        #: One past the last offset seen acknowledged at the head (``None``: none yet).
        self.settled_end: int | None = None
        #: The last offset handed over.
        self.last = -1


class TakenOffsets:
    """The offsets of each partition that the consumer handed to the bridge, so that a commit
    never passes one that is not acknowledged (``commit_settled_only``).

    A partition's records are handed over in offset order; when an offset is not above the last
    one handed over, the consumer has sought back (a rebalance, a seek to the committed offset)
    and the partition starts anew, as it does when the consumer seeks (``reset``).
    """

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: dict[Any, _Taken] = {}

    def take(self, tp: Any, offset: int) -> None:
        """Record that the record at ``offset`` of ``tp`` was handed over."""
        part = self._parts.get(tp)
        if part is None or offset <= part.last:
            part = self._parts[tp] = _Taken()
        part.offsets.append(offset)
        part.last = offset

    def reset(self) -> None:
        """Forget every partition (the consumer sought each to its committed offset)."""
        self._parts.clear()

    def commit_point(self, tp: Any, acknowledged: set[int]) -> int | None:
        """The offset up to which ``tp`` may be committed: the first offset handed over and
        not in ``acknowledged``, or one past the last handed over when all are; ``None`` when
        nothing was handed over since the last seek."""
        part = self._parts.get(tp)
        if part is None:
            return None
        offsets = part.offsets
        while offsets and offsets[0] in acknowledged:
            part.settled_end = offsets.popleft() + 1
        if offsets:
            return offsets[0]
        return part.settled_end


def taken_offsets(app: Any) -> TakenOffsets:
    """The app's :class:`TakenOffsets` (created on first use)."""
    taken: TakenOffsets | None = getattr(app, "_bridge_taken_offsets", None)
    if taken is None:
        taken = TakenOffsets()
        app._bridge_taken_offsets = taken
    return taken


_original_perform_seek = faust_consumer.Consumer.perform_seek


def _new_offset(self: Any, tp: Any) -> int | None:
    # Replaces faust.transport.consumer.Consumer._new_offset (faust-streaming 0.15): the
    # offset to commit is where the first unacknowledged record handed over is, never past it.
    acked = self._acked[tp]
    if not acked:
        return None
    index = self._acked_index[tp]
    point = taken_offsets(self.app).commit_point(tp, index)
    if point is None:
        return None
    acked.sort()
    cut = bisect_left(acked, point)
    if cut:
        index.difference_update(acked[:cut])
        del acked[:cut]
    gap = self._gap.get(tp)
    if gap:
        gap.chop(0, point)
    return point


async def _perform_seek(self: Any) -> None:
    await _original_perform_seek(self)
    taken_offsets(self.app).reset()


# -- installing them ------------------------------------------------------------------------------

#: The faust-streaming release the patches were written against and checked with.
FAUST_VERSION = "0.15.3"


class PatchMismatch(ConfigError):
    """faust-streaming is not the release, or a function a patch replaces or relies on is not
    the code, that the patch was written against: the worker refuses to start."""


@dataclass(frozen=True)
class Patch:
    """One replacement of (or reliance on) a faust-streaming internal."""

    #: Short name, used in messages.
    name: str
    #: The class or module holding the attribute.
    owner: Any
    attribute: str
    #: What is put in its place; ``None`` for an internal that is only relied on (checked,
    #: not replaced).
    replacement: Any
    #: SHA-256 (first 16 hex digits) of the original's source, as faust-streaming ships it.
    fingerprint: str
    #: The upstream behaviour the patch changes, in one line.
    upstream: str


def fingerprint(original: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``original``'s source (of the function a
    ``mode`` service task wraps; for a module, of its name)."""
    if inspect.ismodule(original):
        text = f"module {original.__name__}"
    else:
        text = inspect.getsource(getattr(original, "fun", original))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


PATCHES: tuple[Patch, ...] = (
    Patch(
        "fetch_max_wait",
        faust_aiokafka.AIOKafkaConsumerThread,
        "_create_worker_consumer",
        _create_worker_consumer,
        "c2701bfc3e6f6cad",
        "the worker's consumer is created with fetch_max_wait_ms=1500, not configurable",
    ),
    Patch(
        "reread_uncommitted_partitions",
        faust_aiokafka.AIOKafkaConsumerThread,
        "seek_to_committed",
        _seek_to_committed,
        "775ab0adc4b052ab",
        "partitions without a committed offset keep their pre-rebalance position, and Faust "
        "drops what was fetched meanwhile",
    ),
    Patch(
        "cheap_recovery_wait_for",
        faust_recovery,
        "asyncio",
        _AsyncioFor312WaitFor() if sys.version_info < (3, 12) else asyncio,
        "854b5a9b982c053b",
        "table recovery awaits asyncio.wait_for per record, a task each on Python 3.11",
    ),
    Patch(
        "cheap_recovery_wait_for.caller",
        faust_recovery.Recovery,
        "_slurp_changelogs",
        None,
        "7825c7e50f766d5a",
        "the only caller of asyncio.wait_for in faust.tables.recovery",
    ),
    Patch(
        "fast_record_handoff",
        faust_consumer.Consumer,
        "wait_first",
        _wait_first,
        "feade6a31f8a6789",
        "every fetched record is handed on through wait_first: four tasks and asyncio.wait",
    ),
    Patch(
        "fast_record_handoff.caller",
        faust_consumer.Consumer,
        "_drain_messages",
        None,
        "44a2500309e83c63",
        "the record hand-off whose wait_first call the fast path recognises",
    ),
    Patch(
        "prompt_fetcher",
        faust_consumer.Consumer,
        "_wait_next_records",
        _wait_next_records,
        "6218e1969a636b3f",
        "the fetcher waits up to 1 s for records and sleeps 1 s while no partition is active",
    ),
    Patch(
        "standby_after_active",
        faust_recovery.Recovery,
        "_seek_offsets",
        _seek_offsets,
        "19598ca63d94d250",
        "a global table's partitions are read again as standby from where recovery started",
    ),
    Patch(
        "keep_fetched_records",
        faust_recovery.Recovery,
        "on_recovery_completed",
        _on_recovery_completed,
        "6ef567acf072e46d",
        "once recovery is complete the stream partitions are resumed before their seek and the "
        "flow resume clears every queue: the changelog queue the global tables' standby reading "
        "fills, and stream records fetched after the seek",
    ),
    Patch(
        "keep_fetched_records.resume",
        FlowControlEvent,
        "resume",
        None,
        "4dcdc1253fd0dcb4",
        "(mode-streaming: resuming the flow clears every queue it manages)",
    ),
    Patch(
        "keep_fetched_records.clear",
        FlowControlEvent,
        "clear",
        None,
        "dda5e40d80288a8f",
        "(mode-streaming: the managed queues are the set FlowControlEvent._queues)",
    ),
    Patch(
        "keep_fetched_records.paused",
        faust_app.App,
        "_on_partitions_assigned",
        None,
        "de932b7927db85b3",
        "(every assigned partition is paused when an assignment arrives, until recovery resumes "
        "the stream partitions)",
    ),
    Patch(
        "keep_fetched_records.pause",
        faust_consumer.Consumer,
        "resume_partitions",
        None,
        "afe6b7c02a41d63c",
        "(pausing and resuming a partition only changes which fetched records are handed on; "
        "the seek applies to every assigned partition)",
    ),
    Patch(
        "skip_records_fetched_before_a_seek",
        faust_aiokafka.AIOKafkaConsumerThread,
        "_fetch_records",
        _fetch_records,
        "39a2c6c79fc1455a",
        "the rest of a batch fetched before a seek is handed on after it, overtaking the re-read "
        "of the sought partitions (whose records a table then skips as applied)",
    ),
    Patch(
        "skip_records_fetched_before_a_seek.seek_wait",
        faust_aiokafka.AIOKafkaConsumerThread,
        "_seek_wait",
        _seek_wait,
        "9d221e816d940467",
        "(the seeks of table recovery, here counted)",
    ),
    Patch(
        "skip_records_fetched_before_a_seek.seek",
        faust_aiokafka.AIOKafkaConsumerThread,
        "seek",
        _seek,
        "1498560d05f02582",
        "(a seek from the worker's loop, here counted)",
    ),
    Patch(
        "skip_records_fetched_before_a_seek.seek_to_beginning",
        faust_aiokafka.AIOKafkaConsumerThread,
        "seek_to_beginning",
        _seek_to_beginning,
        "bd4250b8d1e76d33",
        "(a seek to the start, here counted)",
    ),
    Patch(
        "no_table_registration_pause",
        faust_tables.TableManager,
        "on_start",
        _start_table_manager,
        "365dd25fbc0e0684",
        "the table manager sleeps 1 s before registering the tables' changelogs",
    ),
    Patch(
        "end_offset_once_per_fetch",
        faust_consumer.Consumer,
        "getmany",
        _getmany,
        "4b168d84882a70d6",
        "each fetched record reads and reports its partition's high-water mark",
    ),
    Patch(
        "paused_partitions_stay_paused",
        faust_consumer.Consumer,
        "on_buffer_drop",
        _on_buffer_drop,
        "4b57e8a418d5ad9c",
        "a partition whose buffer pressure drops is made active, paused or not: a global "
        "table's partitions are fetched between the standby seek and the resume that clears "
        "the changelog queue",
    ),
    Patch(
        "commit_settled_only",
        faust_consumer.Consumer,
        "_new_offset",
        _new_offset,
        "1d2c7ea89a7ad4f1",
        "a run of acknowledged offsets starting one past the committed offset is committed "
        "over the unacknowledged record before it",
    ),
    Patch(
        "commit_settled_only.seek",
        faust_consumer.Consumer,
        "perform_seek",
        _perform_seek,
        "0e8c130ff4b0afd8",
        "(the seek after which the records handed over are counted anew)",
    ),
    Patch(
        "direct_topic.conductor",
        faust_conductor.Conductor,
        "_compile_message_handler",
        None,
        "9fbc0538097aa4ec",
        "the conductor's per-record callback, which bridge.worker.direct_topic puts a hand-off "
        "before",
    ),
)


#: Each patched or relied-on attribute as faust-streaming shipped it (as found when this module
#: was imported, before anything was installed).
ORIGINALS: dict[str, Any] = {p.name: getattr(p.owner, p.attribute) for p in PATCHES}


def install() -> None:
    """Apply every patch, once: each original must be the code its patch was written against.

    Idempotent (a patch already applied is skipped). Raises :class:`PatchMismatch`, naming the
    patch, when the installed faust-streaming is another release or an original's fingerprint
    differs; nothing is patched then.
    """
    installed = importlib.metadata.version("faust-streaming")
    if installed != FAUST_VERSION:
        raise PatchMismatch(
            f"faust-streaming {installed} is installed; bridge.worker.faust_patches was written "
            f"against {FAUST_VERSION}: check every patch against the new release"
        )
    pending: list[Patch] = []
    for patch in PATCHES:
        current = getattr(patch.owner, patch.attribute)
        if patch.replacement is not None and current is patch.replacement:
            continue
        found = fingerprint(current)
        if found != patch.fingerprint:
            where = getattr(patch.owner, "__qualname__", getattr(patch.owner, "__name__", "?"))
            raise PatchMismatch(
                f"faust patch {patch.name}: {where}.{patch.attribute} is not the code the "
                f"patch was written against (fingerprint {found}, expected "
                f"{patch.fingerprint}); upstream behaviour it changes: {patch.upstream}"
            )
        if patch.replacement is not None:
            pending.append(patch)
    for patch in pending:
        setattr(patch.owner, patch.attribute, patch.replacement)
