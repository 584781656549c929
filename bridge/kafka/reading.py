"""Reading a whole topic, start to end, outside a consumer group: at once or batch by batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bridge.config import Settings
from bridge.errors import MissingTopic
from bridge.kafka.clients import new_consumer, started, stopped

__all__ = [
    "FETCH_POLL",
    "FIRST_ANSWER_PATIENCE",
    "KeyValue",
    "Positioned",
    "UNTIL_STEP",
    "UntilMs",
    "SETTLE_STAMP_MARGIN",
    "fetch_kwargs",
    "read_topic",
    "settled",
    "stamped_by",
    "stream_positioned",
    "stream_topic",
]

#: A record's key and value.
KeyValue = tuple[bytes | None, bytes | None]


class Positioned(NamedTuple):
    """A record's key and value, and where it is: a read resumes after it from there."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


#: Seconds after a read began up to which its settling takes records (see :func:`stream_topic`):
#: a producer's clock a little ahead of this one's still has its last batch read.
SETTLE_STAMP_MARGIN = 1.0


def stamped_by(messages: Sequence[ConsumerRecord[Any, Any]], limit_ms: int) -> int:
    """How many of a partition's ``messages`` (in offset order) come before the first one
    stamped after ``limit_ms``: that one and those after it were written later."""
    for n, message in enumerate(messages):
        if message.timestamp is not None and message.timestamp > limit_ms:
            return n
    return len(messages)


#: Seconds one fetch of a read waits for records before the positions are looked at again
#: (a position moved past a transaction's marker brings no record).
FETCH_POLL = 1.0

#: A time in milliseconds, asked again as a read goes on; ``None``: no limit (now).
UntilMs = Callable[[], int | None]

#: Records of a fetched batch read between two askings of a read's ``until_ms``.
UNTIL_STEP = 100


def fetch_kwargs(settings: Settings) -> dict[str, Any]:
    """The fetch wait of a consumer that settles (:func:`settled`): ``kafka_fetch_max_wait``,
    so that a partition with nothing more is answered within a settle (aiokafka's default,
    500 ms, is longer than the usual 300 ms settle, which then waited a second round)."""
    return {"fetch_max_wait_ms": max(1, int(settings.kafka_fetch_max_wait * 1000))}


#: The longest (seconds) a settling waits for the broker's first answer to a fetch of each
#: partition it settles, before it takes a fetch that brings nothing as the end all the same.
FIRST_ANSWER_PATIENCE = 10.0


async def settled(
    consumer: AIOKafkaConsumer,
    tps: Iterable[TopicPartition],
    begun_ms: int,
    settle: float,
    until_ms: UntilMs | None = None,
    *,
    positioned_ms: int,
    ends: Mapping[TopicPartition, int],
) -> AsyncGenerator[tuple[TopicPartition, list[ConsumerRecord[Any, Any]]], None]:
    """The settling of a read that reached the end offsets it found (see :func:`stream_topic`):
    each partition's further records written by ``begun_ms`` (and by ``until_ms()``, when it
    gives a time) (:func:`stamped_by`), until a fetch of ``settle`` seconds brings nothing or
    every partition showed a later one.

    A fetch that brings nothing ends it only once the broker has answered a fetch of every
    partition still settling that held records when the read began (its reported end in
    ``ends`` above 0: one found empty has no batch to misreport) at the position the read set
    (aiokafka's ``last_poll_timestamp`` later than ``positioned_ms``, the wall time in
    milliseconds, as aiokafka stamps answers, by which every partition was sought to where the
    read goes on), or after :data:`FIRST_ANSWER_PATIENCE`: a consumer that has had no such
    answer yet (a recovery resumed from positions past every end the embedded broker
    reported, whose consumer had fetched from the reported end before it was sought) can take
    longer than ``settle`` to be answered, and until 2026-12-05 such a read ended there,
    skipping the records it had come for. The records of a fetch answered as a wait ended are
    taken too (until 2026-12-05 they could be left unread: aiokafka's ``getmany`` then answers
    nothing). The consumer fetches with :func:`fetch_kwargs`.
    """
    settling = set(tps)
    held = {tp for tp in settling if ends.get(tp, 0) > 0}
    loop = asyncio.get_running_loop()
    patience_ends = loop.time() + FIRST_ANSWER_PATIENCE
    while settling:
        batch = await consumer.getmany(*settling, timeout_ms=int(settle * 1000))
        if not batch:
            answered = all(
                (consumer.last_poll_timestamp(tp) or 0) > positioned_ms for tp in settling & held
            )
            if not answered and loop.time() < patience_ends:
                continue
            # What an answer brought as the wait ended (aiokafka's getmany answers nothing
            # when its timeout and a fetch's records come in one turn of the event loop).
            batch = await consumer.getmany(*settling, timeout_ms=0)
            if not batch:
                return
        for tp, messages in batch.items():
            wanted = None if until_ms is None else until_ms()
            before = stamped_by(messages, begun_ms if wanted is None else min(begun_ms, wanted))
            if before < len(messages):
                settling.discard(tp)
            if before:
                yield tp, messages[:before]


