"""A webhook's delivery log and stats, and one delivery's attempts, read from the attempts topic.

What the management commands show without a running API: the attempts topic is keyed by webhook
id, so one webhook's log is read from one partition. Records that are not attempt records are
counted and passed over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bridge.attempts.book import Activity, ActivityBook
from bridge.attempts.record import Attempt
from bridge.config import Settings
from bridge.errors import InvalidRecord
from bridge.kafka.reading import read_topic

__all__ = ["Reading", "read_activity", "find_delivery"]


@dataclass
class Reading:
    """What was read: the webhook's activity, and how many records were not attempts."""

    activity: Activity
    invalid: int


def _attempts(values: list[bytes | None]) -> tuple[list[Attempt], int]:
    attempts, invalid = [], 0
    for value in values:
        try:
            attempts.append(Attempt.parse(value))
        except InvalidRecord:
            invalid += 1
    return attempts, invalid


async def read_activity(
    settings: Settings, webhook_id: str, *, now: float | None = None
) -> Reading:
    """The delivery log and stats of ``webhook_id`` as of ``now``, kept as the settings say."""
    records = await read_topic(settings, settings.attempts_topic, key=webhook_id.encode())
    attempts, invalid = _attempts([value for _, value in records])
    book = ActivityBook(
        max_attempts=settings.delivery_log_max_attempts, max_age=settings.delivery_log_max_age
    )
    moment = time.time() if now is None else now
    for attempt in attempts:
        if attempt.webhook_id == webhook_id:
            book.add(attempt, moment)
    activity = book.get(webhook_id) or book.empty()
    return Reading(activity, invalid)


async def find_delivery(
    settings: Settings, delivery_id: str, *, webhook_id: str | None = None
) -> list[Attempt]:
    """Every recorded attempt of one delivery, in the order they were made; given its webhook,
    only that webhook's partition is read."""
    key = None if webhook_id is None else webhook_id.encode()
    records = await read_topic(settings, settings.attempts_topic, key=key)
    attempts, _ = _attempts([value for _, value in records])
    found = {
        (a.at_seconds, a.attempt): a
        for a in attempts
        if a.delivery_id == delivery_id and (webhook_id is None or a.webhook_id == webhook_id)
    }
    return [found[k] for k in sorted(found)]
