"""Pages of dead letters read from the dead-letter topic on the real broker, a batch at a time."""

from __future__ import annotations

import json
import random

import pytest

from bridge.admin.dead_letters import DeadLetterFilter
from bridge.api.auth import Principal
from bridge.api.kafka_sources import KafkaDeadLetters
from bridge.api.repository import MemoryRepository
from bridge.config import Settings
from tests.support.records import RawWriter
from tests.unit.api.conftest import control_service, dead_letter

pytestmark = pytest.mark.integration

ADMIN = Principal("admin", frozenset({"read", "write"}))


async def test_pages_of_dead_letters_are_the_whole_listing_in_order(settings: Settings) -> None:
    """Letters of three webhooks (and of none), in every partition, with times out of order,
    among records that are no letters at all: paged five at a time, with and without a webhook,
    the pages are every letter the filter selects, oldest first, each once."""
    rng = random.Random(20261204)
    letters = []
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        for n in range(48):
            webhook_id = rng.choice(["wh_a", "wh_b", "wh_c", None])
            letter = dead_letter(
                n, webhook_id=webhook_id, at=f"2026-01-15T10:{rng.randrange(12):02d}:00.000Z"
            )
            key = None if webhook_id is None else webhook_id.encode()
            await writer.write(settings.deadletter_topic, json.dumps(letter).encode(), key=key)
            letters.append(letter)
            if n % 16 == 0:  # and no letters: not JSON, not an object, a tombstone
                await writer.write(settings.deadletter_topic, b"{not json", key=b"wh_a")
                await writer.write(settings.deadletter_topic, b"[1, 2]", key=b"wh_b")
                await writer.write(settings.deadletter_topic, None, key=b"wh_c")
    finally:
        await writer.stop()
    control = control_service(MemoryRepository(), dead_letters=KafkaDeadLetters(settings))

    async def paged(where: DeadLetterFilter) -> list[dict]:
        out: list[dict] = []
        cursor = None
        for _ in range(60):
            page = await control.dead_letters(ADMIN, where, limit=5, cursor=cursor)
            assert len(page.items) <= 5
            out += page.items
            cursor = page.next_cursor
            if cursor is None:
                return out
        raise AssertionError("the pages never ended")

    def oldest_first(chosen: list[dict]) -> list[dict]:
        return sorted(chosen, key=lambda r: (r["dead_lettered_at"], r["source"]["offset"]))

    assert await paged(DeadLetterFilter()) == oldest_first(letters)
    for webhook_id in ("wh_a", "wh_c"):
        assert await paged(DeadLetterFilter(webhook_id=webhook_id)) == oldest_first(
            [r for r in letters if r["webhook_id"] == webhook_id]
        )