async def read_topic(
    settings: Settings,
    topic: str,
    *,
    timeout: float = 30.0,
    settle: float = 0.3,
    key: bytes | None = None,
    since_ms: int | None = None,
) -> list[KeyValue]:
    """Every record of ``topic`` from the beginning to its end, in one list (see
    :func:`stream_topic`, which takes the same arguments)."""
    out: list[KeyValue] = []
    stream = stream_topic(
        settings, topic, timeout=timeout, settle=settle, key=key, since_ms=since_ms
    )
    async with aclosing(stream) as batches:
        async for batch in batches:
            out.extend(batch)
    return out


async def stream_topic(
    settings: Settings,
    topic: str,
    *,
    timeout: float = 30.0,
    settle: float = 0.3,
    key: bytes | None = None,
    since_ms: int | None = None,
    until_ms: UntilMs | None = None,
) -> AsyncGenerator[list[KeyValue], None]:
    """The records of ``topic``, their keys and values (:func:`stream_positioned`, whose
    docstring says which); given ``key``, only those with that key."""
    stream = stream_positioned(
        settings,
        topic,
        timeout=timeout,
        settle=settle,
        key=key,
        since_ms=since_ms,
        until_ms=until_ms,
    )
    async with aclosing(stream) as batches:
        async for batch in batches:
            yield [(r.key, r.value) for r in batch if key is None or r.key == key]


