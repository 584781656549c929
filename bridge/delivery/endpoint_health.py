"""Endpoint health: how long a webhook's endpoint has failed, and when to disable it (pure)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from bridge.contract.events import parse_time
from bridge.memo import Sweeps
from bridge.subscriptions.webhook import before_created, not_after

__all__ = [
    "HealthChange",
    "EndpointHealth",
    "APPLIED_GRACE",
    "FAILURE_GAP",
    "FAILURE_REFRESH",
]

#: Seconds without a failure after which the next one begins a new failing period: an endpoint
#: is disabled for failing *continuously* (``disable_after``), and one that failed once, then
#: was sent nothing for days, has not (until 2026-12-07 its next failure disabled it at once).
#: Longer than the retry schedule's longest wait (10 h), so that an event retried for a day
#: keeps its endpoint's period going.
FAILURE_GAP = 86400.0
#: Seconds after which a failure is published again (``last_failure_at``) in a failing period,
#: so that every worker can tell a gap: at most one status record an hour of a failing webhook.
FAILURE_REFRESH = 3600.0


@dataclass(frozen=True)
class HealthChange:
    """A status record to publish (and, for ``disabled``, a webhook to disable)."""

    webhook_id: str
    state: str
    failing_since: float | None
    reason: str | None = None
    #: For ``disabled``: the webhook the deciding delivery was made for (its ``created_at``)
    #: and its version (``updated_at``); its owner turns off that version only
    #: (:mod:`bridge.worker.disables`).
    webhook_created_at: str | None = None
    webhook_updated_at: str | None = None
    #: For ``disabled``: when it was applied (the webhook turned off); ``None`` until then.
    applied_at: str | None = None
    #: For ``failing``: Unix time of the period's latest failure published (within
    #: :data:`FAILURE_REFRESH` of the latest one).
    last_failure_at: float | None = None

    def to_record(self, updated_at: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "webhook_id": self.webhook_id,
            "state": self.state,
            "failing_since": self.failing_since,
            "reason": self.reason,
            "updated_at": updated_at,
        }
        if self.webhook_created_at is not None:
            record["webhook_created_at"] = self.webhook_created_at
        if self.webhook_updated_at is not None:
            record["webhook_updated_at"] = self.webhook_updated_at
        if self.last_failure_at is not None:
            record["last_failure_at"] = self.last_failure_at
        if self.state == "disabled":
            # None until applied: the webhook's owner (without owners, the deciding worker)
            # turns it off, then marks the record applied (:mod:`bridge.worker.disables`), so
            # that it is never applied twice.
            record["applied_at"] = self.applied_at
        return record


class EndpointHealth:
    """Decides status transitions from attempt outcomes.

    ``published`` looks up the last status record of a webhook (the status table, shared by all
    workers). What this worker decided itself is remembered until the table changes for that
    webhook (its own record arriving, or another worker's; not the mark of the disable it
    followed), so that concurrent failures do not publish the same transition many times, and a
    recovery published elsewhere ends the failing period here too.

    An applied disable (its webhook turned off) is read by the version of the webhook a
    delivery was made for (``updated_at``): the version it names was in flight as the webhook
    was turned off, and changes nothing; another is the webhook turned on again, whose health
    starts afresh; so is a delivery made :data:`APPLIED_GRACE` after the disable was applied
    (of a webhook without ``updated_at``, or turned on again at the very version).

    A failing period that began before the webhook was created (``created_at``, its record's)
    is another webhook's: the id was used again after a delete, and the new webhook starts
    healthy rather than inheriting how long the deleted one failed (and being disabled at its
    first failure).
    """

    def __init__(
        self,
        disable_after: float,
        published: Callable[[str], Mapping[str, Any] | None],
    ) -> None:
        self._disable_after = disable_after
        self._published = published
        #: This worker's last decision per webhook, with the table's record when it was made;
        #: those the table has moved on from are swept out as the map grows (until 2026-12-06
        #: the decisions of deleted webhooks were kept for ever).
        self._local: dict[str, tuple[HealthChange, Mapping[str, Any] | None]] = {}
        self._sweeps = Sweeps()

    def _current(
        self,
        webhook_id: str,
        created_at: str | None,
        updated_at: str | None,
        made_at: float | None = None,
        now: float | None = None,
    ) -> _Period:
        period = self._recorded(webhook_id, updated_at, made_at)
        if now is not None:
            # A webhook stamped as made or changed after now (a writer's clock, or a record of
            # another service stamped 2999) tells nothing of when its failing began: until
            # 2026-12-07 every period began "before" it, and it was never disabled.
            created_at, updated_at = not_after(created_at, now), not_after(updated_at, now)
        if before_created(period.since, created_at):
            return _HEALTHY
        if period.state == "failing" and before_created(period.since, updated_at):
            # Changed since its failing period began (its URL, or turned off and on again):
            # what failed was the webhook as it was (until 2026-12-07 a webhook turned on
            # again after weeks was disabled at its first failure).
            return _HEALTHY
        return period

    def _recorded(
        self, webhook_id: str, updated_at: str | None, made_at: float | None = None
    ) -> _Period:
        record = self._published(webhook_id)
        local = self._local.get(webhook_id)
        if local is not None:
            change, seen = local
            if _shows(record, seen):
                return _Period(change.state, change.failing_since, change.last_failure_at)
            del self._local[webhook_id]
        if record is None:
            return _HEALTHY
        state = str(record.get("state", "healthy"))
        if state == "disabled" and _turned_on_since(record, updated_at, made_at):
            # Applied (the webhook was turned off), and this delivery is of a webhook turned
            # on again since, whose health starts afresh, as at :meth:`on_webhook_enabled` (a
            # worker that read the webhook on before the disable came, or started since, never
            # disabled it again, until 2026-12-06). A delivery in flight as it was turned off
            # changes nothing.
            return _Period("failing", None, None)
        return _Period(
            state, _seconds(record.get("failing_since")), _seconds(record.get("last_failure_at"))
        )

    def _change(self, change: HealthChange) -> HealthChange:
        seen = self._published(change.webhook_id)
        if change.webhook_id not in self._local:
            self._sweeps.make_room(self._local, self._moved_on)
        self._local[change.webhook_id] = (change, dict(seen) if seen is not None else None)
        return change

    def _moved_on(
        self, webhook_id: str, local: tuple[HealthChange, Mapping[str, Any] | None]
    ) -> bool:
        # A decision whose table record changed since is read as gone (:meth:`_recorded`).
        return not _shows(self._published(webhook_id), local[1])

    def forget(self, webhook_id: str) -> None:
        """The webhook was deleted: its decisions go (a status published and tombstoned since
        reads as the table before the decision)."""
        self._local.pop(webhook_id, None)

    def __len__(self) -> int:
        """Decisions of this worker that the table does not show yet (or did not, when last
        swept)."""
        return len(self._local)

    def on_success(
        self,
        webhook_id: str,
        created_at: str | None = None,
        updated_at: str | None = None,
        now: float | None = None,
    ) -> HealthChange | None:
        """``created_at``, ``updated_at``: the webhook's the delivery was made for (see the
        class); the same for the methods below. ``now``: Unix time (times of the webhook
        past it are set aside, as at a failure)."""
        state = self._current(webhook_id, created_at, updated_at, now=now).state
        record = self._published(webhook_id)
        published_state = record.get("state", "healthy") if record is not None else "healthy"
        if state == "healthy" and published_state == "healthy":
            return None
        if state == "healthy" and webhook_id in self._local:
            # Already decided by this worker; the status table has not caught up yet.
            return None
        return self._change(HealthChange(webhook_id, "healthy", None))

    def on_failure(
        self,
        webhook_id: str,
        now: float,
        created_at: str | None = None,
        updated_at: str | None = None,
        made_at: float | None = None,
        began: float | None = None,
    ) -> HealthChange | None:
        """A failure known at ``now`` (Unix time), of an attempt that ``began`` then (its
        ``at``; ``now`` when not given): ``failing`` at the first of a period (or one a day,
        :data:`FAILURE_GAP`, after the one before), ``disabled`` ``disable_after`` into it,
        ``failing`` again an hour (:data:`FAILURE_REFRESH`) after the period's latest failure
        published; otherwise nothing. A period is failing since its first attempt began, as
        the delivery log says (until 2026-12-07 since that attempt ended: up to the HTTP
        timeout after its own ``at``)."""
        state, since, last = self._current(webhook_id, created_at, updated_at, made_at, now)
        if state == "disabled":
            return None
        at = now if began is None else min(began, now)
        latest = last if last is not None else since
        if state != "failing" or since is None or latest is None or now - latest > FAILURE_GAP:
            return self._change(HealthChange(webhook_id, "failing", at, last_failure_at=at))
        if now - since >= self._disable_after:
            return self._change(HealthChange(webhook_id, "disabled", since, "failing"))
        if now - latest >= FAILURE_REFRESH:
            return self._change(HealthChange(webhook_id, "failing", since, last_failure_at=at))
        return None

    def on_gone(
        self,
        webhook_id: str,
        now: float,
        created_at: str | None = None,
        updated_at: str | None = None,
        made_at: float | None = None,
        began: float | None = None,
    ) -> HealthChange | None:
        """410 Gone (known at ``now``, answering an attempt that ``began`` then): disable,
        unless this worker already did (concurrent deliveries)."""
        state, since, _ = self._current(webhook_id, created_at, updated_at, made_at, now)
        if state == "disabled":
            return None
        at = now if began is None else min(began, now)
        return self._change(HealthChange(webhook_id, "disabled", since or at, "gone"))

    def on_webhook_enabled(self, webhook_id: str, updated_at: str | None = None) -> None:
        """An active subscription record (of version ``updated_at``) after a disable starts the
        webhook's health afresh (the stale status record is replaced at the next outcome)."""
        if self._recorded(webhook_id, updated_at).state == "disabled":
            self._change(HealthChange(webhook_id, "failing", None))


