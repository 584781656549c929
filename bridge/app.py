"""The Faust application: topics, the subscription table, the delivery agent and the worker.

This is the only module that builds a ``faust.App``. The agent is a few lines that hand records to
:class:`bridge.pipeline.Pipeline`; the table's changelog callback keeps the
:class:`bridge.subscriptions.SubscriptionIndex` that the pipeline matches against.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables.globaltable import GlobalTable
from mode import Service
from prometheus_client import CollectorRegistry

from . import jsoncanon
from .config import Settings
from .deadletters import SourceRef
from .delivery import Sender, new_client
from .errors import InvalidSubscription
from .kafka import client_kwargs, faust_broker_kwargs
from .metrics import Metrics
from .pipeline import Pipeline
from .subscriptions import SubscriptionIndex, parse_webhook
from .sync import TableFreshness
from .topics import declared_topics
from .web import WebServer

__all__ = ["Bridge"]

log = logging.getLogger(__name__)


class SubscriptionTable(GlobalTable):
    """A global table whose changelog is the subscriptions topic itself."""

    def _changelog_topic_name(self) -> str:
        # Faust derives this name from the table's name even when a changelog topic is given;
        # its assignor then looks up a topic that does not exist and the group join hangs.
        return str(self.changelog_topic.get_topic_name())


class _FaustDeadLetters:
    """Dead letters written through the Faust producer, awaited until acknowledged."""

    def __init__(self, topic: Any) -> None:
        self._topic = topic

    async def send(self, key: bytes | None, record: dict[str, Any]) -> None:
        future = await self._topic.send(key=key, value=jsoncanon.dumps(record))
        await future


class Bridge:
    """Everything one worker process runs, wired together."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.index = SubscriptionIndex()
        self.freshness = TableFreshness(
            self._subscription_end_offsets, timeout=settings.subscription_sync_timeout
        )
        self._partitions = {spec.name: spec.partitions for spec in declared_topics(settings)}
        self._pipeline: Pipeline | None = None
        self._offsets_consumer: AIOKafkaConsumer | None = None
        self._start_lock = asyncio.Lock()
        self.app = self._build_app()

    # -- Faust wiring -----------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s = self.settings
        s.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            s.group_id,
            **faust_broker_kwargs(s),
            store="memory://",
            datadir=str(s.resolved_data_dir),
            web_enabled=False,
            topic_allow_declare=False,
            topic_disable_leader=False,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            broker_rebalance_timeout=s.kafka_rebalance_timeout,
            broker_session_timeout=s.kafka_session_timeout,
            broker_heartbeat_interval=min(1.0, s.kafka_session_timeout / 4),
            broker_commit_interval=1.0,
            producer_acks=-1,
            # A rebalance must not wait for 30-second deliveries; unacknowledged events are
            # simply delivered again (same delivery ids) by the partition's next owner.
            stream_wait_empty=False,
            GlobalTable=SubscriptionTable,
        )
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        self.subscriptions_topic = app.topic(
            s.subscriptions_topic,
            partitions=self._partitions[s.subscriptions_topic],
            compacting=True,
            **raw,
        )
        self.table = app.GlobalTable(
            "subscriptions",
            key_type=bytes,
            value_type=bytes,
            changelog_topic=self.subscriptions_topic,
            partitions=self._partitions[s.subscriptions_topic],
            on_changelog_event=self.on_subscription_event,
            # Without this, a global table reads its changelog only while recovering; the
            # subscriptions topic is written by others, so every worker must keep tailing it.
            synchronize_all_active_partitions=True,
        )
        self.deadletter_topic = app.topic(s.deadletter_topic, **raw)
        self.source_topic = app.topic(*s.source_topics, **raw)

        @app.agent(self.source_topic, name="deliver")
        async def deliver(stream: Any) -> None:
            pipeline = await self.pipeline()
            manual = stream.noack()
            async for event in manual.events():
                message = event.message
                await pipeline.handle(
                    message.value,
                    SourceRef(message.topic, message.partition, message.offset, message.key),
                    functools.partial(manual.ack, event),
                )

        return app

    # -- the subscription table -----------------------------------------------------------------
    async def on_subscription_event(self, event: Any) -> None:
        """Keep the index in step with every record the table applies (recovery and live)."""
        message = event.message
        key: bytes | None = message.key
        webhook_id = key.decode("utf-8", "replace") if key is not None else None
        try:
            webhook = parse_webhook(key, message.value)
        except InvalidSubscription as exc:
            # The newest record is the truth: a webhook whose record is broken gets nothing
            # rather than deliveries to a URL or with a secret that are no longer wanted.
            self.metrics.invalid_subscriptions.inc()
            log.warning(
                "invalid subscription record %s:%d@%d (webhook %s): %s",
                message.topic,
                message.partition,
                message.offset,
                webhook_id,
                exc.detail,
            )
            webhook = None
        if webhook is None:
            if webhook_id is not None:
                self.index.remove(webhook_id)
        else:
            self.index.put(webhook)
        self.freshness.applied(message.partition, message.offset)
        self._count_subscriptions()

    def _count_subscriptions(self) -> None:
        active = self.index.active_count
        self.metrics.subscriptions.labels("active").set(active)
        self.metrics.subscriptions.labels("inactive").set(len(self.index) - active)

    async def _subscription_end_offsets(self) -> Mapping[int, int]:
        consumer = self._offsets_consumer
        if consumer is None:
            consumer = AIOKafkaConsumer(**client_kwargs(self.settings), group_id=None)
            await consumer.start()
            self._offsets_consumer = consumer
        topic = self.settings.subscriptions_topic
        tps = [TopicPartition(topic, p) for p in range(self._partitions[topic])]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    # -- runtime pieces created inside the running loop -------------------------------------------
    async def pipeline(self) -> Pipeline:
        async with self._start_lock:
            if self._pipeline is None:
                s = self.settings
                client = new_client(s.http_timeout, s.max_in_flight)
                self._client = client
                self._pipeline = Pipeline(
                    index=self.index,
                    sender=Sender(client, timeout=s.http_timeout, any_2xx=s.success_any_2xx),
                    dead_letters=_FaustDeadLetters(self.deadletter_topic),
                    metrics=self.metrics,
                    max_in_flight=s.max_in_flight,
                    max_body_bytes=s.max_body_bytes,
                    freshness=self.freshness,
                )
            return self._pipeline

    async def close(self) -> None:
        if self._pipeline is not None:
            await self._client.aclose()
        if self._offsets_consumer is not None:
            await self._offsets_consumer.stop()
            self._offsets_consumer = None

    def ready(self) -> tuple[bool, str]:
        """Ready once the table is recovered and partitions are assigned."""
        if not self.app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return False, "recovering the subscription table"
        if self.app.rebalancing:
            return False, "rebalancing"
        return True, f"{len(self.index)} webhooks loaded"

    # -- the worker ------------------------------------------------------------------------------
    def worker(self, loop: asyncio.AbstractEventLoop) -> faust.Worker:
        web = WebServer(
            host=self.settings.web_host,
            port=self.settings.web_port,
            registry=self.registry,
            ready=self.ready,
        )
        return faust.Worker(
            self.app,
            web,
            _Closer(self),
            loop=loop,
            loglevel=self.settings.log_level.lower(),
        )


class _Closer(Service):
    """Closes the HTTP client and the offsets consumer when the worker stops."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__()
        self._bridge = bridge

    async def on_stop(self) -> None:
        await self._bridge.close()
