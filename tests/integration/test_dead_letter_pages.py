"""Pages of dead letters read from the dead-letter topic on the real broker, a batch at a time."""

from __future__ import annotations

import asyncio
import json
import random
from contextlib import aclosing
from datetime import UTC, datetime

import pytest

from bridge.admin import dead_letters as dead_letters_module
from bridge.admin.dead_letters import DeadLetterFilter, stream_dead_letters
from bridge.admin.loop_share import STRETCH_RECORDS
from bridge.api.auth import Principal
from bridge.api.kafka_sources import KafkaDeadLetters
from bridge.api.repository import MemoryRepository
from bridge.config import Settings
from bridge.contract.events import format_timestamp
from bridge.contract.payload import delivery_id
from bridge.kafka.reading import UNTIL_STEP
from tests.support.records import RawWriter
from tests.support.shares import CountedShare
from tests.unit.api.conftest import control_service, dead_letter

pytestmark = pytest.mark.integration

ADMIN = Principal("admin", frozenset({"read", "write"}))

#: 2026-01-15T10:00:00Z, in seconds.
BASE = int(datetime(2026, 1, 15, 10, 0, tzinfo=UTC).timestamp())


def stamp(seconds: int) -> str:
    return format_timestamp(datetime.fromtimestamp(seconds, UTC))


async def test_pages_of_dead_letters_are_the_whole_listing_in_order(settings: Settings) -> None:
    """Letters of three webhooks (and of none), in every partition, with times out of order
    (each up to two minutes from when it was written, many alike), among records that are no
    letters at all: paged five at a time, with and without a webhook, the pages are every
    letter the filter selects, oldest first, each once."""
    rng = random.Random(20261204)
    letters = []
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        for n in range(48):
            webhook_id = rng.choice(["wh_a", "wh_b", "wh_c", None])
            written = BASE + n * 20
            minute = (written + rng.randrange(-120, 121)) // 60 * 60
            letter = dead_letter(n, webhook_id=webhook_id, at=stamp(minute))
            key = None if webhook_id is None else webhook_id.encode()
            value = json.dumps(letter).encode()
            await writer.write(
                settings.deadletter_topic, value, key=key, timestamp_ms=written * 1000
            )
            letters.append(letter)
            if n % 16 == 0:  # and no letters: not JSON, not an object, a tombstone
                for junk, junk_key in (
                    (b"{not json", b"wh_a"),
                    (b"[1, 2]", b"wh_b"),
                    (None, b"wh_c"),
                ):
                    await writer.write(
                        settings.deadletter_topic, junk, key=junk_key, timestamp_ms=written * 1000
                    )
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


async def test_a_page_of_dead_letters_stops_reading_past_its_last_letter(
    settings: Settings,
) -> None:
    """150 letters a minute apart in each partition (the embedded broker answers a fetch with
    all a partition holds: a read asks how far it needs to go every UNTIL_STEP records), then
    in every partition one dated an hour before them but written hours after
    (which the bridge never writes: it stamps a letter as it writes it): a read of everything
    finds those first, but the first page, and a read up to a time, stop each partition at
    the first record written 5 minutes past what they need, so never reach them."""
    assert UNTIL_STEP < 150
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        partitions = await writer.partitions(settings.deadletter_topic)
        for n in range(150 * len(partitions)):
            written = BASE + n * 60
            letter = dead_letter(n, webhook_id=f"wh_{n % 7}", at=stamp(written))
            await writer.write(
                settings.deadletter_topic,
                json.dumps(letter).encode(),
                partition=partitions[n % len(partitions)],
                timestamp_ms=written * 1000,
            )
        for partition in partitions:
            late = dead_letter(1000 + partition, webhook_id="wh_late", at=stamp(BASE - 3600))
            await writer.write(
                settings.deadletter_topic,
                json.dumps(late).encode(),
                partition=partition,
                timestamp_ms=(BASE + 3 * 3600) * 1000,
            )
    finally:
        await writer.stop()

    async def read(where: DeadLetterFilter) -> list[dict]:
        async with aclosing(stream_dead_letters(settings, where)) as letters:
            return [letter async for letter in letters]

    everything = await read(DeadLetterFilter())
    assert sum(letter["webhook_id"] == "wh_late" for letter in everything) == len(partitions)
    until = datetime.fromtimestamp(BASE + 10 * 60, UTC)
    up_to = await read(DeadLetterFilter(until=until))
    assert sorted(letter["source"]["offset"] for letter in up_to) == list(range(11))
    control = control_service(MemoryRepository(), dead_letters=KafkaDeadLetters(settings))
    page = await control.dead_letters(ADMIN, DeadLetterFilter(), limit=5, cursor=None)
    assert [letter["source"]["offset"] for letter in page.items] == [0, 1, 2, 3, 4]
    second = await control.dead_letters(ADMIN, DeadLetterFilter(), limit=5, cursor=page.next_cursor)
    assert [letter["source"]["offset"] for letter in second.items] == [5, 6, 7, 8, 9]


