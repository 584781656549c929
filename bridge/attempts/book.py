"""Every webhook's delivery log and stats, fed attempt records in any order, each counted once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from bridge.attempts.log import AttemptLog, WebhookLog
from bridge.attempts.record import Attempt
from bridge.attempts.stats import WebhookStats
from bridge.contract.schemas import EVENT_TYPES

__all__ = ["Activity", "ActivityBook", "RELEASE_CHUNK", "SWEEP_CHUNK", "empty_activity"]

#: Attempts (and delivery index entries) :meth:`ActivityBook.release` frees a call: a few
#: milliseconds.
RELEASE_CHUNK = 2000
#: Webhooks a step of a sweep goes through (a few milliseconds at most, in either store).
SWEEP_CHUNK = 256

#: Each event type's one text, shared by the attempts of that type (a dict of the known types:
#: bounded, whatever the records say).
_EVENT_TYPES = {event_type: event_type for event_type in EVENT_TYPES}


@dataclass
class Activity:
    """One webhook's log and stats."""

    log: AttemptLog
    stats: WebhookStats = field(default_factory=WebhookStats)
    #: The webhook's id as the book holds it (empty for an activity of no webhook).
    webhook_id: str = ""


def empty_activity(max_attempts: int, max_age: float) -> Activity:
    """The activity of a webhook with no attempt kept."""
    return Activity(WebhookLog(max_attempts=max_attempts, max_age=max_age))


class ActivityBook:
    """Log and stats per webhook id. An attempt read twice (a consumer that reads a record
    again after a restart) is kept and counted once: the log recognises it, and only what the
    log took is counted. The log keeps at least as long as the longest stats window, so a
    duplicate is recognised for as long as it could be counted."""

    def __init__(self, *, max_attempts: int = 1000, max_age: float = 7 * 86400.0) -> None:
        self._max_attempts = max_attempts
        self._max_age = max_age
        self._activity: dict[str, Activity] = {}
        #: The webhooks keeping an attempt of each delivery (one: a delivery id is made from
        #: its webhook's id), so that finding a delivery does not walk every webhook's log. A
        #: dict as an ordered set: records naming one delivery id with thousands of webhooks
        #: made each add and removal a walk of a list (until 2026-12-05: 40,000 took 11.6 s).
        #: The one webhook's id alone, as it nearly always is: a dict per delivery was a fifth
        #: of the memory an attempt took.
        self._by_delivery: dict[str, str | dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._activity)

    def add(self, attempt: Attempt, now: float) -> bool:
        """Keep and count ``attempt``; ``False`` when it was already there or too old."""
        webhook_id = attempt.webhook_id
        activity = self._activity.get(webhook_id)
        if activity is None:
            activity = Activity(
                WebhookLog(
                    max_attempts=self._max_attempts,
                    max_age=self._max_age,
                    on_forget=lambda delivery_id: self._unindex(delivery_id, webhook_id),
                ),
                webhook_id=webhook_id,
            )
            self._activity[webhook_id] = activity
        # The texts most attempts repeat, shared rather than held once per kept attempt (a
        # sixth of what one took): its webhook's id and created_at as the book holds them, its
        # event type as the known types are. (Not ``sys.intern``: Python 3.12 before 3.12.6
        # never frees an interned text, and the records say what the texts are.)
        attempt.webhook_id = webhook_id = activity.webhook_id
        attempt.event_type = _EVENT_TYPES.get(attempt.event_type, attempt.event_type)
        created_at = activity.stats.webhook_created_at
        if created_at is not None and attempt.webhook_created_at == created_at:
            attempt.webhook_created_at = created_at
        # Not shown, and a text of its own in each record: for a starting worker's recent
        # answers alone (bridge.delivery.recent_answers).
        attempt.endpoint = None
        assert isinstance(activity.log, WebhookLog)  # the book makes only these
        if not activity.log.add(attempt, now):
            if activity.log.older_than_kept:
                # Counted though not kept: an attempt recorded late (a 30 s timeout) after a
                # full log of newer ones was in no stat until 2026-12-06. (A copy of it read
                # after that many is counted again: a copy comes at once, if at all.)
                activity.stats.add(attempt, now)
            return False
        by_delivery = self._by_delivery
        holders = by_delivery.get(attempt.delivery_id)
        if holders is None:
            by_delivery[attempt.delivery_id] = webhook_id
        elif type(holders) is str:
            if holders != webhook_id:
                by_delivery[attempt.delivery_id] = {holders: None, webhook_id: None}
        else:
            assert isinstance(holders, dict)
            holders[webhook_id] = None
        activity.stats.add(attempt, now)
        return True

    def _unindex(self, delivery_id: str, webhook_id: str) -> None:
        holders = self._by_delivery.get(delivery_id)
        if holders is None:
            return
        if type(holders) is str:
            if holders == webhook_id:
                del self._by_delivery[delivery_id]
        elif webhook_id in holders:
            assert isinstance(holders, dict)
            del holders[webhook_id]
            if not holders:
                del self._by_delivery[delivery_id]

    def delivery(self, delivery_id: str) -> list[Attempt]:
        """Every kept attempt of one delivery (of any webhook)."""
        holders = self._by_delivery.get(delivery_id, ())
        found: list[Attempt] = []
        for webhook_id in (holders,) if type(holders) is str else holders:
            found.extend(self._activity[webhook_id].log.delivery(delivery_id))
        return found

    def get(self, webhook_id: str) -> Activity | None:
        return self._activity.get(webhook_id)

    def activities(self) -> list[Activity]:
        """The log and stats of every webhook held."""
        return list(self._activity.values())

    def empty(self) -> Activity:
        """The activity of a webhook with no attempt kept (not added to the book)."""
        return empty_activity(self._max_attempts, self._max_age)

    def sweep_steps(self, now: float, chunk: int = SWEEP_CHUNK) -> Iterator[None]:
        """Expire old attempts and stats buckets and forget the webhooks left with neither,
        ``chunk`` webhooks a step: those held when it started, as they are at their turn
        (attempts added between steps are fine)."""
        webhook_ids = list(self._activity)
        for start in range(0, len(webhook_ids), chunk):
            for webhook_id in webhook_ids[start : start + chunk]:
                activity = self._activity.get(webhook_id)
                if activity is None:
                    continue
                assert isinstance(activity.log, WebhookLog)
                activity.log.expire(now)
                activity.stats.expire(now)
                if not len(activity.log) and not activity.stats.buckets:
                    # Nothing left to show or to recognise: as the RocksDB store does.
                    self.forget(webhook_id)
            yield

    def release(self, attempts: int) -> bool:
        """Free some of a book no longer used (a revoked partition's): webhooks until about
        ``attempts`` attempts are freed, and as many delivery index entries; whether anything
        is left to free."""
        freed = 0
        while self._activity and freed < attempts:
            _, activity = self._activity.popitem()
            freed += len(activity.log) + 1
        for _ in range(min(attempts, len(self._by_delivery))):
            self._by_delivery.popitem()
        return bool(self._activity or self._by_delivery)

    def forget(self, webhook_id: str) -> None:
        """Drop a deleted webhook's log and stats."""
        activity = self._activity.pop(webhook_id, None)
        if activity is not None:
            assert isinstance(activity.log, WebhookLog)
            for delivery_id in activity.log.delivery_ids():
                self._unindex(delivery_id, webhook_id)
