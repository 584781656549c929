"""bridge.kafka.record_batches.PartitionBatches with aiokafka's real BatchBuilder and a producer
stand-in that records what it is handed (the broker round trip: tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from bridge.kafka.record_batches import PartitionBatches
from tests.support.waiting import PROMPT, eventually

TOPIC = "t.attempts"
LONG = 600.0  # a linger no test waits for


class Sent:
    """One ``send_batch`` call: the records and the acknowledgement the test gives."""

    def __init__(self, builder: BatchBuilder, partition: int) -> None:
        self.partition = partition
        self.closed_when_sent = builder.closed()
        self.records = [(r.key, r.value) for r in _records(builder)]
        self.ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


def _records(builder: BatchBuilder) -> list[Any]:
    from aiokafka.record.default_records import DefaultRecordBatch

    return list(DefaultRecordBatch(bytes(builder._build())))


class Producer:
    """What PartitionBatches uses of an AIOKafkaProducer."""

    def __init__(self, partitions: int = 4, batch_bytes: int = 16384) -> None:
        self.partitions = set(range(partitions))
        self.batch_bytes = batch_bytes
        self.sent: list[Sent] = []
        self.gate: asyncio.Event | None = None  # when set up, send_batch waits for it
        self.refuse: Exception | None = None
        self.entered = 0  # send_batch calls, finished or not
        self.client = self  # .client.cluster.partitions_for_topic
        self.cluster = self

    async def partitions_for(self, topic: str) -> set[int]:
        assert topic == TOPIC
        return self.partitions

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_bytes, 0)

    async def send_batch(self, builder: BatchBuilder, topic: str, *, partition: int) -> Any:
        assert topic == TOPIC
        self.entered += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.refuse is not None:
            raise self.refuse
        sent = Sent(builder, partition)
        self.sent.append(sent)
        return sent.ack


async def started(producer: Producer, linger: float = LONG) -> PartitionBatches:
    batches = PartitionBatches(producer, TOPIC, DefaultPartitioner(), linger)
    await batches.start()
    return batches


def partition_of(key: bytes, partitions: int = 4) -> int:
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


async def test_records_of_a_partition_share_a_batch_and_its_acknowledgement() -> None:
    producer = Producer()
    batches = await started(producer, linger=0.01)
    keys = [b"wh_%d" % n for n in range(12)]
    futures = [batches.add(key, b"v-" + key) for key in keys]
    await eventually(lambda: sum(len(s.records) for s in producer.sent) == 12)
    # One batch per partition used, each record in its key's partition, in the order added.
    assert len(producer.sent) == len({partition_of(k) for k in keys})
    for sent in producer.sent:
        assert sent.closed_when_sent  # handed over closed: the producer does not linger again
        expected = [(k, b"v-" + k) for k in keys if partition_of(k) == sent.partition]
        assert sent.records == expected
    assert not any(f.done() for f in futures)
    first = producer.sent[0]
    first.ack.set_result("metadata")
    await eventually(lambda: any(f.done() for f in futures))
    for key, future in zip(keys, futures, strict=True):
        assert future.done() == (partition_of(key) == first.partition)
    for sent in producer.sent[1:]:
        sent.ack.set_result(None)
    await asyncio.wait_for(asyncio.gather(*futures), PROMPT)


async def test_nothing_is_handed_over_before_the_linger_or_close() -> None:
    producer = Producer()
    batches = await started(producer)
    future = batches.add(b"wh_1", b"x")
    for _ in range(20):
        await asyncio.sleep(0)
    assert producer.sent == []
    await batches.close()
    assert [s.records for s in producer.sent] == [[(b"wh_1", b"x")]]
    assert not future.done()
    with pytest.raises(RuntimeError):
        batches.add(b"wh_1", b"y")


async def test_a_full_batch_is_handed_over_at_once_and_order_is_kept() -> None:
    producer = Producer(partitions=1, batch_bytes=200)
    batches = await started(producer)
    producer.gate = asyncio.Event()  # the producer takes nothing until the test says so
    values = [b"%03d" % n + b"." * 60 for n in range(10)]
    futures = [batches.add(b"wh", v) for v in values]
    assert len({id(f) for f in futures}) > 1  # several batches filled up
    for _ in range(20):
        await asyncio.sleep(0)
    assert producer.sent == []
    producer.gate.set()
    await batches.close()
    assert [v for s in producer.sent for _, v in s.records] == values
    assert all(len(s.records) <= 3 for s in producer.sent)


async def test_a_record_too_big_for_a_batch_goes_alone() -> None:
    producer = Producer(partitions=1, batch_bytes=200)
    batches = await started(producer)
    small = batches.add(b"wh", b"small")
    big = batches.add(b"wh", b"B" * 1000)
    after = batches.add(b"wh", b"after")
    await batches.close()
    assert [[v for _, v in s.records] for s in producer.sent] == [
        [b"small"],
        [b"B" * 1000],
        [b"after"],
    ]
    producer.sent[1].ack.set_exception(ValueError("MessageSizeTooLarge"))
    producer.sent[0].ack.set_result(None)
    producer.sent[2].ack.set_result(None)
    await asyncio.wait_for(asyncio.gather(small, after), PROMPT)
    with pytest.raises(ValueError, match="MessageSizeTooLarge"):
        await big


async def test_a_batch_the_producer_refuses_fails_its_records_only() -> None:
    producer = Producer(partitions=1, batch_bytes=200)
    batches = await started(producer)
    producer.refuse = RuntimeError("producer closed")
    refused = batches.add(b"wh", b"R" * 150)
    big = batches.add(b"wh", b"S" * 150)  # does not fit: the first batch is handed over now
    with pytest.raises(RuntimeError, match="producer closed"):
        await asyncio.wait_for(refused, PROMPT)
    producer.refuse = None
    await batches.close()
    assert [[v for _, v in s.records] for s in producer.sent] == [[b"S" * 150]]
    producer.sent[0].ack.set_result(None)
    await asyncio.wait_for(big, PROMPT)


async def test_a_cancelled_acknowledgement_cancels_the_records() -> None:
    producer = Producer()
    batches = await started(producer)
    future = batches.add(b"wh", b"x")
    await batches.close()
    producer.sent[0].ack.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(future, PROMPT)


async def test_partitions_follow_the_producers_metadata() -> None:
    producer = Producer(partitions=1)
    batches = await started(producer, linger=0.01)
    batches.add(b"wh_3", b"x")
    await eventually(lambda: len(producer.sent) == 1)
    assert producer.sent[0].partition == 0
    producer.partitions = set(range(4))  # the topic grew; the next window sees it
    batches.add(b"wh_3", b"y")
    await eventually(lambda: len(producer.sent) == 2)
    batches.add(b"wh_3", b"z")
    await eventually(lambda: len(producer.sent) == 3)
    assert producer.sent[2].partition == partition_of(b"wh_3")
    await batches.close()


async def test_while_the_producer_holds_a_batch_the_next_one_stays_open() -> None:
    """The producer takes one batch per partition per produce request: while it has not taken
    the last one, records go on joining one open batch instead of a queue of small ones."""
    producer = Producer(partitions=1)
    batches = await started(producer, linger=0.005)
    producer.gate = asyncio.Event()  # the producer is slow to take the first batch
    batches.add(b"wh", b"1")
    await eventually(lambda: producer.entered == 1)
    batches.add(b"wh", b"2")
    await eventually(lambda: batches._open[0].due)  # its linger is over; it stays open
    batches.add(b"wh", b"3")
    batches.add(b"wh", b"4")
    assert producer.entered == 1
    producer.gate.set()
    await eventually(lambda: producer.entered == 2)
    await batches.close()
    assert [[v for _, v in s.records] for s in producer.sent] == [[b"1"], [b"2", b"3", b"4"]]


async def test_each_handed_over_batch_reports_its_records_time_and_outcome() -> None:
    producer = Producer(partitions=1, batch_bytes=200)
    reports: list[tuple[int, float, BaseException | None]] = []

    async def reporting() -> PartitionBatches:
        batches = PartitionBatches(
            producer, TOPIC, DefaultPartitioner(), LONG, settled=lambda *r: reports.append(r)
        )
        await batches.start()
        return batches

    batches = await reporting()
    first = [batches.add(b"wh", b"a"), batches.add(b"wh", b"b")]
    await batches.close()
    assert reports == []  # handed over, not yet acknowledged
    producer.sent[0].ack.set_result(None)
    await asyncio.wait_for(asyncio.gather(*first), PROMPT)
    assert [(n, error) for n, _, error in reports] == [(2, None)]
    assert 0 <= reports[0][1] < PROMPT

    refused = RuntimeError("producer closed")
    producer.refuse = refused
    batches = await reporting()
    lost = batches.add(b"wh", b"c")
    await batches.close()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(lost, PROMPT)
    assert reports[1][0] == 1 and reports[1][2] is refused

    producer.refuse = None
    cancelled = await reporting()
    future = cancelled.add(b"wh", b"d")
    await cancelled.close()
    producer.sent[-1].ack.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(future, PROMPT)
    assert len(reports) == 2  # a cancelled batch (a stopping producer) is not reported
