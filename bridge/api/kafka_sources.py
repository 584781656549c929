"""The API's delivery log, stats, dead letters and recoveries read from and written to Kafka.

What ``python -m bridge.api serve`` uses, and a worker without the delivery log
(``delivery_log`` false), through the management code the CLI runs
(:mod:`bridge.admin.activity`, :mod:`bridge.admin.dead_letters`, :mod:`bridge.admin.recovery`):
every request reads the topics it needs. A worker holding the delivery log answers from it
instead (:class:`bridge.worker.api.WorkerActivitySource`); the dead letters and the recovery
runner are Kafka operations everywhere.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from datetime import datetime
from typing import Any

from bridge.admin.activity import find_delivery, read_activity, read_status
from bridge.admin.dead_letters import (
    DeadLetterFilter,
    ReplayReport,
    replay_dead_letters,
    stream_dead_letters,
)
from bridge.admin.loop_share import LoopShare
from bridge.admin.recovery import SharedPace, WebhookPaces, recover
from bridge.api.activity import EndpointStatus
from bridge.api.recoveries import RecoveryRunner
from bridge.attempts.book import Activity
from bridge.attempts.record import Attempt
from bridge.config import Settings
from bridge.subscriptions.webhook import Webhook

__all__ = [
    "MAX_ACTIVITY_READS",
    "MAX_DEAD_LETTER_READS",
    "KafkaActivitySource",
    "KafkaDeadLetters",
    "kafka_recovery_runner",
    "scan_share",
]


#: Reads of the attempts and status topics one :class:`KafkaActivitySource` makes at once
#: (each goes through a partition, or for one delivery the topic); further requests wait
#: their turn, within the request timeout.
MAX_ACTIVITY_READS = 2


class KafkaActivitySource:
    """An :class:`~bridge.api.activity.ActivitySource` reading the attempts and status topics
    on every call: one webhook's partition for its log, stats and status, every partition of
    the attempts topic for one delivery, keeping what the answer needs, at most
    :data:`MAX_ACTIVITY_READS` at once, paying ``share`` (the worker's, :func:`scan_share`) for
    their parsing. ``clock`` gives the time (seconds since the epoch) the log and stats are as
    of."""

    indexes_deliveries = False

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        share: LoopShare | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._share = share
        self._reads = asyncio.Semaphore(MAX_ACTIVITY_READS)

    def __repr__(self) -> str:
        return f"KafkaActivitySource({self._settings.attempts_topic!r})"

    async def activity(self, webhook_id: str) -> Activity:
        async with self._reads:
            reading = await read_activity(
                self._settings, webhook_id, now=self._clock(), share=self._share
            )
        return reading.activity

    async def delivery(self, delivery_id: str) -> list[Attempt]:
        async with self._reads:
            return await find_delivery(self._settings, delivery_id, share=self._share)

    async def status(self, webhook_id: str) -> EndpointStatus | None:
        async with self._reads:
            return EndpointStatus.parse(
                await read_status(self._settings, webhook_id, share=self._share)
            )


#: Reads of the dead-letter topic one process makes at once (each may read much of the topic);
#: further requests wait their turn, within the request timeout.
MAX_DEAD_LETTER_READS = 2


class KafkaDeadLetters:
    """A :class:`~bridge.api.control.DeadLetterSource` over the dead-letter topic, as
    ``webhook-bridge dlq list`` and ``dlq replay``; at most :data:`MAX_DEAD_LETTER_READS` at
    once, paying ``share`` (the process's, :func:`scan_share`) for their reading."""

    def __init__(self, settings: Settings, *, share: LoopShare | None = None) -> None:
        self._settings = settings
        self._share = share
        self._reads = asyncio.Semaphore(MAX_DEAD_LETTER_READS)

    def __repr__(self) -> str:
        return f"KafkaDeadLetters({self._settings.deadletter_topic!r})"

    async def read(
        self,
        where: DeadLetterFilter,
        *,
        needed_until: Callable[[], datetime | None] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        letters = stream_dead_letters(
            self._settings, where, needed_until=needed_until, share=self._share
        )
        async with self._reads, aclosing(letters) as reading:
            async for record in reading:
                yield record

    async def replay(
        self,
        where: DeadLetterFilter,
        *,
        webhooks: Callable[[str], Awaitable[Webhook | None]],
        resume: Mapping[int, int] | None = None,
        deadline: float | None = None,
    ) -> ReplayReport:
        async with self._reads:
            return await replay_dead_letters(
                self._settings,
                where,
                webhooks=webhooks,
                share=self._share,
                resume=resume,
                deadline=deadline,
            )


def kafka_recovery_runner(
    settings: Settings,
    current: Callable[[str], Webhook | None] | None = None,
    *,
    share: LoopShare | None = None,
) -> RecoveryRunner:
    """:func:`~bridge.admin.recovery.recover` with ``settings``: reads the source topics,
    writes the first retry tier; given ``current`` (a worker's webhooks by id), matches each
    event against the webhook as it is then. Its recoveries pay ``share`` (the process's:
    :func:`scan_share`) for their reading, and together enqueue at most
    ``api_recovery_rate`` deliveries a second (one :class:`SharedPace` for them all), those of
    one webhook with a ``rate_limit`` no more than it (:class:`WebhookPaces`)."""
    pace = SharedPace(settings.api_recovery_rate)
    return functools.partial(
        recover, settings, current=current, share=share, pace=pace, webhook_paces=WebhookPaces()
    )


def scan_share(settings: Settings) -> LoopShare:
    """The :class:`LoopShare` a worker's topic reads for ``/v1`` pay into together
    (``api_scan_share``): recoveries, redeliveries, dead-letter listings and replays. The whole
    loop for a worker that delivers nothing (role ``api``: the share keeps the deliveries' part
    of the loop, and such a worker has none to keep); its reads still let the loop run a turn
    at least every :data:`~bridge.admin.loop_share.STRETCH_RECORDS` records, for its other
    requests."""
    return LoopShare(1.0 if settings.role == "api" else settings.api_scan_share)
