"""Patch to the consumer's hand-off of each fetched record to its streams and tables.

Faust's consumer hands every fetched record to its streams and tables with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: four tasks and an
``asyncio.wait`` per record, so that a rebalance can interrupt a callback that waits for room in
a full stream buffer. The bridge first runs the callback directly; almost always it finishes
without waiting, and one yield to the event loop follows, as Faust's own hand-off yields per
record (without it a rebalance could not stop the flow inside a fetched batch, and records
were lost after a worker was killed and replaced: those records were in a stream's buffer,
which a rebalance clears). A callback that put its record in no such buffer says so by returning
``UNBUFFERED`` (the events topic's hand-off, :mod:`bridge.worker.direct_topic`); after those the
yield comes once every ``UNBUFFERED_YIELD_EVERY`` records, as Faust's consumer yields every 100
records of a fetch. Only when the callback would wait does the rest of it become a task, raced
against the flow suspension exactly as before (``fast_record_handoff``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport import consumer as faust_consumer
from mode.services import WaitResults as _WaitResults

__all__ = ["UNBUFFERED", "UNBUFFERED_YIELD_EVERY"]


class _Rest:
    """Awaiting this continues a coroutine that already ran to its first suspension: what it
    yielded goes up to the task first, then every value and error is passed through."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # delivered into the coroutine, as ``await`` would
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _Rest(coro, yielded)


class _Unbuffered:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNBUFFERED"


#: Returned by a record callback that put its record in no buffer a rebalance clears.
UNBUFFERED: Any = _Unbuffered()
#: After that many such records in a row the hand-off yields to the loop.
UNBUFFERED_YIELD_EVERY = 32
_unbuffered_since_yield = 0

_EVENT_WAIT = asyncio.Event.wait.__code__
#: ``None`` when Faust has none: install() then refuses to start, naming the patch.
_original_wait_first: Any = getattr(faust_consumer.Consumer, "wait_first", None)


async def _wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
    # Only the record hand-off of ``Consumer._drain_messages``: a callback coroutine raced
    # against ``suspend_flow.wait()``, while the flow is not suspended and the service runs.
    if not (
        len(coros) == 2
        and timeout is None
        and asyncio.iscoroutine(coros[0])
        and getattr(coros[1], "cr_code", None) is _EVENT_WAIT
        and not self.suspend_flow.is_set()
        and not self._stopped.is_set()
        and not self._crashed.is_set()
    ):
        return await _original_wait_first(self, *coros, timeout=timeout)
    callback, suspended = coros
    try:
        yielded = callback.send(None)
    except StopIteration as stop:
        suspended.close()  # never started
        # Yield to the loop once per record, as Faust's own hand-off does: a rebalance must be
        # able to stop the flow between two records of a fetched batch, before the stream that
        # buffered the first hands it on. Records no stream buffered need not wait for that.
        global _unbuffered_since_yield
        if stop.value is not UNBUFFERED or _unbuffered_since_yield >= UNBUFFERED_YIELD_EVERY - 1:
            _unbuffered_since_yield = 0
            await asyncio.sleep(0)
        else:
            _unbuffered_since_yield += 1
        return _WaitResults([callback], [stop.value], False)
    except BaseException:
        suspended.close()
        raise
    # It has to wait (a full stream buffer): race the rest of it against the suspension.
    rest = asyncio.ensure_future(_finish(callback, yielded))
    return await _original_wait_first(self, rest, suspended)
