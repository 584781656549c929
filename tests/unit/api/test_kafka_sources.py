"""bridge.api.kafka_sources: the dead-letter topic is read by few requests at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.admin.dead_letters import DeadLetterFilter, ReplayReport
from bridge.api import kafka_sources
from bridge.api.kafka_sources import MAX_DEAD_LETTER_READS, KafkaDeadLetters
from bridge.config import Settings
from tests.support.waiting import eventually

SETTINGS = Settings.load(env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1"})


async def test_no_more_than_a_few_dead_letter_reads_run_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each read is a consumer going through the topic: ten requests at once read two at a time
    (lists and replays alike), and every one is answered."""
    running = 0
    most = 0
    release = asyncio.Event()

    async def begin() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()

    async def stream(settings: Settings, where: DeadLetterFilter, **_: Any) -> Any:
        nonlocal running
        await begin()
        yield {"delivery_id": "d1"}
        running -= 1

    async def replay(settings: Settings, where: DeadLetterFilter, **_: Any) -> ReplayReport:
        nonlocal running
        await begin()
        running -= 1
        return ReplayReport()

    async def no_webhook(webhook_id: str) -> None:
        return None

    async def listed(where: DeadLetterFilter) -> list[dict[str, Any]]:
        return [record async for record in source.read(where)]

    monkeypatch.setattr(kafka_sources, "stream_dead_letters", stream)
    monkeypatch.setattr(kafka_sources, "replay_dead_letters", replay)
    source = KafkaDeadLetters(SETTINGS)
    calls = [
        listed(DeadLetterFilter(webhook_id="list"))
        if n % 2
        else source.replay(DeadLetterFilter(webhook_id="replay"), webhooks=no_webhook)
        for n in range(10)
    ]
    answers = asyncio.gather(*calls)
    await eventually(lambda: running == MAX_DEAD_LETTER_READS == 2)
    for _ in range(20):  # every waiting request gets its turns on the loop: none starts
        await asyncio.sleep(0)
    assert running == 2
    release.set()
    done = await answers
    assert len(done) == 10 and most == 2
    assert done[1] == [{"delivery_id": "d1"}]


def test_the_scan_share_keeps_the_deliveries_part_only_where_there_are_deliveries() -> None:
    """Role ``all`` shares its loop with deliveries: its /v1 reads pay ``api_scan_share``; a
    worker in role ``api`` delivers nothing, and its reads go at full speed."""
    share = kafka_sources.scan_share(Settings(role="all", api_scan_share=0.3))
    assert share is not None and share.share == 0.3
    assert kafka_sources.scan_share(Settings(role="api", api_tokens="t.json")).share == 1.0
