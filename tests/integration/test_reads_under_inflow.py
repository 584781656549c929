"""Reads of a whole topic end while records keep arriving, on the real broker: a recovery (the
events topic of a busy platform is never quiet) and a dead-letter listing (a failing endpoint
keeps dead-lettering). Each reads to the end the topic had when it began, and what was already
written when it began, never waiting for the topic to fall silent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from bridge.admin.dead_letters import DeadLetterFilter, list_dead_letters
from bridge.admin.recovery import Operation, RecoveryRequest, recover
from bridge.config import Settings
from bridge.contract.events import build_event
from bridge.delivery.pending_retry import PendingRetry
from bridge.subscriptions.webhook import webhook_from_record
from tests.support.builders import webhook_record
from tests.support.records import RawWriter

pytestmark = pytest.mark.integration

#: Records a second written meanwhile: more than one per fetch wait, so the topic is never quiet.
INFLOW_PER_S = 40


@asynccontextmanager
async def inflow(settings: Settings, topic: str, value: bytes) -> AsyncIterator[list[int]]:
    """Keep writing ``value`` to ``topic`` until the block ends; yields the count written."""
    written = [0]
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()

    async def keep_writing() -> None:
        while True:
            await writer.write(topic, value, key=b"wh_busy")
            written[0] += 1
            await asyncio.sleep(1 / INFLOW_PER_S)

    task = asyncio.create_task(keep_writing())
    try:
        await asyncio.sleep(0.5)  # it is flowing before the read begins
        yield written
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.stop()


async def test_a_recovery_ends_while_events_keep_arriving(settings: Settings) -> None:
    webhook = webhook_from_record(webhook_record(id="wh_busy", site_id="s1", user_id="u1"))
    event = build_event("post.created", {"id": "p1", "title": "t"}, site_id="s1", user_id="u1")
    enqueued: list[PendingRetry] = []

    async def write(item: PendingRetry) -> None:
        enqueued.append(item)

    value = event.to_bytes()
    since = datetime.now(UTC) - timedelta(minutes=1)
    async with inflow(settings, settings.events_topic, value) as written:
        begun = time.monotonic()
        operation = Operation(RecoveryRequest(webhook, since, datetime.now(UTC), rate=10_000))
        await asyncio.wait_for(recover(settings, operation, write=write), 20)
        took = time.monotonic() - begun
        written_then = written[0]
    assert operation.state == "done", operation
    assert took < 10, took
    # Everything written before it began is read; what came after is left to the workers.
    assert operation.scanned <= written_then
    assert len(enqueued) >= 1


async def test_a_dead_letter_listing_ends_while_letters_keep_arriving(settings: Settings) -> None:
    letter = {
        "reason": "attempts_exhausted",
        "detail": "8 attempts",
        "source": {"topic": "events", "partition": 0, "offset": 0, "key": None},
        "webhook_id": "wh_busy",
        "delivery_id": "dl_busy",
        "attempts": [],
        "dead_lettered_at": "2026-01-15T10:00:00.000Z",
    }
    async with inflow(settings, settings.deadletter_topic, json.dumps(letter).encode()) as written:
        begun = time.monotonic()
        listed = await asyncio.wait_for(list_dead_letters(settings, DeadLetterFilter()), 20)
        took = time.monotonic() - begun
        assert 1 <= len(listed) <= written[0]
    assert took < 10, took
