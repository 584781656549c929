"""Every webhook's delivery log and stats, fed attempt records in any order, each counted once."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.attempts.log import AttemptLog, WebhookLog
from bridge.attempts.record import Attempt
from bridge.attempts.stats import WebhookStats

__all__ = ["Activity", "ActivityBook"]


@dataclass
class Activity:
    """One webhook's log and stats."""

    log: AttemptLog
    stats: WebhookStats = field(default_factory=WebhookStats)


class ActivityBook:
    """Log and stats per webhook id. An attempt read twice (a consumer that reads a record
    again after a restart) is kept and counted once: the log recognises it, and only what the
    log took is counted. The log keeps at least as long as the longest stats window, so a
    duplicate is recognised for as long as it could be counted."""

    def __init__(self, *, max_attempts: int = 1000, max_age: float = 7 * 86400.0) -> None:
        self._max_attempts = max_attempts
        self._max_age = max_age
        self._activity: dict[str, Activity] = {}

    def __len__(self) -> int:
        return len(self._activity)

    def add(self, attempt: Attempt, now: float) -> bool:
        """Keep and count ``attempt``; ``False`` when it was already there or too old."""
        activity = self._activity.get(attempt.webhook_id)
        if activity is None:
            activity = Activity(WebhookLog(max_attempts=self._max_attempts, max_age=self._max_age))
            self._activity[attempt.webhook_id] = activity
        assert isinstance(activity.log, WebhookLog)  # the book makes only these
        if not activity.log.add(attempt, now):
            return False
        activity.stats.add(attempt, now)
        return True

    def get(self, webhook_id: str) -> Activity | None:
        return self._activity.get(webhook_id)

    def activities(self) -> list[Activity]:
        """The log and stats of every webhook held."""
        return list(self._activity.values())

    def empty(self) -> Activity:
        """The activity of a webhook with no attempt kept (not added to the book)."""
        return Activity(WebhookLog(max_attempts=self._max_attempts, max_age=self._max_age))

    def forget(self, webhook_id: str) -> None:
        """Drop a deleted webhook's log and stats."""
        self._activity.pop(webhook_id, None)
