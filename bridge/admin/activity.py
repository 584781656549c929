"""A webhook's delivery log and stats, and one delivery's attempts, read from the attempts topic.

What the management commands show without a running API: the attempts topic is keyed by webhook
id, so one webhook's log is read from one partition. Records that are not attempt records are
counted and passed over. A read goes through the partition a fetched batch at a time and keeps
what the answer needs (the log as ``delivery_log_max_attempts`` and ``delivery_log_max_age``
keep it; one delivery's attempts), not the partition; given a :class:`LoopShare` (a worker's
``/v1``), it pays for its parsing there.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from bridge.admin.loop_share import LoopShare, Payer
from bridge.attempts.book import Activity, ActivityBook
from bridge.attempts.record import Attempt
from bridge.config import Settings
from bridge.errors import InvalidRecord
from bridge.kafka.reading import KeyValue, stream_topic

__all__ = ["Reading", "read_activity", "find_delivery", "read_status"]


@dataclass
class Reading:
    """What was read: the webhook's activity, and how many records were not attempts."""

    activity: Activity
    invalid: int


async def _attempts(
    settings: Settings,
    key: bytes | None,
    share: LoopShare | None,
    on_invalid: Callable[[], None] = lambda: None,
) -> AsyncGenerator[Attempt, None]:
    """The attempt records of the attempts topic (of ``key``'s partition, with that key), as
    they are read, paying ``share`` for the parsing; ``on_invalid`` is called for each record
    that is not an attempt record."""

    def parsed(key_value: KeyValue) -> Attempt | None:
        try:
            return Attempt.parse(key_value[1])
        except InvalidRecord:
            on_invalid()
            return None

    stream = stream_topic(settings, settings.attempts_topic, key=key)
    async with aclosing(stream) as batches, aclosing(Payer(share).each(batches, parsed)) as made:
        async for attempt in made:
            yield attempt


async def read_activity(
    settings: Settings,
    webhook_id: str,
    *,
    now: float | None = None,
    share: LoopShare | None = None,
) -> Reading:
    """The delivery log and stats of ``webhook_id`` as of ``now``, kept as the settings say."""
    book = ActivityBook(
        max_attempts=settings.delivery_log_max_attempts, max_age=settings.delivery_log_max_age
    )
    moment = time.time() if now is None else now
    invalid = 0

    def counted() -> None:
        nonlocal invalid
        invalid += 1

    attempts = _attempts(settings, webhook_id.encode(), share, counted)
    async with aclosing(attempts) as reading:
        async for attempt in reading:
            if attempt.webhook_id == webhook_id:
                book.add(attempt, moment)
    activity = book.get(webhook_id) or book.empty()
    return Reading(activity, invalid)


async def find_delivery(
    settings: Settings,
    delivery_id: str,
    *,
    webhook_id: str | None = None,
    share: LoopShare | None = None,
) -> list[Attempt]:
    """Every recorded attempt of one delivery, in the order they were made; given its webhook,
    only that webhook's partition is read."""
    key = None if webhook_id is None else webhook_id.encode()
    found: dict[tuple[float, int], Attempt] = {}
    attempts = _attempts(settings, key, share)
    async with aclosing(attempts) as reading:
        async for a in reading:
            if a.delivery_id == delivery_id and (webhook_id is None or a.webhook_id == webhook_id):
                found[(a.at_seconds, a.attempt)] = a
    return [found[k] for k in sorted(found)]


async def read_status(
    settings: Settings, webhook_id: str, *, share: LoopShare | None = None
) -> bytes | None:
    """The value of ``webhook_id``'s newest record in the (compacted) status topic; ``None``
    when it has none, or a tombstone."""
    key = webhook_id.encode("utf-8")
    newest: bytes | None = None
    stream = stream_topic(settings, settings.status_topic, key=key)
    # Each of the key's records, wrapped (a tombstone too: the status is gone).
    values = Payer(share).each(stream, lambda kv: (kv[1],) if kv[0] == key else None)
    async with aclosing(stream), aclosing(values) as mine:
        async for (value,) in mine:
            newest = value
    return newest
