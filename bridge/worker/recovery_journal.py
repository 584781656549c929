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
from bridge.api.recoveries import Recoveries
from bridge.api.table_repository import require_current
from bridge.contract import jsoncanon
from bridge.contract.events import format_epoch
from bridge.subscriptions.webhook import Webhook
from bridge.worker.recovery_view import DEFAULT_STALE_AFTER, RecoveryView

__all__ = ["KafkaRecoveryJournal", "keep_taking_over", "take_over"]

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


async def take_over(
    view: RecoveryView,
    recoveries: Recoveries,
    *,
    owns: Callable[[str], bool],
    webhook: Callable[[str], Webhook | None],
    wall_time: Callable[[], float] = time.time,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> list[str]:
    """Resume the running recoveries of webhooks this worker ``owns`` that no worker runs
    (released, or not recorded for ``stale_after`` seconds); the ids resumed. A recovery whose
    webhook is gone is recorded failed (``webhook_deleted``)."""
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
        current = webhook(webhook_id)
        try:
            if current is None:
                journal = recoveries.journal
                if journal is not None:
                    failed = {"state": "failed", "error": "webhook_deleted", "runner": None}
                    await journal.write(
                        {
                            **record,
                            **failed,
                            "updated_at": format_epoch(now),
                            "finished_at": format_epoch(now),
                        }
                    )
                continue
            operation = Operation.from_record(record, current)
        except ValueError as exc:
            log.warning("recovery %s not resumed: %s", operation_id, exc)
            continue
        await recoveries.resume(operation)
        log.info("recovery %s resumed", operation_id)
        resumed.append(operation_id)
    return resumed


async def keep_taking_over(step: Callable[[], Awaitable[list[str]]], interval: float) -> None:
    """Call ``step`` every ``interval`` seconds until cancelled; a failing step is logged."""
    while True:
        await asyncio.sleep(interval)
        try:
            await step()
        except Exception:
            log.exception("recovery take-over failed")
