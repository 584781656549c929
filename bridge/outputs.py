"""The durable outputs of delivery jobs: attempt, retry and dead-letter records, through one
plain aiokafka producer of their own.

Each write is awaited until the broker acknowledged it (``acks=all``), so a source record is
acknowledged only after everything it caused is durable. Many jobs write at once; a few
milliseconds of ``linger`` lets their records share produce requests. Going around Faust's
``topic.send`` (its per-message futures, buffer and sensors) made an attempt record about a
tenth as costly in CPU (BENCHMARKS.md). Status and disable records go through the
:class:`~bridge.management.WebhookStore`, one record per batch, because workers keep those
topics in tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from . import jsoncanon
from .config import Settings
from .kafka import client_kwargs
from .management import WebhookStore
from .subscriptions import Webhook

__all__ = ["KafkaOutputs"]


class KafkaOutputs:
    """Implements :class:`bridge.deliverer.Outputs` on Kafka topics."""

    def __init__(
        self,
        settings: Settings,
        store: WebhookStore,
        current: Callable[[str], Webhook | None],
    ) -> None:
        self._settings = settings
        self._store = store
        #: The newest known state of a webhook (the subscription index), for ``disable``.
        self._current = current
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            **client_kwargs(self._settings),
            acks="all",
            enable_idempotence=False,
            linger_ms=round(self._settings.kafka_output_linger * 1000),
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        assert self._producer is not None, "KafkaOutputs.start() first"
        future: Any = await self._producer.send(topic, value, key=key)
        await future

    async def dead_letter(self, key: bytes | None, record: dict[str, Any]) -> None:
        await self._send(self._settings.deadletter_topic, key, jsoncanon.dumps(record))

    async def retry(self, tier: int, key: bytes, value: bytes) -> None:
        await self._send(self._settings.retry_topics[tier], key, value)

    async def attempt(self, key: bytes, record: dict[str, Any]) -> None:
        await self._send(self._settings.attempts_topic, key, jsoncanon.dumps(record))

    async def status(self, key: bytes, record: dict[str, Any]) -> None:
        await self._store.put_status(record)

    async def disable(self, webhook: Webhook, reason: str) -> None:
        await self._store.disable(self._current(webhook.id) or webhook, reason)
