"""bridge.kafka.outputs.KafkaOutputs against the embedded broker: attempt records, written in
per-partition batches (bridge.kafka.record_batches), all arrive, in their key's partition, in order;
every write is counted and timed by output."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry

from bridge.config import Settings
from bridge.kafka.clients import client_kwargs
from bridge.kafka.outputs import KafkaOutputs
from bridge.metrics import Metrics
from bridge.subscriptions.store import WebhookStore
from tests.support.metrics import sample
from tests.support.waiting import poll

RECORDS = 600
KEYS = 25


async def test_attempt_records_arrive_in_their_keys_partition_in_order(
    settings: Settings,
) -> None:
    async with WebhookStore(settings) as store:
        outputs = KafkaOutputs(settings, store, lambda _: None)
        await outputs.start()
        try:
            futures = []
            for seq in range(RECORDS):
                key = f"wh_{seq % KEYS}".encode()
                futures.append(await outputs.attempt(key, {"seq": seq, "note": "é \u2028"}))
                if seq % 50 == 0:
                    await asyncio.sleep(0)  # others run meanwhile, as jobs do
            await asyncio.wait_for(asyncio.gather(*futures), 15)
        finally:
            await outputs.stop()

    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata for every topic
        partitions = sorted(consumer.partitions_for_topic(settings.attempts_topic) or ())
        assert len(partitions) > 1
        consumer.assign([TopicPartition(settings.attempts_topic, p) for p in partitions])
        seen: list[tuple[int, bytes, dict]] = []

        async def all_read() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                seen.extend((tp.partition, r.key, json.loads(r.value)) for r in records)
            return len(seen) >= RECORDS

        await poll(all_read, timeout=15)
    finally:
        await consumer.stop()

    assert len(seen) == RECORDS
    reference = DefaultPartitioner()
    by_key: dict[bytes, list[int]] = {}
    for partition, key, record in seen:
        assert partition == reference(key, partitions, partitions)
        assert record["note"] == "é \u2028"
        by_key.setdefault(key, []).append(record["seq"])
    for n in range(KEYS):
        assert by_key[f"wh_{n}".encode()] == list(range(n, RECORDS, KEYS))


async def test_every_write_is_counted_and_timed_by_output_and_outcome(settings: Settings) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    async with WebhookStore(settings) as store:
        outputs = KafkaOutputs(settings, store, lambda _: None, metrics)
        await outputs.start()
        try:
            attempts = [await outputs.attempt(f"wh_{n % 3}".encode(), {"n": n}) for n in range(40)]
            await asyncio.wait_for(asyncio.gather(*attempts), 15)
            await outputs.retry(0, b"wh_1", b'{"pending": 1}')
            await outputs.dead_letter(b"wh_2", {"reason": "test"})
            # Larger than the producer's request limit: aiokafka refuses it before sending.
            with pytest.raises(MessageSizeTooLargeError):
                await outputs.dead_letter(b"wh_2", {"reason": "x" * 2_000_000})
        finally:
            await outputs.stop()

    writes = "webhook_bridge_output_writes_total"
    assert sample(registry, writes, output="attempt", outcome="acknowledged") == 40
    assert sample(registry, writes, output="retry", outcome="acknowledged") == 1
    assert sample(registry, writes, output="dead_letter", outcome="acknowledged") == 1
    assert sample(registry, writes, output="dead_letter", outcome="failed") == 1
    assert sample(registry, writes, output="attempt", outcome="failed") == 0
    duration = "webhook_bridge_output_write_duration_seconds"
    # Attempt records are timed per batch: 40 records keyed three ways make 1..40 batches.
    assert 1 <= sample(registry, f"{duration}_count", output="attempt") <= 40
    assert sample(registry, f"{duration}_count", output="retry") == 1
    assert sample(registry, f"{duration}_count", output="dead_letter") == 2
    assert 0 < sample(registry, f"{duration}_sum", output="retry") < 15
