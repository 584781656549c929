"""Patches to Faust's consumer thread and fetcher: what is fetched, how often, after which seek.

Faust creates its consumer with ``fetch_max_wait_ms=1500`` hard-coded. Real Kafka answers a
waiting fetch as soon as records arrive, but the embedded broker (Tansu) holds it for the whole
wait, which put up to 1.5 s between an event and its delivery. The bridge sets the wait from
``kafka_fetch_max_wait`` instead (idle fetches then cost one small request per wait per broker).

After a rebalance Faust drops the records fetched while it recovered its tables, then seeks each
partition to its committed offset; aiokafka skips partitions with none, so their first records
were lost until a restart. The bridge seeks those to their beginning (``auto_offset_reset``
earliest, as configured).

Faust's fetcher asks the consumer thread for records with a one-second timeout, and sleeps a
second when no partition is active (while its tables recover). A partition resumed meanwhile
waited for the end of that second: the worker said ready about a second before it delivered
anything, and the first events after every start or rebalance arrived up to a second late. The
bridge polls every ``FETCHER_POLL`` seconds instead (``prompt_fetcher``).

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
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka.errors import ConsumerStoppedError
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = [
    "set_fetch_max_wait",
    "FETCHER_POLL",
    "SeekStamps",
    "seek_stamps",
]

_fetch_max_wait_ms = 1500
#: ``None`` when Faust has none: install() then refuses to start, naming the patch.
_original_create_worker_consumer: Any = getattr(
    faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer", None
)


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original_create_worker_consumer(self, transport)
    if not isinstance(getattr(consumer, "_fetch_max_wait_ms", None), int):
        # aiokafka's own, read when the consumer starts: renamed, the wait set here would go
        # to an attribute nothing reads, the fetches waiting 1.5 s unseen.
        from bridge.worker.faust_patches.registry import PatchMismatch

        raise PatchMismatch(
            "faust patch fetch_max_wait: aiokafka's consumer has no _fetch_max_wait_ms; "
            "check the patch against the installed aiokafka"
        )
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
