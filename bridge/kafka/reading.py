"""Reading a whole topic, start to end, outside a consumer group."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bridge.config import Settings
from bridge.kafka.clients import client_kwargs

__all__ = ["read_topic"]


async def read_topic(
    settings: Settings,
    topic: str,
    *,
    timeout: float = 30.0,
    settle: float = 0.3,
    key: bytes | None = None,
    since_ms: int | None = None,
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` from the beginning to its end; given ``key``, only the records
    with that key, read from the one partition a producer's default partitioner puts it in;
    given ``since_ms``, from each partition's first record stamped at or after that time (the
    broker's time index: a record before it is stamped earlier; a broker without one, such as
    the embedded broker, gives the beginning).

    Reads up to the end offsets, then keeps fetching until a fetch of ``settle`` seconds returns
    nothing: the embedded broker (Tansu) reports the end of a partition whose last write was a
    batch as that batch's first offset + 1, which would otherwise drop the batch's other records.
    """
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata for every topic
        partitions = consumer.partitions_for_topic(topic) or set()
        numbers = sorted(partitions)
        if key is not None and numbers:
            numbers = [DefaultPartitioner()(key, numbers, numbers)]
        tps = [TopicPartition(topic, p) for p in numbers]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        if since_ms is None:
            await consumer.seek_to_beginning(*tps)
        else:
            starts = await consumer.beginning_offsets(tps)
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            for tp in tps:
                stamped = found.get(tp)
                # None: nothing stamped that late; what arrives after the end is still read.
                start = ends[tp] if stamped is None else stamped.offset
                consumer.seek(tp, max(start, starts[tp]))
        out: list[tuple[bytes | None, bytes | None]] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=int(timeout * 1000))
            if not batch:
                raise TimeoutError(f"no records from {topic} within {timeout}s")
            for tp, messages in batch.items():
                out.extend((m.key, m.value) for m in messages)
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=int(settle * 1000))
            if not batch:
                return out if key is None else [r for r in out if r[0] == key]
            for messages in batch.values():
                out.extend((m.key, m.value) for m in messages)
    finally:
        await consumer.stop()
