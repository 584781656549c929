"""The durable outputs of delivery jobs: attempt, retry and dead-letter records, through one
plain aiokafka producer of their own.

Each write is awaited until the broker acknowledged it (``acks=all``), so a source record is
acknowledged only after everything it caused is durable; an attempt record is handed over as a
future of that acknowledgement, which settles a successful job without a task waiting for it
(:meth:`bridge.delivery.deliverer.Deliverer.run`). Many jobs write at once; a few
milliseconds of ``linger`` lets their records share produce requests. Going around Faust's
``topic.send`` (its per-message futures, buffer and sensors) makes an attempt record several
times cheaper in CPU (see BENCHMARKS.md, *Outputs*). Attempt records, one per delivery attempt,
skip the producer's per-record ``send`` as well: they are gathered into one batch per partition
(:mod:`bridge.kafka.record_batches`) and share the batch's acknowledgement. Status and disable
records go through the :class:`~bridge.subscriptions.store.WebhookStore`, one record per batch,
because workers keep those topics in tables.

Every write is counted and timed by output (``webhook_bridge_output_writes_total``,
``webhook_bridge_output_write_duration_seconds``): a source record waits for its writes, so slow
or failing writes show as lag and redeliveries, and these metrics say why.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner, murmur2

from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.kafka.clients import client_kwargs, started, stopped
from bridge.kafka.record_batches import PartitionBatches
from bridge.metrics import Metrics
from bridge.subscriptions.store import WebhookStore
from bridge.subscriptions.webhook import Webhook

__all__ = ["KafkaOutputs", "CachedPartitioner"]


def _attempt_bytes(record: dict[str, Any]) -> bytes:
    """An attempt record's value. The attempts topic is read by workers and operators' tools,
    never by receivers: it needs valid JSON, not the bytes a JavaScript receiver would
    re-serialize (:mod:`bridge.contract.jsoncanon`), and orjson writes one in 0.7 µs (checks
    included) against 4.3, every delivery attempt. Values of any other kind than text,
    integers, booleans, null and fractional finite floats go to :func:`jsoncanon.dumps_flat`,
    as does what orjson refuses: orjson would write NaN as null, 200.0 as a float the reader
    refuses for a status, and dates or enums at all; the canonical encoder refuses or writes
    them as before (a lone surrogate as V8 does, an integer past 2**53 refused)."""
    for value in record.values():
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            continue
        if kind is float and math.isfinite(value) and not value.is_integer():
            continue
        return jsoncanon.dumps_flat(record)
    try:
        return orjson.dumps(record, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        return jsoncanon.dumps_flat(record)


class CachedPartitioner:
    """aiokafka's default partitioner (Java-compatible murmur2) with the hash of each key
    remembered: records are keyed by webhook id, a few keys written again and again, and the
    pure-Python murmur2 cost more than the rest of producing a record."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._hashes: dict[bytes, int] = {}
        self._max_keys = max_keys
        self._fallback = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._fallback(key, all_partitions, available))
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


class KafkaOutputs:
    """Implements :class:`bridge.delivery.deliverer.Outputs` on Kafka topics."""

    def __init__(
        self,
        settings: Settings,
        store: WebhookStore,
        current: Callable[[str], Webhook | None],
        metrics: Metrics | None = None,
        owned: Callable[[str], bool] = lambda webhook_id: False,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._store = store
        #: The newest known state of a webhook (the subscription index), for ``disable``.
        self._current = current
        #: Whether a worker owns a webhook now (holds its attempts partition): its disables are
        #: that worker's to write (:mod:`bridge.worker.disables`).
        self._owned = owned
        self._producer: AIOKafkaProducer | None = None
        #: Attempt records, one per delivery attempt, go in batches of their own.
        self._attempts: PartitionBatches | None = None

    async def start(self) -> None:
        partitioner = CachedPartitioner()
        self._producer = await started(
            AIOKafkaProducer(
                **client_kwargs(self._settings),
                acks="all",
                enable_idempotence=False,
                linger_ms=round(self._settings.kafka_output_linger * 1000),
                partitioner=partitioner,
            )
        )
        self._attempts = PartitionBatches(
            self._producer,
            self._settings.attempts_topic,
            partitioner,
            self._settings.kafka_output_linger,
            settled=self._attempts_settled if self._metrics is not None else None,
        )
        await self._attempts.start()

    def _attempts_settled(self, records: int, seconds: float, error: BaseException | None) -> None:
        self._observe("attempt", seconds, error is None, records)

    def _observe(self, output: str, seconds: float, acknowledged: bool, records: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.output_written(output, seconds, acknowledged, records)

    async def _observed(self, output: str, write: Awaitable[Any]) -> None:
        """Await ``write``, counting and timing it as a write to ``output``."""
        if self._metrics is None:
            await write
        else:
            await self._metrics.observed_write(output, write)

    async def stop(self) -> None:
        if self._attempts is not None:
            await self._attempts.close()
            self._attempts = None
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await stopped(producer)

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        await (await self._queue(topic, key, value))

    async def _queue(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        """Hand a record to the producer (waiting while its buffer is full); returns the
        future of the broker's acknowledgement."""
        assert self._producer is not None, "KafkaOutputs.start() first"
        future: asyncio.Future[Any] = await self._producer.send(topic, value, key=key)
        return future

    async def dead_letter(self, key: bytes | None, record: dict[str, Any]) -> None:
        value = jsoncanon.dumps(record)
        await self._observed("dead_letter", self._send(self._settings.deadletter_topic, key, value))

    async def retry(self, tier: int, key: bytes, value: bytes) -> None:
        await self._observed("retry", self._send(self._settings.retry_topics[tier], key, value))

    async def attempt(self, key: bytes, record: dict[str, Any]) -> asyncio.Future[Any]:
        assert self._attempts is not None, "KafkaOutputs.start() first"
        return self._attempts.add(key, _attempt_bytes(record))

    async def status(self, key: bytes, record: dict[str, Any]) -> None:
        """Publish an endpoint status; where no owner deletes the status of a webhook that no
        longer exists (without ``delivery_log``), not for a webhook gone from this worker's
        table: a delivery in flight at its delete settles after the delete's tombstone, and
        its status was kept by every worker for ever (until 2026-12-06)."""
        webhook_id = record.get("webhook_id")
        if (
            isinstance(webhook_id, str)
            and not self._owned(webhook_id)
            and self._current(webhook_id) is None
        ):
            return
        await self._observed("status", self._store.put_status(record))

    async def disable(self, webhook: Webhook, reason: str) -> bool:
        """Turn off ``webhook`` (the one a delivery was made for), after its ``disabled``
        status record was published. A webhook with an owner is turned off by its owner, from
        that record; without owners, here, if this worker's table still holds that webhook
        active (not deleted meanwhile, nor its id taken by another). Whether it is off here now
        (turned off, or found off)."""
        if self._owned(webhook.id):
            return False
        current = self._current(webhook.id)
        if current is None or not current.is_incarnation(webhook.created_at):
            return False
        if current.active:
            await self._observed("disable", self._store.disable(current, reason))
            if self._metrics is not None:
                self._metrics.disabled.labels(reason).inc()
        # Off already: applied as well (an owner marks one it finds off), so that it is never
        # applied again once the webhook is turned on.
        return True
