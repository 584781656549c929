"""Recoveries recorded in the recoveries topic by a worker, read back, and taken over.

Workers that serve the API read the compacted recoveries topic as a global table
(:class:`~bridge.worker.recovery_view.RecoveryView`), so any of them shows any recovery
(``GET /v1/recoveries/{id}``), current as of the request (the freshness barrier the webhooks
table uses). A recovery runs in the worker that owns its webhook (the API relays
``POST .../recoveries`` there) and records itself every few seconds
(:class:`~bridge.api.recoveries.Recoveries` with a :class:`KafkaRecoveryJournal`).

:func:`take_over` is how a recovery outlives its worker: a worker that stops releases its
running recoveries (recorded ``running`` with no runner); one that crashes stops recording them.
Every few seconds each worker with the delivery log looks for running recoveries of the webhooks
it owns that are released or were not recorded for ``stale_after`` seconds, and resumes them
from their recorded positions. Records enqueued after the last record of a crashed runner are
enqueued again (same delivery ids: receivers deduplicate); a release records exact positions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from bridge.admin.recovery import Operation
from bridge.api.recoveries import Recoveries, RecoveryJournal
from bridge.api.table_repository import require_current
from bridge.contract import jsoncanon
from bridge.contract.events import format_epoch
from bridge.errors import InvalidRecord
from bridge.subscriptions.serial import NotWritable
from bridge.subscriptions.webhook import Webhook, before_created
from bridge.worker.recovery_view import (
    DEFAULT_STALE_AFTER,
    RecoveryView,
    live_runner,
    updated_at,
)

__all__ = [
    "FORGET_INTERVAL",
    "FORGET_STEP",
    "KEEP_PER_WEBHOOK",
    "KafkaRecoveryJournal",
    "forget_ended",
    "keep_calling",
    "take_over",
]

log = logging.getLogger(__name__)


class KafkaRecoveryJournal:
    """A :class:`~bridge.api.recoveries.RecoveryJournal` over the recoveries topic: writes one
    acknowledged record per call (its own batch), reads the view once it is current."""

    def __init__(
        self,
        view: RecoveryView,
        producer: AIOKafkaProducer,
        topic: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._producer = producer
        self._topic = topic
        self._clock = clock

    def __repr__(self) -> str:
        return f"KafkaRecoveryJournal({self._topic!r})"

    async def write(self, record: dict[str, Any]) -> None:
        await self._producer.send_and_wait(
            self._topic, jsoncanon.dumps(record), key=str(record["id"]).encode("utf-8")
        )

    async def read(self, operation_id: str) -> dict[str, Any] | None:
        await require_current(self._view.freshness, self._clock(), "recoveries")
        return self._view.get(operation_id)

    async def of_webhook(self, webhook_id: str) -> list[dict[str, Any]]:
        await require_current(self._view.freshness, self._clock(), "recoveries")
        return self._view.of_webhook(webhook_id)

    async def forget(self, operation_id: str) -> None:
        """Write the tombstone of an operation (compaction then drops its records)."""
        await self._producer.send_and_wait(self._topic, None, key=operation_id.encode("utf-8"))


def _writable(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without the fields that cannot be written back (an integer beyond what
    JavaScript keeps, in a record that is not a recovery): its end is recorded all the same."""
    out = {}
    for name, value in record.items():
        try:
            jsoncanon.dumps(value)
        except InvalidRecord:
            continue
        out[name] = value
    return out