class _Period(NamedTuple):
    """A webhook's health as a worker reads it: its state, and for ``failing`` when the period
    began and its latest failure published (each ``None`` when not known)."""

    state: str
    since: float | None
    last: float | None


_HEALTHY = _Period("healthy", None, None)


def _seconds(value: object) -> float | None:
    """A Unix time read from a status record (``None`` for anything else)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _shows(record: Mapping[str, Any] | None, seen: Mapping[str, Any] | None) -> bool:
    """Whether the table's ``record`` is still the one a decision was made against (``seen``),
    or the same disable marked applied since (a worker that saw the webhook turned on again
    before the mark kept its fresh start)."""
    if record == seen:
        return True
    if record is None or seen is None or not isinstance(record.get("applied_at"), str):
        return False
    return _unmarked(record) == _unmarked(seen)


def _unmarked(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "applied_at"}


#: Seconds after a disable was applied within which a delivery made then is taken for one in
#: flight as the webhook was turned off (made from a table that had not shown it yet, or on a
#: clock behind); one made later of the version the disable names, or naming none, is of the
#: webhook turned on again (a producer's record as it was).
APPLIED_GRACE = 120.0


def _turned_on_since(
    record: Mapping[str, Any], updated_at: str | None, made_at: float | None
) -> bool:
    """Whether a delivery of the webhook at version ``updated_at``, made (matched, or its retry
    read) at ``made_at``, is of one turned on again since the applied disable ``record``: of
    another version than the one it names, or made :data:`APPLIED_GRACE` after it was applied
    (not the attempt's end: a delivery may wait minutes for its endpoint's places)."""
    applied_at = record.get("applied_at")
    if not isinstance(applied_at, str):
        return False  # not applied: the webhook is being turned off
    made_for = record.get("webhook_updated_at")
    if isinstance(made_for, str) and made_for != updated_at:
        return True
    if made_at is None:
        return False
    try:
        return made_at - parse_time(applied_at).timestamp() >= APPLIED_GRACE
    except ValueError:
        return False
