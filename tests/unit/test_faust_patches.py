"""bridge.faust_patches: the task-free ``wait_for`` given to Faust's table recovery."""

from __future__ import annotations

import asyncio
import sys

import pytest
from faust.tables import recovery

from bridge import faust_patches
from bridge.faust_patches import cheap_recovery_wait_for, wait_for


async def test_returns_what_the_awaitable_returns() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    queue.put_nowait(7)
    assert await wait_for(queue.get(), timeout=5.0) == 7


async def test_waits_until_a_value_arrives() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    getter = asyncio.ensure_future(wait_for(queue.get(), timeout=5.0))
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait(3)
    assert await asyncio.wait_for(getter, 5.0) == 3


async def test_times_out_with_asyncio_timeout_error_and_cancels_the_wait() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    with pytest.raises(asyncio.TimeoutError):
        await wait_for(queue.get(), timeout=0.01)
    # The cancelled getter does not swallow the next item.
    queue.put_nowait(1)
    assert queue.get_nowait() == 1


async def test_starts_no_task() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    queue.put_nowait(1)
    before = len(asyncio.all_tasks())
    seen: list[int] = []

    async def probe() -> int:
        seen.append(len(asyncio.all_tasks()))
        return await queue.get()

    await wait_for(probe(), timeout=1.0)
    assert seen == [before]


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's own wait_for has no task")
def test_applied_to_faust_recovery_only() -> None:
    original = recovery.asyncio
    try:
        cheap_recovery_wait_for()
        assert recovery.asyncio.wait_for is wait_for
        assert recovery.asyncio.sleep is asyncio.sleep  # the rest is asyncio's
        assert asyncio.wait_for is not wait_for
        cheap_recovery_wait_for()  # idempotent
        assert isinstance(recovery.asyncio, faust_patches._AsyncioFor312WaitFor)
    finally:
        recovery.asyncio = original
