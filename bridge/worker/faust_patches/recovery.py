"""Patches to the tables' start and recovery: the changelog reading, its seeks, what it clears.

Faust recovers a table by awaiting ``asyncio.wait_for(queue.get(), timeout=5.0)`` for every
record. On Python 3.11 each ``wait_for`` call starts a task, the largest single cost of reading
100,000 subscriptions at start; the bridge gives that module ``wait_for`` as Python 3.12
implements it (``asyncio.timeout`` around the awaitable, same results and errors, no task).

Faust recovers a global table's partitions as active partitions, then seeks them again, as
standby partitions, to where the recovery *started*, re-reading (and skipping) every record of
the subscription topic right after ready. The bridge starts the standby reading of partitions
that were just recovered as active where that recovery ended (``standby_after_active``).

When its recovery is complete Faust resumes the app's flow control once more
(``Recovery.on_recovery_completed``), and that clears every queue it manages, the tables'
changelog queue among them. The standby reading of the global tables' partitions has been
running since just before, so that queue held records the consumer had fetched (its position
already past them) and the tables had not applied yet: they were never read again, and a
subscription change written while a worker started stayed missing from its table until the next
restart (one rename in about every other start under a stream of writes, since
``standby_after_active``: Faust's own standby reading starts over from the topic's start, so
what the clear dropped had mostly been applied already). The bridge keeps that queue
(``keep_fetched_records``): its records are applied in order, and one read twice is skipped by
its offset as before.

The same resume cleared the retry agents' stream queues, and Faust resumes the stream
partitions *before* it seeks them to their committed offsets, while the flow already runs for
that standby reading. A retry record fetched and handed to its agent's queue after the seek was
dropped by the clear that followed, its partition's position already past it: not processed
until the next rebalance, and, handed on and never acknowledged, it held the partition's commits
(``commit_settled_only``) meanwhile. One handed on while the seek was under way (between the
seek of the partitions with a committed offset and that of the others) was also forgotten by the
seek's fresh count of records handed on, and the commits of later records passed it: never
processed. This could happen at every start and every rebalance. The bridge
(``keep_fetched_records``) clears the stream queues *before* the seek (what they hold then was
read before it, and is read again from the committed offset), seeks while the stream partitions
are still paused (Faust pauses every assigned partition when the assignment arrives; the seek
applies to them all the same), then resumes them and the flow without clearing anything. A
record handed on during the seek (only from a batch fetched before it, of a partition under
buffer pressure, which Faust hands on while paused) may be processed twice, never dropped.
The retry tiers' records now wait in :class:`bridge.worker.retry_intake.RetryIntake` rather
than in stream queues (since 2026-12-06); it is managed by the flow control like them, so the
same clear before the seek empties it.

Faust's table manager sleeps one second when it starts, before it registers the tables'
changelog channels, in case tables are still being defined. The bridge defines every table
before the app starts, so the pause only added a second to every start and every replacement
of a failed worker (``no_table_registration_pause``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from faust.tables import recovery as faust_recovery

__all__ = ["wait_for"]

_T = TypeVar("_T")


async def wait_for(awaitable: Awaitable[_T], timeout: float | None) -> _T:
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


#: ``None`` when Faust has none: install() then refuses to start, naming the patch.
_original_seek_offsets: Any = getattr(faust_recovery.Recovery, "_seek_offsets", None)


async def _seek_offsets(self: Any, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
    if title == "standby":
        # A partition both active and standby (a global table's) was just read up to
        # active_offsets by the active recovery: continue from there, not from the start.
        offsets = offsets.copy()
        for tp in tps & self.active_tps:
            offsets[tp] = max(offsets[tp], self.active_offsets[tp])
    await _original_seek_offsets(self, consumer, tps, offsets, title)


def _clear_stream_queues(app: Any) -> None:
    """``app.flow_control.clear()`` except for the tables' changelog queue."""
    changelog = app.tables.changelog_queue
    for queue in list(app.flow_control._queues):  # mode: the queues resume() clears
        if queue is not changelog:
            queue.clear()


def _resume_flow_clearing_nothing(app: Any) -> None:
    """``app.flow_control.resume()`` without the clear of every queue it manages (which stay
    managed, so that the explicit clear of a rebalance still empties them)."""
    flow_control = app.flow_control
    managed = flow_control._queues  # mode: the queues resume() clears
    flow_control._queues = type(managed)()
    try:
        flow_control.resume()
    finally:
        flow_control._queues = managed


async def _on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    # faust.tables.recovery.Recovery.on_recovery_completed (faust-streaming 0.15), with the
    # stream queues cleared before the seek instead of after it, the stream partitions resumed
    # after the seek instead of before it, and the flow resumed without clearing any queue:
    # what is handed on after the seek (the changelog records of the global tables' standby
    # reading, running already) is never dropped.
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(
            table.on_recovery_completed(
                self.actives_for_table[table],
                self.standbys_for_table[table],
            )
        )
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(
            f"Recovery rebalancing again app id "
            f"{self.app.consumer_generation_id} param {generation_id}"
        )
        return
    # Read before the seek (the stream partitions are paused since the assignment): dropped,
    # and read again from the committed offsets.
    _clear_stream_queues(self.app)
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    self.completed.set()
    self.log.dev("Resume stream partitions")
    # No await from here to the flow's resume: nothing is handed on in between, and nothing
    # handed on from now on is cleared.
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    _resume_flow_clearing_nothing(self.app)
    consumer.resume_flow()
    # finally make sure the fetcher is running.
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _start_table_manager(self: Any) -> None:
    # faust.tables.manager.TableManager.on_start (faust-streaming 0.15) without its
    # ``await self.sleep(1.0)``: every table exists before the app starts.
    if not self.should_stop:
        await self._update_channels()
        await self.recovery.start()