async def stream_positioned(
    settings: Settings,
    topic: str,
    *,
    timeout: float = 30.0,
    settle: float = 0.3,
    key: bytes | None = None,
    since_ms: int | None = None,
    until_ms: UntilMs | None = None,
    start_offsets: Mapping[int, int] | None = None,
    newest: int | None = None,
) -> AsyncGenerator[list[Positioned], None]:
    """Every record of ``topic`` from the beginning to its end, a fetched batch at a time (so
    a reader need not hold the topic in memory); given ``key``, the one partition a producer's
    default partitioner puts that key in (every record of it: the reader takes its own, and
    knows how far it has read however few are its); given
    ``since_ms``, from each partition's first record stamped at or after that time (the
    broker's time index: a record before it is stamped earlier; a broker without one, such as
    the embedded broker, gives the beginning); given ``until_ms``, each partition only up to
    its first record stamped after the time ``until_ms()`` gives, asked again every
    :data:`UNTIL_STEP` records (so a reader that has what it needs from the earlier records can stop
    the rest of a partition being read; ``None``: read on).

    Reads up to the end offsets, then settles: keeps fetching records written before the read
    began (stamped up to :data:`SETTLE_STAMP_MARGIN` after) until a fetch of ``settle`` seconds
    returns nothing, or every partition has shown one written later: the embedded broker (Tansu)
    reports the end of a partition whose last write was a batch as that batch's first offset + 1,
    which would otherwise drop the batch's other records, and a topic that never falls silent
    (a failing endpoint dead-lettering) must not keep a read going. Records written after the
    read began may be left out. Close it (``contextlib.aclosing``) when stopping early: that
    stops its consumer.

    Given ``start_offsets`` (partition: offset), each partition it names is read from that
    offset instead (from its first offset when that one is gone): a read resumed where an
    earlier one stopped (:attr:`Positioned.offset` + 1 of the last record it took).

    Given ``newest``, at most that many records are read up to the end offsets, the newest of
    each partition (an equal part each, from no earlier than where the read would start).
    """
    begun_ms = int((time.time() + SETTLE_STAMP_MARGIN) * 1000)
    consumer = await started(
        new_consumer(
            settings,
            **fetch_kwargs(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
    )

    def records(messages: list[ConsumerRecord[bytes, bytes]]) -> list[Positioned]:
        return [Positioned(m.partition, m.offset, m.key, m.value) for m in messages]

    try:
        await consumer.topics()  # loads metadata for every topic
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            # Until 2026-12-07 read as an empty topic: a misspelt topic setting listed nothing.
            raise MissingTopic(topic)
        numbers = sorted(partitions)
        if key is not None and numbers:
            numbers = [DefaultPartitioner()(key, numbers, numbers)]
        tps = [TopicPartition(topic, p) for p in numbers]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        resumed = {tp for tp in tps if start_offsets and tp.partition in start_offsets}
        fresh = [tp for tp in tps if tp not in resumed]
        starts = await consumer.beginning_offsets(tps) if resumed or since_ms is not None else {}
        for tp in resumed:
            assert start_offsets is not None
            consumer.seek(tp, max(start_offsets[tp.partition], starts[tp]))
        if fresh and since_ms is None:
            await consumer.seek_to_beginning(*fresh)
        elif fresh:
            found = await consumer.offsets_for_times({tp: since_ms for tp in fresh})
            for tp in fresh:
                stamped = found.get(tp)
                # None: nothing stamped that late; what arrives after the end is still read.
                start = ends[tp] if stamped is None else stamped.offset
                consumer.seek(tp, max(start, starts[tp]))
        if newest is not None:
            part = max(1, newest // len(tps))
            for tp in tps:
                position = await consumer.position(tp)
                if ends[tp] - part > position:
                    consumer.seek(tp, ends[tp] - part)
        positioned_ms = int(time.time() * 1000)  # as aiokafka stamps a fetch's answer
        pending = {tp for tp in tps if ends[tp] > 0}
        done: set[TopicPartition] = set()  # read up to a record stamped after until_ms()
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while pending:
            poll = min(timeout, FETCH_POLL)
            batch = await consumer.getmany(*pending, timeout_ms=int(poll * 1000))
            if not batch:
                # A position moved past a transaction's commit or abort marker (aiokafka skips
                # control batches and hands over no record for them, and a fetch at the end
                # then brings nothing until its timeout: until 2026-12-07 a topic whose
                # partition ended in a marker was never read to its end, TimeoutError).
                moved = False
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
                        moved = True
                if moved:
                    quiet_since = loop.time()
                elif loop.time() - quiet_since >= timeout:
                    raise TimeoutError(f"no records from {topic} within {timeout}s")
                continue
            quiet_since = loop.time()
            for tp, messages in batch.items():
                if until_ms is None:
                    yield records(messages)
                else:
                    # A part at a time, so that the time is asked again within a large fetch
                    # (the embedded broker answers a fetch with all a partition holds).
                    for start in range(0, len(messages), UNTIL_STEP):
                        part = messages[start : start + UNTIL_STEP]
                        wanted = until_ms()
                        before = len(part) if wanted is None else stamped_by(part, wanted)
                        if before:
                            yield records(part[:before])
                        if before < len(part):
                            pending.discard(tp)
                            done.add(tp)
                            break
                if tp not in done and await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        left = [tp for tp in tps if tp not in done]
        settling = settled(
            consumer, left, begun_ms, settle, until_ms, positioned_ms=positioned_ms, ends=ends
        )
        async with aclosing(settling) as settling:
            async for _, messages in settling:
                yield records(messages)
    finally:
        await stopped(consumer)
