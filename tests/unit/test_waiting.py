"""tests/support/waiting.py: deadline polling returns what held, or fails saying what did not."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support.waiting import eventually, eventually_sync, poll


async def test_eventually_returns_the_first_truthy_value_of_sync_or_async_conditions() -> None:
    calls = iter([0, 0, 7])
    assert await eventually(lambda: next(calls)) == 7

    async def ready() -> str:
        await asyncio.sleep(0)
        return "yes"

    assert await eventually(ready) == "yes"


async def test_eventually_fails_after_the_deadline_with_the_message_made_then() -> None:
    state = {"tail": "nothing yet"}

    def message() -> str:
        return f"log: {state['tail']}"

    state["tail"] = "worker crashed"
    with pytest.raises(AssertionError, match="log: worker crashed.*last value: 0"):
        await eventually(lambda: 0, timeout=0.05, interval=0.01, message=message)


async def test_poll_returns_the_last_value_when_the_deadline_passes() -> None:
    values = itertools.count(1)
    last = await poll(lambda: next(values), until=lambda v: v < 0, timeout=0.05)
    assert last > 0


def test_eventually_sync_polls_without_a_loop() -> None:
    calls = iter([False, False, True])
    assert eventually_sync(lambda: next(calls), interval=0.001) is True
    with pytest.raises(AssertionError, match="never"):
        eventually_sync(lambda: None, timeout=0.02, interval=0.005, message="never")
