"""bridge.subscriptions.serial's fence: a write is refused once its process may not write the
key (nothing written), and a process giving its webhooks up can wait for the writes it let
through, within a bound."""

from __future__ import annotations

import asyncio

import pytest

from bridge.subscriptions.serial import KeyedLocks, NotWritable
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
