"""Raw Kafka access for fault-injection tests: writing any bytes, tailing topics, group offsets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

#: Largest record the raw writer sends: room for events far beyond the bridge's body limit.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: Largest fetch per partition of a tail: a record of MAX_REQUEST_BYTES fits.
MAX_FETCH_BYTES = 2 * MAX_REQUEST_BYTES


class Record(NamedTuple):
    """One record as read back."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class RawHeaderKey(str):
    """A record header key written as the bytes given, UTF-8 or not: aiokafka's pure-Python
    batch builder writes a key's ``encode("utf-8")`` (its compiled one, the str's own UTF-8)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawHeaderKey:
        key = super().__new__(cls, raw.decode("utf-8", "replace"))
        key.raw = raw
        return key

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def batch_builder(compression: int = 0) -> Any:
    """aiokafka's pure-Python builder of a record batch (magic 2), which takes
    :class:`RawHeaderKey`; ``build()`` gives the batch's bytes as a broker returns them."""
    return _DefaultRecordBatchBuilderPy(
        2,
        compression,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )


class RawWriter:
    """Writes any key, value and headers (a :class:`RawHeaderKey` too), one record per batch
    (each acknowledged before the next is sent), so that the embedded broker reports end
    offsets exactly."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            linger_ms=0,
            enable_idempotence=False,
            max_request_size=MAX_REQUEST_BYTES,
        )

    async def start(self) -> RawWriter:
        await self._producer.start()
        return self

    async def stop(self) -> None:
        await self._producer.stop()

    async def write(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> tuple[int, int]:
        """Write one record (stamped ``timestamp_ms``, else now); its (partition, offset)."""
        raw_keys = any(isinstance(k, RawHeaderKey) for k, _ in headers)
        if (key is None and value is None) or raw_keys:
            # The producer's ``send`` refuses a record with neither, and writes a header key's
            # UTF-8 with the compiled builder: a batch of its own takes it.
            batch = self._producer.create_batch()
            if raw_keys:
                batch._builder = batch_builder()
            batch.append(key=key, value=value, timestamp=timestamp_ms, headers=list(headers))
            if partition is None:
                partition = (await self.partitions(topic))[0]
            sent = await self._producer.send_batch(batch, topic, partition=partition)
            metadata = await sent
        else:
            metadata = await self._producer.send_and_wait(
                topic,
                value,
                key=key,
                partition=partition,
                headers=list(headers) or None,
                timestamp_ms=timestamp_ms,
            )
        return metadata.partition, metadata.offset

    async def partitions(self, topic: str) -> list[int]:
        return sorted(await self._producer.partitions_for(topic))


class TopicTail:
    """Every record of some topics, from their beginning, read on in the background."""

    def __init__(self, bootstrap_servers: str, topics: Iterable[str]) -> None:
        self._topics = list(topics)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_FETCH_BYTES,
            fetch_max_bytes=4 * MAX_FETCH_BYTES,
        )
        self.records: list[Record] = []
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def start(self) -> TopicTail:
        consumer = self._consumer
        await consumer.start()
        await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            while True:
                batch = await self._consumer.getmany(timeout_ms=100)
                for messages in batch.values():
                    self.records.extend(
                        Record(
                            m.topic,
                            m.partition,
                            m.offset,
                            m.key,
                            m.value,
                            tuple((k, bytes(v)) for k, v in (m.headers or ())),
                        )
                        for m in messages
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced by ``of``
            self._failure = exc

    def of(self, topic: str) -> list[Record]:
        if self._failure is not None:
            raise AssertionError(f"reading the topics failed: {self._failure!r}")
        return [r for r in self.records if r.topic == topic]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


async def committed_offsets(bootstrap_servers: str, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offsets of ``topic``'s partitions (absent: nothing committed).

    Read with OffsetFetch through a consumer of the group that joins nothing (the embedded
    broker answers the admin API's ListConsumerGroupOffsets with a response aiokafka cannot
    decode)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()
        found: dict[int, int] = {}
        for partition in sorted(consumer.partitions_for_topic(topic) or ()):
            offset = await consumer.committed(TopicPartition(topic, partition))
            if offset is not None:
                found[partition] = offset
        return found
    finally:
        await consumer.stop()


async def commits_behind(
    bootstrap_servers: str, group_id: str, ends: Mapping[str, Mapping[int, int]]
) -> dict[str, dict[int, tuple[int, int]]]:
    """The partitions of ``ends`` (``{topic: {partition: end}}``) whose committed offset in
    ``group_id`` is not their end: ``{topic: {partition: (committed, end)}}``."""
    behind: dict[str, dict[int, tuple[int, int]]] = {}
    for topic, topic_ends in ends.items():
        done = await committed_offsets(bootstrap_servers, group_id, topic)
        late = {p: (done.get(p, 0), e) for p, e in topic_ends.items() if done.get(p, 0) != e}
        if late:
            behind[topic] = late
    return behind


async def read_ends(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """Each partition's last offset + 1, by reading it (the embedded broker's end offsets are
    low after batched writes); partitions with no record are left out."""
    async with topic_reader(bootstrap_servers, topic) as (consumer, _):
        ends: dict[int, int] = {}
        while batch := await consumer.getmany(timeout_ms=300):
            for tp, messages in batch.items():
                ends[tp.partition] = messages[-1].offset + 1
        return ends


async def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """The partitions' end offsets (exact on the embedded broker only for topics written one
    record per batch)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


@contextlib.asynccontextmanager
async def topic_reader(
    bootstrap_servers: str, topic: str
) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A group-less consumer assigned every partition of ``topic`` (positioned at their
    beginnings), with those partitions; stopped on exit."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        yield consumer, tps
    finally:
        await consumer.stop()