async def take_over(
    view: RecoveryView,
    recoveries: Recoveries,
    *,
    owns: Callable[[str], bool],
    webhook: Callable[[str], Webhook | None],
    wall_time: Callable[[], float] = time.time,
    stale_after: float = DEFAULT_STALE_AFTER,
    table_current: Callable[[], Awaitable[bool]] | None = None,
) -> list[str]:
    """Resume the running recoveries of webhooks this worker ``owns`` that no worker runs
    (released, or not recorded for ``stale_after`` seconds); the ids resumed. A recovery whose
    webhook is gone (deleted, or its id taken by a webhook created after the recovery began)
    is recorded failed (``webhook_deleted``): gone from the table once
    ``table_current`` (which waits until the table of webhooks applied what its topic holds)
    says it is current, since a starting worker's table has not read every webhook yet; while
    it cannot say so, the recovery is left for the next turn. One whose record is not a
    recovery (:meth:`Operation.from_record` refuses it) is recorded failed
    (``invalid_record``)."""
    resumed: list[str] = []
    now = wall_time()
    for record in view.running():
        operation_id = record.get("id")
        webhook_id = record.get("webhook_id")
        if not isinstance(operation_id, str) or not isinstance(webhook_id, str):
            continue
        if recoveries.running_here(operation_id) or not owns(webhook_id):
            continue
        if view.live_runner(operation_id, now, stale_after) is not None:
            continue
        journal = recoveries.journal
        if journal is not None:
            # The newest record as of now, not the view's as it was applied: one cancelled
            # through another worker a moment ago is not resumed (and written running again).
            newest = await journal.read(operation_id)
            if newest is None or newest.get("state") != "running":
                continue
            if live_runner(newest, now, stale_after) is not None:
                continue
            record = newest
        current = webhook(webhook_id)
        if current is None and table_current is not None:
            if not await table_current():
                continue  # not known to be gone yet
            current = webhook(webhook_id)
        operation: Operation | None = None
        error = "webhook_deleted"
        if current is not None:
            try:
                operation = Operation.from_record(record, current)
            except ValueError as exc:
                # Not a recovery this worker can run (written by hand or by another version):
                # ended, so that it is looked at no more and forgotten after the retention
                # (until 2026-12-07 it was skipped with a warning every turn, for ever).
                log.warning("recovery %s failed: its record is not one (%s)", operation_id, exc)
                error = "invalid_record"
            else:
                if before_created(operation.started_at, current.created_at):
                    # Begun for a webhook of this id that was deleted: the webhook that took
                    # the id never gets its window (until 2026-12-06 it was resumed for it).
                    operation = None
        if operation is None:
            journal = recoveries.journal
            if journal is not None:
                failed = {"state": "failed", "error": error, "runner": None}
                await journal.write(
                    {
                        **_writable(record),
                        **failed,
                        "updated_at": format_epoch(now),
                        "finished_at": format_epoch(now),
                    }
                )
            continue
        try:
            await recoveries.resume(operation)
        except NotWritable:
            continue  # a rebalance began meanwhile: the next owner resumes it
        log.info("recovery %s resumed", operation_id)
        resumed.append(operation_id)
    return resumed


#: Records of ended recoveries looked at between two turns of the event loop while forgetting.
FORGET_STEP = 1000
#: Seconds between two looks for ended recoveries to forget.
FORGET_INTERVAL = 60.0
#: Ended recoveries kept per webhook at most (its newest), whatever the retention.
KEEP_PER_WEBHOOK = 1000


async def forget_ended(
    view: RecoveryView,
    journal: RecoveryJournal,
    *,
    owns: Callable[[str], bool],
    retention: float,
    wall_time: Callable[[], float] = time.time,
    keep_per_webhook: int = KEEP_PER_WEBHOOK,
) -> list[str]:
    """Write the tombstones of the recoveries that ended ``retention`` seconds ago or earlier
    (by their last record's ``updated_at``) of webhooks this worker ``owns``, and of those past
    each webhook's newest ``keep_per_webhook`` ended ones; the ids forgotten.

    One whose time cannot be read is forgotten at once (its age is unknown); one of no webhook
    by any worker (no owner would), as two tombstones of one id do no harm. Lets the event loop
    run every :data:`FORGET_STEP` records.

    The cap per webhook: redeliveries are recoveries, and a token may ask for
    ``api_rate_limit`` a second; kept for the retention alone, one token's 100 a second for 7
    days were 60 million records in every worker's memory (until 2026-12-06)."""
    cutoff = wall_time() - retention
    forgotten: list[str] = []
    kept: dict[str, list[tuple[float, str]]] = {}
    for n, (operation_id, record) in enumerate(view.ended(), start=1):
        if n % FORGET_STEP == 0:
            await asyncio.sleep(0)
        webhook_id = record.get("webhook_id")
        if isinstance(webhook_id, str) and not owns(webhook_id):
            continue
        ended = updated_at(record)
        if ended is not None and ended > cutoff:
            if isinstance(webhook_id, str):
                kept.setdefault(webhook_id, []).append((ended, operation_id))
            continue
        await journal.forget(operation_id)
        forgotten.append(operation_id)
    aged = len(forgotten)
    for ended_ones in kept.values():
        if len(ended_ones) > keep_per_webhook:
            ended_ones.sort(reverse=True)  # newest first
            for _, operation_id in ended_ones[keep_per_webhook:]:
                await journal.forget(operation_id)
                forgotten.append(operation_id)
    if forgotten:
        log.info(
            "forgot %d recoveries that ended over %.0f s ago, %d past %d of a webhook",
            aged,
            retention,
            len(forgotten) - aged,
            keep_per_webhook,
        )
    return forgotten


async def keep_calling(step: Callable[[], Awaitable[object]], interval: float, what: str) -> None:
    """Call ``step`` every ``interval`` seconds until cancelled; a failing step is logged as
    ``what`` failing."""
    while True:
        await asyncio.sleep(interval)
        try:
            await step()
        except Exception:
            log.exception("%s failed", what)
