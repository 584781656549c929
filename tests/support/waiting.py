"""Waiting in tests: poll a condition until it holds or a deadline passes, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Upper bound for anything that should happen promptly (in-process tasks, fakes).
PROMPT = 2.0

Message = str | Callable[[], str] | None


def _failure(message: Message, timeout: float, last: object) -> AssertionError:
    text = message() if callable(message) else message
    text = text or "the condition did not hold"
    return AssertionError(f"{text} (within {timeout} s; last value: {last!r})")


async def poll(
    fetch: Callable[[], T | Awaitable[T]],
    *,
    until: Callable[[T], object] = bool,
    timeout: float = PROMPT,
    interval: float = 0.0,
) -> T:
    """Call ``fetch`` (a function or a coroutine function) until ``until`` accepts its result or
    ``timeout`` seconds have passed; the last result either way, for callers that report what is
    still missing themselves.

    ``interval`` 0 only yields to the other tasks between calls: for conditions that in-process
    tasks make true. Poll anything outside the process (a broker, a child, a server) with an
    interval.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = fetch()
        if inspect.isawaitable(value):
            value = await value
        if until(value) or loop.time() > deadline:  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
        await asyncio.sleep(interval)


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = PROMPT,
    interval: float = 0.0,
    message: Message = None,
) -> T:
    """Poll ``condition`` (see :func:`poll`) until its result is truthy, and return that result;
    fail with ``message`` (text, or a function making it then, such as a log's tail) once
    ``timeout`` seconds have passed."""
    value = await poll(condition, timeout=timeout, interval=interval)
    if not value:
        raise _failure(message, timeout, value)
    return value


def eventually_sync(
    condition: Callable[[], T],
    *,
    timeout: float = PROMPT,
    interval: float = 0.01,
    message: Message = None,
) -> T:
    """:func:`eventually` for code without an event loop (child processes, threads)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(message, timeout, value)
        time.sleep(interval)
