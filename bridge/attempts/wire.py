"""One webhook's log and stats as JSON, sent by the worker that holds them to the one asked."""

from __future__ import annotations

from typing import Any

from bridge.attempts.book import Activity
from bridge.attempts.log import WebhookLog
from bridge.attempts.record import Attempt
from bridge.attempts.stats import WebhookStats
from bridge.errors import InvalidRecord

__all__ = ["activity_to_dict", "activity_from_dict", "attempts_from_list"]


def activity_to_dict(activity: Activity) -> dict[str, Any]:
    """Every kept attempt (oldest first) and the stats' buckets of ``activity``."""
    return {
        "attempts": [a.as_dict() for a in activity.log.attempts()],
        "stats": activity.stats.to_dict(),
    }


def attempts_from_list(data: Any) -> list[Attempt]:
    """The attempts of a list of :meth:`~bridge.attempts.record.Attempt.as_dict`;
    ``ValueError`` for anything else."""
    if not isinstance(data, list):
        raise ValueError("not a list of attempts")
    try:
        return [Attempt.of(item) for item in data if isinstance(item, dict)]
    except InvalidRecord as exc:
        raise ValueError(f"not an attempt: {exc.detail}") from None


def activity_from_dict(data: Any, *, max_attempts: int, max_age: float, now: float) -> Activity:
    """The :class:`Activity` :func:`activity_to_dict` gave (with the same limits);
    ``ValueError`` for anything else. The stats are the holder's, not recounted from the
    log: they also count attempts the log no longer keeps."""
    if not isinstance(data, dict) or not isinstance(data.get("stats"), dict):
        raise ValueError("not activity data")
    log = WebhookLog(max_attempts=max_attempts, max_age=max_age)
    for attempt in attempts_from_list(data.get("attempts")):
        log.add(attempt, now)
    return Activity(log, WebhookStats.from_dict(data["stats"]))
