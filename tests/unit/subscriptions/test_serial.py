"""bridge.subscriptions.serial's fence: a write is refused once its process may not write the
key (nothing written), and a process giving its webhooks up can wait for the writes it let
through, within a bound."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bridge.contract.events import format_timestamp
from bridge.subscriptions.changes import created_record
from bridge.subscriptions.serial import KeyedLocks, NotWritable
from bridge.subscriptions.webhook import Webhook, webhook_from_record
from tests.support.waiting import PROMPT


async def test_a_write_is_refused_once_the_process_may_not_write_the_key() -> None:
    allowed = {"wh_a"}
    locks = KeyedLocks(may_write=lambda key: key in allowed)
    written: list[str] = []
    async with locks.hold("wh_a"), locks.writing("wh_a"):
        written.append("wh_a")
    allowed.clear()  # a rebalance began: this worker owns nothing
    with pytest.raises(NotWritable, match="wh_a"):
        async with locks.hold("wh_a"), locks.writing("wh_a"):
            written.append("wh_a again")
    # An id generated here is no other process's to write: never refused.
    async with locks.hold("wh_new"), locks.writing("wh_new", fenced=False):
        written.append("wh_new")
    assert written == ["wh_a", "wh_new"]
    assert await locks.drained(0.0)  # a refused write is not counted as under way


async def test_drained_waits_for_every_write_let_through_and_no_longer_than_its_bound() -> None:
    locks = KeyedLocks()
    assert await locks.drained(0.0)
    release = asyncio.Event()
    entered = asyncio.Event()

    async def write(key: str) -> None:
        async with locks.hold(key), locks.writing(key):
            entered.set()
            await release.wait()

    writes = [asyncio.create_task(write(key)) for key in ("wh_a", "wh_b")]
    await asyncio.wait_for(entered.wait(), PROMPT)
    await asyncio.sleep(0)  # the second one in too
    assert not await locks.drained(0.05)  # still being written: the bound ends the wait
    draining = asyncio.create_task(locks.drained(PROMPT))
    await asyncio.sleep(0.01)
    assert not draining.done()
    release.set()
    assert await asyncio.wait_for(draining, PROMPT)
    await asyncio.gather(*writes)


async def test_a_failed_write_ends_too() -> None:
    locks = KeyedLocks()
    with pytest.raises(ConnectionError):
        async with locks.writing("wh_a"):
            raise ConnectionError("the broker went")
    assert await locks.drained(0.0)


def _webhook(at: datetime) -> Webhook:
    return webhook_from_record(
        created_record(
            webhook_id="wh_a", url="https://example.com/h", events=["*"], site_id="s", now=at
        )
    )


async def test_a_write_another_writer_replaced_is_waited_for_no_longer_than_its_bound() -> None:
    """This process wrote a webhook; the table then shows another writer's delete of it (the
    CLI, the webhook's next owner), or a webhook made again after this process's delete by a
    clock 50 ms behind: what the table shows can never be this process's write. Reads wait
    for it until ``seen_within`` after the write, then take what the table shows (until
    2026-12-06 every read of that id waited its timeout and was refused, for good)."""
    start = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    locks = KeyedLocks(seen_within=0.2)
    loop = asyncio.get_running_loop()

    async def gone() -> Webhook | None:
        return None

    locks.wrote("wh_a", _webhook(start))
    written_at = loop.time()
    shown, found = await locks.read_as_written("wh_a", gone, timeout=0.05)
    assert (shown, found) == (False, None)  # maybe not applied yet: a 503 then, as before
    shown, found = await locks.read_as_written("wh_a", gone, timeout=PROMPT)
    assert (shown, found) == (True, None)
    assert 0.2 <= loop.time() - written_at < PROMPT
    started = loop.time()
    assert await locks.read_as_written("wh_a", gone, timeout=PROMPT) == (True, None)
    assert loop.time() - started < 0.05  # forgotten: no one waits for it again

    again = _webhook(start - timedelta(milliseconds=50))

    async def made_again() -> Webhook | None:
        return again

    locks.deleted("wh_a", format_timestamp(start))
    assert await locks.read_as_written("wh_a", made_again, timeout=PROMPT) == (True, again)


async def test_a_write_the_table_shows_is_not_waited_for() -> None:
    start = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    locks = KeyedLocks()
    written = _webhook(start)
    locks.wrote("wh_a", written)

    async def shows() -> Webhook | None:
        return written

    started = asyncio.get_running_loop().time()
    assert await locks.read_as_written("wh_a", shows) == (True, written)
    assert asyncio.get_running_loop().time() - started < 0.05
