"""How often the event loop ran another task while one awaited something."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["turns_during"]

T = TypeVar("T")


async def turns_during(
    work: Awaitable[T], each_turn: Callable[[int], None] | None = None
) -> tuple[T, int]:
    """Await ``work`` while another task counts the turns it gets on the loop (calling
    ``each_turn`` with the count at each); the result and the count. Code that never lets the
    loop run gets none."""
    turns = 0
    awaiting = True

    async def beside() -> None:
        nonlocal turns
        while awaiting:
            turns += 1
            if each_turn is not None:
                each_turn(turns)
            await asyncio.sleep(0)

    task = asyncio.create_task(beside())
    await asyncio.sleep(0)  # its first turn, before the work starts
    started = turns
    try:
        result = await work
    finally:
        awaiting = False
        await task
    return result, turns - started
