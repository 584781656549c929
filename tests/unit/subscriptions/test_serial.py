"""bridge.subscriptions.serial's fence: a write is refused once its process may not write the
key (nothing written), and a process giving its webhooks up can wait for the writes it let
through, within a bound."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from bridge.contract.events import format_timestamp
from bridge.subscriptions.changes import created_record
from bridge.subscriptions.freshness import Placed, TableFreshness
from bridge.subscriptions.serial import KeyedLocks, NotWritable, to_the_end
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


class _TrailingTable:
    """A table that applies the subscription records it is fed only when told to, with its
    freshness's applied offsets beside it (as the worker's table reports them)."""

    def __init__(self, shown: Webhook | None) -> None:
        self.freshness = TableFreshness(_no_end_offsets, timeout=1.0)
        self.shown = shown
        self.reads = 0

    def apply(self, placed: Placed, webhook: Webhook | None) -> None:
        self.shown = webhook
        self.freshness.applied(placed.partition, placed.offset)

    async def read(self) -> Webhook | None:
        self.reads += 1
        await asyncio.sleep(0)
        return self.shown


async def _no_end_offsets() -> dict[int, int]:
    return {}


async def test_a_write_whose_place_is_known_is_waited_for_however_long_the_table_trails() -> None:
    """The owner disabled a webhook (acknowledged at offset 7); its table, trailing (a worker
    starting under load), still shows the version before. A rename read from it would turn the
    webhook on again. The write's place is known: it is waited for until the table applied it,
    though that is long past ``seen_within`` (0 here); until 2026-12-07 the wait ended there and
    the rename was made over the version before the disable."""
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    before = _webhook(start)
    disabled = webhook_from_record(
        {
            **before.to_record(),
            "active": False,
            "updated_at": format_timestamp(start.replace(second=5)),
        }
    )
    table = _TrailingTable(before)
    locks = KeyedLocks(applied=table.freshness.has_applied, seen_within=0.0)
    locks.wrote("wh_a", disabled, Placed(2, 7))
    table.freshness.applied(2, 6)  # the records before it: not yet this one
    table.freshness.applied(1, 50)  # another partition's records: nothing to it

    reading = asyncio.ensure_future(locks.read_as_written("wh_a", table.read, timeout=PROMPT))
    while table.reads < 5 and not reading.done():
        await asyncio.sleep(0.001)
    assert not reading.done()  # still waiting, well past seen_within
    table.apply(Placed(2, 7), disabled)
    assert await reading == (True, disabled)
    # Seen: forgotten, the next read does not wait.
    assert await locks.read_as_written("wh_a", table.read, timeout=0.0) == (True, disabled)


async def test_a_write_whose_place_the_table_has_not_applied_is_refused_at_the_timeout() -> None:
    """Not applied within the request's wait: ``False`` (the API answers ``503``), and the
    next read waits for it again."""
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    before = _webhook(start)
    table = _TrailingTable(before)
    locks = KeyedLocks(applied=table.freshness.has_applied, seen_within=0.0)
    locks.wrote("wh_a", _webhook(start.replace(second=5)), Placed(0, 3))
    assert await locks.read_as_written("wh_a", table.read, timeout=0.05) == (False, before)
    assert await locks.read_as_written("wh_a", table.read, timeout=0.05) == (False, before)


async def test_a_write_the_table_applied_and_another_writer_replaced_is_not_waited_for() -> None:
    """The table applied this process's write and then another writer's delete of it (or a
    webhook made again after this process's delete by a clock behind): what it shows can never
    be this process's write, and the read takes it at once, however long ``seen_within`` is."""
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    table = _TrailingTable(None)
    locks = KeyedLocks(applied=table.freshness.has_applied, seen_within=3600.0)
    locks.wrote("wh_a", _webhook(start), Placed(0, 3))
    table.apply(Placed(0, 4), None)  # its write at 3, then another's delete
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await locks.read_as_written("wh_a", table.read, timeout=PROMPT) == (True, None)
    assert loop.time() - started < PROMPT

    again = _webhook(start.replace(second=0, microsecond=0) - timedelta(milliseconds=50))
    locks.deleted("wh_a", format_timestamp(start), Placed(0, 9))
    table.apply(Placed(0, 10), again)
    assert await locks.read_as_written("wh_a", table.read, timeout=PROMPT) == (True, again)
    assert loop.time() - started < PROMPT


async def test_a_place_is_ignored_without_a_table_to_ask() -> None:
    """A process whose reads cannot say what they applied (``serve``'s repository) waits by
    time, whatever place the writer passes."""
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    before = _webhook(start)
    locks = KeyedLocks(seen_within=0.0)
    locks.wrote("wh_a", _webhook(start.replace(second=5)), Placed(0, 3))

    async def shows() -> Webhook | None:
        return before

    assert await locks.read_as_written("wh_a", shows, timeout=PROMPT) == (True, before)


async def test_a_write_is_awaited_to_its_end_through_any_number_of_cancels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """to_the_end: the caller cancelled (twice) while its record is on its way waits for it,
    records it (``then``), and only then is cancelled; a write failing after the cancel is
    dropped with it, one failing otherwise raises as before."""
    acknowledged = asyncio.Event()
    seen: list[int] = []

    async def write() -> int:
        await acknowledged.wait()
        return 7

    caller = asyncio.ensure_future(to_the_end(write(), seen.append))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done() and seen == []
    acknowledged.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert seen == [7]

    assert await to_the_end(write(), seen.append) == 7 and seen == [7, 7]

    failing = asyncio.Event()

    async def fails() -> int:
        await failing.wait()
        raise OSError("broker gone")

    caller = asyncio.ensure_future(to_the_end(fails(), seen.append))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    failing.set()
    with caplog.at_level(logging.WARNING, logger="bridge.subscriptions.serial"):
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert [r.getMessage() for r in caplog.records] == [
        "a write failed after its request was cancelled: OSError"
    ]
    with pytest.raises(OSError, match="broker gone"):
        await to_the_end(fails(), seen.append)
    assert seen == [7, 7]


async def test_a_timeout_around_a_write_ends_as_a_timeout_once_the_write_ended() -> None:
    """The API's request timeout (``asyncio.timeout``) around a change: a ``TimeoutError``,
    raised after the write ended, not before."""
    acknowledged = asyncio.Event()
    seen: list[str] = []

    async def write() -> str:
        await acknowledged.wait()
        return "written"

    async def request() -> None:
        async with asyncio.timeout(0.01):
            await to_the_end(write(), seen.append)

    asyncio.get_running_loop().call_later(0.05, acknowledged.set)
    with pytest.raises(TimeoutError):
        await request()
    assert seen == ["written"]