async def test_a_dead_letter_read_pays_for_every_record_it_parses_not_for_its_reader(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of the dead-letter topic pays the worker's scan share for every record it goes
    through (letters of other webhooks, junk and tombstones too), in stretches of at most
    STRETCH_RECORDS; the time its reader takes with each letter handed over is not its own.
    Here the share's clock counts the records parsed (a second each) and the reader's time
    (ten seconds a letter), and the sleeps: only the records are paid for."""
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        for n in range(300):
            webhook_id = "wh_a" if n % 3 == 0 else "wh_b"
            value = json.dumps(dead_letter(n, webhook_id=webhook_id, at=stamp(BASE + n))).encode()
            await writer.write(settings.deadletter_topic, value, key=webhook_id.encode())
        for junk in (b"{not json", None):
            await writer.write(settings.deadletter_topic, junk, key=b"wh_a")
    finally:
        await writer.stop()
    share = CountedShare(0.5)
    parsed = 0
    real_loads = dead_letters_module.jsoncanon.loads

    def counting(value: bytes) -> object:
        nonlocal parsed
        parsed += 1
        share.work()
        return real_loads(value)

    monkeypatch.setattr(dead_letters_module.jsoncanon, "loads", counting)
    letters = KafkaDeadLetters(settings, share=share)
    read = []
    async with aclosing(letters.read(DeadLetterFilter())) as reading:
        async for letter in reading:
            read.append(letter)
            share.work(10.0)  # the reader's work with the letter
    assert len(read) == 300 and parsed == 301  # (the tombstone is not parsed)
    assert sum(share.stretches) == pytest.approx(parsed)
    assert max(share.stretches) <= STRETCH_RECORDS
    # Every record's second, and a second's sleep for it; and the reader's ten a letter.
    assert share.now == pytest.approx(2 * parsed + 10 * len(read))


async def test_a_replay_stopped_at_its_deadline_goes_on_from_where_it_got_to(
    settings: Settings,
) -> None:
    """Letters of three webhooks (so in several partitions) replayed by replays that each
    stop after their first letter (its webhook's lookup outlasts the deadline), each resumed
    from where the last got to: together they write every letter to the first retry tier
    once, and the one after them finds nothing left and says it is complete."""
    from bridge.admin.dead_letters import replay_dead_letters
    from bridge.kafka.reading import read_topic
    from bridge.subscriptions.webhook import webhook_from_record
    from tests.support.builders import webhook_record
    from tests.support.jobs import SPEC_EVENT

    hooks = {
        name: webhook_from_record(
            webhook_record(id=name, site_id=SPEC_EVENT.site_id, created_at=stamp(BASE))
        )
        for name in ("wh_a", "wh_b", "wh_c")
    }
    now = int(datetime.now(UTC).timestamp())
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    expected = []
    try:
        for n in range(9):
            webhook_id = ("wh_a", "wh_b", "wh_c")[n % 3]
            letter = {
                **dead_letter(n, webhook_id=webhook_id, at=stamp(now - 60)),
                "event": {**SPEC_EVENT.envelope(), "id": f"evt_{n}"},
                "delivery_id": delivery_id(f"evt_{n}", webhook_id),
                "webhook_created_at": stamp(BASE),
            }
            await writer.write(
                settings.deadletter_topic, json.dumps(letter).encode(), key=webhook_id.encode()
            )
            expected.append(letter["delivery_id"])
    finally:
        await writer.stop()
    loop = asyncio.get_running_loop()

    async def slow_lookup(webhook_id: str):
        await asyncio.sleep(0.6)  # past the deadline: the replay stops after this letter
        return hooks.get(webhook_id)

    replayed: list[str] = []
    resume = None
    until = None

    async def replay(seconds: float):
        return await replay_dead_letters(
            settings,
            DeadLetterFilter(until=until),
            webhooks=slow_lookup,
            resume=resume,
            deadline=loop.time() + seconds,
        )

    for _ in range(20 * len(expected)):
        report = await replay(0.5)
        # A round under load may find its deadline passed before its first letter.
        assert not report.complete and len(report.replayed) <= 1
        replayed += report.replayed
        until, resume = report.until, report.positions
        if len(replayed) == len(expected):
            break
    # Nothing left: read to the end (and its settling) within a deadline it does not reach.
    report = await replay(10)
    assert report.complete and report.replayed == [] and report.skipped == 0
    assert sorted(replayed) == sorted(expected)
    retries = await read_topic(settings, settings.retry_topics[0])
    written = [json.loads(value)["delivery_id"] for _, value in retries if value is not None]
    assert sorted(written) == sorted(expected)


async def test_a_replay_that_takes_no_letter_still_reads_to_each_partition_s_end(
    settings: Settings,
) -> None:
    """Its positions are where it read to, letters taken or not: a replay resumed after it
    does not read them again (before 2026-12-06 only letters taken moved them)."""
    from bridge.admin.dead_letters import replay_dead_letters
    from bridge.kafka.reading import read_topic

    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        for n in range(300):
            webhook_id = ("wh_a", "wh_b", "wh_c")[n % 3]
            letter = dead_letter(n, webhook_id=webhook_id, at=stamp(BASE))
            await writer.write(
                settings.deadletter_topic, json.dumps(letter).encode(), key=webhook_id.encode()
            )
    finally:
        await writer.stop()

    async def nothing(webhook_id: str):
        raise AssertionError("no letter is taken: no webhook is asked for")

    report = await replay_dead_letters(
        settings, DeadLetterFilter(delivery_id="dl_none"), webhooks=nothing
    )
    assert report.complete and report.replayed == [] and report.skipped == 0
    records = await read_topic(settings, settings.deadletter_topic)
    assert len(records) == 300
    # Each partition that holds letters is read to its end (its last offset + 1).
    assert sum(report.positions.values()) == 300
