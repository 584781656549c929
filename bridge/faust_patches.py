"""Adjustments to faust-streaming that its settings do not expose, applied by bridge.app.

Faust creates its consumer with ``fetch_max_wait_ms=1500`` hard-coded. Real Kafka answers a
waiting fetch as soon as records arrive, but the embedded broker (Tansu) holds it for the whole
wait, which put up to 1.5 s between an event and its delivery. The bridge sets the wait from
``kafka_fetch_max_wait`` instead (idle fetches then cost one small request per wait per broker).

After a rebalance Faust drops the records fetched while it recovered its tables, then seeks each
partition to its committed offset; aiokafka skips partitions with none, so their first records
were lost until a restart. The bridge seeks those to their beginning (``auto_offset_reset``
earliest, as configured).

Faust recovers a table by awaiting ``asyncio.wait_for(queue.get(), timeout=5.0)`` for every
record. On Python 3.11 each ``wait_for`` call starts a task, the largest single cost of reading
100,000 subscriptions at start; the bridge gives that module ``wait_for`` as Python 3.12
implements it (``asyncio.timeout`` around the awaitable, same results and errors, no task).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

from faust.tables import recovery as faust_recovery
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = [
    "set_fetch_max_wait",
    "reread_uncommitted_partitions",
    "cheap_recovery_wait_for",
    "wait_for",
]

T = TypeVar("T")

_fetch_max_wait_ms = 1500
_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original(self, transport)
    consumer._fetch_max_wait_ms = _fetch_max_wait_ms  # read when the consumer starts
    return consumer


def set_fetch_max_wait(seconds: float) -> None:
    """Use ``seconds`` as the longest time a fetch waits for records, for consumers created
    from now on."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = max(1, int(seconds * 1000))
    consumer_thread: Any = faust_aiokafka.AIOKafkaConsumerThread
    consumer_thread._create_worker_consumer = _create_worker_consumer


async def _seek_uncommitted_to_start(consumer: Any) -> dict[Any, Any]:
    committed: dict[Any, Any] = await consumer.seek_to_committed()
    for tp, offset in committed.items():
        if offset is None or offset <= 0:
            # aiokafka seeks only partitions with a committed offset above 0. The others keep
            # the position of whatever was fetched while Faust's flow was suspended for the
            # rebalance, and Faust drops those buffered records: a partition's first records
            # (a fresh retry tier, say) would be skipped until the next restart.
            await consumer.seek_to_beginning(tp)
    return committed


async def _seek_to_committed(self: Any) -> Any:
    return await self.call_thread(_seek_uncommitted_to_start, self._ensure_consumer())


def reread_uncommitted_partitions() -> None:
    """After a rebalance, read partitions without a committed offset from their beginning."""
    consumer_thread: Any = faust_aiokafka.AIOKafkaConsumerThread
    consumer_thread.seek_to_committed = _seek_to_committed


async def wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` as Python 3.12 implements it: no task of its own."""
    if timeout is None:
        return await awaitable
    async with asyncio.timeout(timeout):
        return await awaitable


class _AsyncioFor312WaitFor:
    """The ``asyncio`` module as one Faust module sees it, with the task-free ``wait_for``."""

    wait_for = staticmethod(wait_for)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def cheap_recovery_wait_for() -> None:
    """Table recovery waits for each record without starting a task (Python 3.11)."""
    if sys.version_info < (3, 12) and getattr(faust_recovery, "asyncio", None) is asyncio:
        recovery: Any = faust_recovery
        recovery.asyncio = _AsyncioFor312WaitFor()
