"""The record one delivery attempt writes to the attempts topic (topics/schemas/attempt.json)."""

from __future__ import annotations

from typing import Any

from bridge.contract.events import format_epoch
from bridge.delivery.breaker import endpoint_of
from bridge.delivery.job import Job
from bridge.delivery.pending_retry import PendingRetry
from bridge.errors import InvalidUrl
from bridge.http.base import AttemptResult

__all__ = ["attempt_record", "dropped_record"]


def attempt_record(
    job: Job,
    result: AttemptResult,
    outcome: str,
    next_step: str | None,
    next_at: float | None = None,
) -> dict[str, Any]:
    """The attempt record of ``result``: ``outcome`` is ``success``, ``failure`` or
    ``skipped``; ``next_at`` (Unix time) is when a retry is due, recorded only for
    ``next_step`` retry.

    Of the response's body only its size is recorded (``response_bytes``, ``None`` without a
    response; ``response_truncated`` when the cap ended it), and its first bytes
    (``response_prefix``) only when the sender kept them, as text no longer in UTF-8 than the
    bytes kept: a receiver cannot make a record larger than that. An attempt of a delivery an
    operator sent again (``Job.replayed``) is recorded ``trigger`` ``manual``; the others leave
    it out (``scheduled``). An attempt not skipped names the ``endpoint`` it was made (or
    refused) to: scheme, host and port, the key the worker's limits judge it by, never the
    URL's path, query or credentials; so that a worker starting later takes its answer for that
    endpoint's, whatever the webhook's URL is by then (:mod:`bridge.delivery.recent_answers`)."""
    record: dict[str, Any] = {
        "delivery_id": job.delivery_id,
        "webhook_id": job.webhook.id,
        "event_id": job.event.id,
        "event_type": job.event.type,
        "event_at": job.event.timestamp,
        "attempt": job.attempt,
        "outcome": outcome,
        "status": result.status,
        "error": result.error,
        "duration_seconds": round(result.duration, 6),
        "at": result.at,
        "next": next_step,
        "response_bytes": result.response_bytes,
    }
    _made_for(record, job.webhook.created_at, job.replayed, job.recovery_id)
    if outcome != "skipped":
        try:
            record["endpoint"] = endpoint_of(job.webhook.url)
        except InvalidUrl:  # (no request is made to one: recorded skipped)
            pass
    if next_at is not None:
        record["next_at"] = format_epoch(next_at)
    if result.response_truncated:
        record["response_truncated"] = True
    if result.response_prefix is not None:
        record["response_prefix"] = result.response_text
    return record


def _made_for(
    record: dict[str, Any], created_at: str | None, replayed: bool, recovery_id: str | None
) -> None:
    """Add what a record says of whom and why it was made: the ``created_at`` of the webhook
    it was made for, ``trigger`` ``manual`` for an operator's sending, its ``recovery_id``."""
    if created_at is not None:
        record["webhook_created_at"] = created_at
    if replayed:
        record["trigger"] = "manual"
    if recovery_id is not None:
        record["recovery_id"] = recovery_id


def dropped_record(pending: PendingRetry, reason: str, at: float) -> dict[str, Any]:
    """The record of a retry dropped when it fell due (no request made), ``skipped`` with
    ``reason`` as its error (``webhook_deleted``, ``webhook_inactive``, ``not_receiving``) and
    nothing next: the delivery's last word, so that it no longer shows ``retrying`` with a
    due time long past (until 2026-12-06 nothing was recorded)."""
    event = pending.event
    record: dict[str, Any] = {
        "delivery_id": pending.delivery_id,
        "webhook_id": pending.webhook_id,
        "event_id": event.id,
        "event_type": event.type,
        "event_at": event.timestamp,
        "attempt": pending.attempt,
        "outcome": "skipped",
        "status": None,
        "error": reason,
        "duration_seconds": 0.0,
        "at": format_epoch(at),
        "next": None,
        "response_bytes": None,
    }
    _made_for(record, pending.webhook_created_at, pending.replayed, pending.recovery_id)
    return record
