"""What the delivery-log, stats, recovery and dead-letter routes mean, over their sources.

Every operation first finds the webhook it concerns in the :class:`WebhookRepository` and checks
the token's site or account restriction against it (``404`` for an unknown webhook, ``403``
naming ``site_id`` or ``user_id`` outside the restriction), then reads an
:class:`~bridge.api.activity.ActivitySource`, starts an operation in
:class:`~bridge.api.recoveries.Recoveries`, or reads or replays a :class:`DeadLetterSource`.

A restricted token sees one delivery only while its webhook exists and is within the
restriction; it sees the dead letters of its own webhooks only (those of deleted webhooks and of
events no webhook was found for are for unrestricted tokens), and replays one webhook's at a
time (``webhook_id`` required).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bridge.admin.dead_letters import DeadLetterFilter, ReplayReport, of_webhook_created
from bridge.admin.recovery import DEFAULT_RATE, Operation, RecoveryRequest, whole_milliseconds
from bridge.api.activity import ActivitySource
from bridge.api.auth import Principal
from bridge.api.idempotency import KeyedChange, reused
from bridge.api.problems import FieldError, Problem
from bridge.api.recoveries import Recoveries
from bridge.api.repository import WebhookRepository
from bridge.attempts.log import AttemptLog, LogQuery
from bridge.attempts.log import Page as LogPage
from bridge.attempts.record import Attempt
from bridge.attempts.stats import WINDOWS
from bridge.contract import jsoncanon
from bridge.contract.events import format_timestamp, parse_time
from bridge.cursors import decode_cursor, encode_cursor
from bridge.errors import InvalidRecord
from bridge.subscriptions.serial import KeyedLocks
from bridge.subscriptions.webhook import Webhook, before_created, created_seconds, not_after

__all__ = [
    "DEFAULT_REDELIVER_LOOKBACK",
    "REDELIVER_MARGIN",
    "DeadLetterSource",
    "DeadLetterPage",
    "DeadLetterPosition",
    "OldDeadLetterPosition",
    "RecoveryPage",
    "Started",
    "ControlService",
    "delivery_state",
    "encode_dead_letter_cursor",
    "decode_dead_letter_cursor",
    "encode_recovery_cursor",
    "decode_recovery_cursor",
    "MAX_REPLAY_CURSOR",
    "encode_replay_cursor",
    "decode_replay_cursor",
    "redelivery_since",
    "require_read_to_find",
    "sees_recovery",
]

#: How long before its first attempt a delivery's event is looked for in the source topics
#: when it is redelivered (seconds): the delivery log's longest retention.
DEFAULT_REDELIVER_LOOKBACK = 7 * 86400.0


def require_read_to_find(principal: Principal) -> None:
    """A redelivery not naming its webhook reads the delivery logs to find it: ``403`` for a
    token without ``read``, in every deployment (with several workers it was a ``503`` to be
    tried again for ever until 2026-12-07, their logs refusing it; with one, it went)."""
    if "read" not in principal.scopes:
        raise Problem(
            "forbidden",
            "finding a delivery's webhook reads the delivery logs, which needs the 'read' "
            "scope: name the webhook (?webhook_id=)",
        )


@dataclass(frozen=True, slots=True)
class Started:
    """A recovery or redelivery asked for."""

    operation: Operation
    #: ``True`` when the request's ``Idempotency-Key`` had started it: nothing new started.
    replayed: bool = False


class DeadLetterSource(Protocol):
    """Dead letters to list and replay (as :mod:`bridge.admin.dead_letters` does on Kafka)."""

    def read(
        self,
        where: DeadLetterFilter,
        *,
        needed_until: Callable[[], datetime | None] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The dead-letter records ``where`` selects, in any order, as they are read (the
        caller closes it when it stops early); those with a ``dead_lettered_at`` after the
        time ``needed_until()`` gives while they are read (when it gives one) may be left
        unread (:func:`bridge.admin.dead_letters.stream_dead_letters`)."""
        ...

    async def replay(
        self,
        where: DeadLetterFilter,
        *,
        webhooks: Callable[[str], Awaitable[Webhook | None]],
        resume: Mapping[int, int] | None = None,
        deadline: float | None = None,
    ) -> ReplayReport:
        """Re-enqueue the dead letters ``where`` selects, with their delivery ids, judged by
        the current webhooks ``webhooks`` gives; from ``resume`` on, stopping at ``deadline``
        (:func:`bridge.admin.dead_letters.replay_dead_letters`)."""
        ...


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """Dead letters, oldest first, and the cursor of the next page."""

    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class RecoveryPage:
    """Recoveries of a webhook, newest first, and the cursor of the next page."""

    items: list[Operation]
    next_cursor: str | None


def delivery_state(attempts: list[Attempt]) -> str:
    """``delivered``, ``retrying``, ``dead_lettered`` or ``dropped``, from the last attempt.
    One that disabled its webhook (410, failing too long) was dead-lettered too (until
    2026-12-06 shown ``dropped``); ``dropped``: a first attempt or a retry not sent (its
    webhook deleted, turned off, or no longer getting the event), and nothing follows."""
    last = attempts[-1]
    if last.outcome == "success":
        return "delivered"
    return _STATES.get(last.next or "", "dropped")


_STATES = {"retry": "retrying", "dead_letter": "dead_lettered", "disabled": "dead_lettered"}


#: Where a dead letter sorts in a listing: its ``dead_lettered_at``, its source record's topic,
#: partition and offset, then its webhook id and delivery id. The letters of one event that
#: several webhooks get, dead-lettered at once (``payload_too_large``, ``destination_forbidden``,
#: ``invalid_url``), share all but the last two: until 2026-12-07 a page ending on one of them
#: lost the others.
DeadLetterPosition = tuple[str, str, int, int, str, str]

#: The position in a cursor of a listing before 2026-12-07 (without the ids): still taken, as
#: then, its letters after that source record's.
OldDeadLetterPosition = tuple[str, str, int, int]


def _dead_letter_position(record: dict[str, Any]) -> DeadLetterPosition:
    """Where ``record`` sorts; what it lacks (or holds of another type: ``true`` is no
    partition, though Python counts it an integer) sorts first, as ``-1`` or ``""``."""
    source = record.get("source")
    source = source if isinstance(source, dict) else {}
    partition, offset = source.get("partition"), source.get("offset")
    webhook_id, delivery_id = record.get("webhook_id"), record.get("delivery_id")
    return (
        str(record.get("dead_lettered_at", "")),
        str(source.get("topic", "")),
        partition if type(partition) is int else -1,
        offset if type(offset) is int else -1,
        webhook_id if isinstance(webhook_id, str) else "",
        delivery_id if isinstance(delivery_id, str) else "",
    )


def _after(
    position: DeadLetterPosition, cursor: DeadLetterPosition | OldDeadLetterPosition
) -> bool:
    """Whether a letter at ``position`` comes after ``cursor`` (an old cursor's: after its
    source record's letters)."""
    return position[: len(cursor)] > cursor


def _restricted_since(principal: Principal, webhook: Webhook) -> float | None:
    """For a token restricted to a site or account, the time ``webhook`` was created (seconds;
    what came before was made for a deleted webhook of the same id); else ``None``."""
    return webhook.created_seconds if principal.restricted else None


def sees_recovery(principal: Principal, webhook: Webhook | None, started_at: float) -> bool:
    """Whether ``principal`` may see (and cancel) a recovery begun at ``started_at`` (seconds)
    of ``webhook``, the webhook of its id as it is now (``None``: deleted): any, for an
    unrestricted token; for a restricted one, one of a webhook within the restriction begun
    since that webhook was created. Judged by the webhook as it is now (moved to another site,
    deleted, its id taken again), not as it was when the recovery began."""
    if not principal.restricted:
        return True
    if webhook is None or not principal.allows(webhook.site_id, webhook.user_id):
        return False
    created = _restricted_since(principal, webhook)
    return created is None or started_at >= created


def _named_webhook(principal: Principal, webhook: Webhook | None) -> Webhook:
    """The webhook a request named, as ``principal`` may see it: ``404`` when there is none,
    or it is outside the restriction."""
    if webhook is None:
        raise Problem("not_found", "no such webhook")
    return principal.see(webhook)


def _decode_cursor(cursor: str, shape: tuple[type, ...]) -> list[Any]:
    """:func:`bridge.cursors.decode_cursor`, ``400`` naming ``cursor`` for what it refuses."""
    try:
        return decode_cursor(cursor, shape)
    except ValueError:
        raise _not_a_cursor() from None


def _not_a_cursor(location: str = "query") -> Problem:
    return Problem.invalid(
        FieldError("cursor", "invalid_cursor", "not a cursor of this list", location)
    )


def encode_dead_letter_cursor(position: DeadLetterPosition) -> str:
    """An opaque cursor for the dead letters after ``position`` (:data:`DeadLetterPosition`:
    the letter's place, which never changes)."""
    return encode_cursor(list(position))


def decode_dead_letter_cursor(cursor: str) -> DeadLetterPosition | OldDeadLetterPosition:
    """The position in a cursor of :func:`encode_dead_letter_cursor` (or of one made before
    2026-12-07: :data:`OldDeadLetterPosition`); ``400`` naming ``cursor`` for anything else."""
    try:
        value = decode_cursor(cursor, (str, str, int, int, str, str))
    except ValueError:
        old = _decode_cursor(cursor, (str, str, int, int))
        return (old[0], old[1], old[2], old[3])
    return (value[0], value[1], value[2], value[3], value[4], value[5])


#: Partitions a replay's cursor names at most (the dead-letter topic is declared with 3), and
#: the longest such cursor: characters a request body holds (a cursor is ASCII, one byte each of
#: its 16 KiB).
_MAX_CURSOR_PARTITIONS = 150
MAX_REPLAY_CURSOR = 5_000


def _replay_filter(where: DeadLetterFilter) -> str:
    """What a replay's cursor is bound to: the filter its request gave."""
    asked = [
        where.webhook_id,
        where.delivery_id,
        None if where.since is None else where.since.isoformat(),
        None if where.until is None else where.until.isoformat(),
    ]
    return hashlib.sha256(jsoncanon.dumps(asked)).hexdigest()[:32]


def encode_replay_cursor(report: ReplayReport, where: DeadLetterFilter) -> str:
    """The cursor of a dead-letter replay that stopped before its end (``report``), for a
    replay of the same filter ``where`` to go on from: its ``until`` (when the first began),
    and the position after the last letter it took in each partition."""
    assert report.until is not None
    flat = [
        n
        for partition in sorted(report.positions)
        for n in (partition, report.positions[partition])
    ]
    return encode_cursor([report.until.isoformat(), _replay_filter(where), flat])


def decode_replay_cursor(cursor: str, where: DeadLetterFilter) -> tuple[datetime, dict[int, int]]:
    """The ``until`` and positions of a cursor of :func:`encode_replay_cursor` given with the
    filter ``where``; ``400`` naming ``cursor`` for anything else, and for a cursor of a
    replay of another filter."""
    try:
        if len(cursor) > MAX_REPLAY_CURSOR:
            raise ValueError(cursor)
        until_text, bound, flat = decode_cursor(cursor, (str, str, list))
    except ValueError:
        raise _not_a_cursor("body") from None
    if bound != _replay_filter(where):
        raise Problem.invalid(
            FieldError(
                "cursor",
                "invalid_cursor",
                "a cursor of a replay of other letters: give the filter it was given",
                "body",
            )
        )
    try:
        until = datetime.fromisoformat(until_text)
    except ValueError:
        raise _not_a_cursor("body") from None
    if (
        until.tzinfo is None
        or len(flat) % 2
        or len(flat) > 2 * _MAX_CURSOR_PARTITIONS
        or not all(type(n) is int and 0 <= n < 2**63 for n in flat)
    ):
        raise _not_a_cursor("body")
    return until, dict(zip(flat[::2], flat[1::2], strict=True))


def encode_recovery_cursor(operation: Operation) -> str:
    """An opaque cursor for the recoveries started before ``operation`` (newest first)."""
    return encode_cursor([operation.started_at, operation.id])


def decode_recovery_cursor(cursor: str) -> tuple[float, str]:
    """The place in a cursor of :func:`encode_recovery_cursor`; ``400`` naming ``cursor``
    for anything else."""
    value = _decode_cursor(cursor, (float, str))
    return (value[0], value[1])


#: Seconds before an event's own timestamp that its record may have been published at (clocks
#: apart, stepped back): a redelivery reads from there.
REDELIVER_MARGIN = 300.0


def redelivery_since(first: Attempt, lookback: float) -> float:
    """Where a redelivery of ``first``'s delivery reads the events from (seconds since the
    epoch): its record was published before ``first`` was made, and after the event happened
    (``event_at``, give or take :data:`REDELIVER_MARGIN`), so a few minutes of events are read,
    not the delivery log's whole age (``lookback``: 7 days of events by default), which is
    what attempts recorded without ``event_at`` still cost. Never later than the margin before
    ``first``: an event stamped ahead of the attempt (a producer's clock ahead, a timestamp in
    the future) was still published before it (until 2026-12-06 such a window ended before it
    began, and the redelivery was a ``500``)."""
    since = first.at_seconds - lookback
    if first.event_at is not None:
        try:
            since = max(since, parse_time(first.event_at).timestamp() - REDELIVER_MARGIN)
        except ValueError:
            pass  # not a time: the whole lookback
    return min(since, first.at_seconds - REDELIVER_MARGIN)


def _moment(seconds: float | None) -> str | None:
    return None if seconds is None else format_timestamp(datetime.fromtimestamp(seconds, UTC))


def _circuit_open_until(log: AttemptLog, now: float, webhook: Webhook) -> str | None:
    """When the endpoint's circuit lets a probe through, while it is open: the workers' breakers
    live in their memory, but an attempt skipped because of one is in the log, with its retry
    due when the circuit lets a request through (``next_at``). A newer attempt, or a due time
    passed, means the circuit has let one through since; one made for a deleted webhook of the
    same id says nothing of this one's."""
    newest = log.page(LogQuery(), now=now, limit=1).items
    if not newest or newest[0].error != "circuit_open" or newest[0].outcome != "skipped":
        return None
    if not webhook.made_for(newest[0].at_seconds, newest[0].webhook_created_at):
        return None
    due = newest[0].next_at
    if due is None:
        return None
    try:
        due_seconds = parse_time(due).timestamp()
    except ValueError:
        return None
    return due if due_seconds > now else None


class ControlService:
    """The delivery log, stats, recovery and dead-letter operations of the API.

    ``redeliver_lookback``: how far before a delivery's first attempt its event is looked for.
    ``clock`` gives the time in seconds since the epoch.
    """

    def __init__(
        self,
        repository: WebhookRepository,
        activity: ActivitySource,
        recoveries: Recoveries,
        dead_letters: DeadLetterSource,
        *,
        redeliver_lookback: float = DEFAULT_REDELIVER_LOOKBACK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._repository = repository
        self._activity = activity
        self._recoveries = recoveries
        self._dead_letters = dead_letters
        self._lookback = redeliver_lookback
        self._clock = clock
        #: A lock per keyed operation being started (:meth:`_start_once`).
        self._starting = KeyedLocks()

    def __repr__(self) -> str:
        return f"ControlService({self._activity!r}, {self._recoveries!r})"

    async def close(self) -> None:
        """Cancel the running recoveries (the application shuts down)."""
        await self._recoveries.close()

    # A token restricted to a site or account sees of a webhook only what was made for it since
    # it was created: an id can be used again after a delete (client-chosen ids), and what was
    # made for the deleted webhook (its log, letters, recoveries) is not the new owner's.

    async def _webhook(self, principal: Principal, webhook_id: str) -> Webhook:
        return _named_webhook(principal, await self._repository.get(webhook_id))

    # ------------------------------------------------------------------ log and stats

    async def attempts(
        self,
        principal: Principal,
        webhook_id: str,
        query: LogQuery,
        *,
        limit: int,
        cursor: str | None,
    ) -> LogPage:
        """One page of the webhook's attempts, newest first (``cursor`` already checked)."""
        webhook = await self._webhook(principal, webhook_id)
        if principal.restricted:
            # What was made for this webhook, since it was created (until 2026-12-07 a deleted
            # webhook's dropped retries, stamped after the id was taken again, were listed to
            # the site that took it; and an `until` before its creation was a 500).
            created = webhook.created_seconds
            since = query.since
            if created is not None and (since is None or since < created):
                since = created
            if since is not None and query.until is not None and query.until <= since:
                return LogPage([], None)
            query = dataclasses.replace(query, since=since, webhook_created_at=webhook.created_at)
        activity = await self._activity.activity(webhook_id)
        try:
            return activity.log.page(query, now=self._clock(), limit=limit, cursor=cursor)
        except ValueError:
            raise Problem.invalid(
                FieldError("cursor", "invalid_cursor", "not a cursor of this list", "query")
            ) from None

    async def stats(self, principal: Principal, webhook_id: str) -> dict[str, Any]:
        """The ``WebhookStats`` view: windows, last success and failure, state."""
        webhook = await self._webhook(principal, webhook_id)
        activity = await self._activity.activity(webhook_id)
        now = self._clock()
        stats = activity.stats.of_webhook(webhook.created_at)
        windows = {name: stats.window(name, now).as_dict() for name in WINDOWS}
        last_success, last_failure = stats.last_success, stats.last_failure
        return {
            "webhook_id": webhook_id,
            "windows": windows,
            "last_success_at": last_success.at if last_success else None,
            "last_failure_at": last_failure.at if last_failure else None,
            "state": await self._state(webhook, activity.log, last_success, last_failure, now),
        }

    async def _state(
        self,
        webhook: Webhook,
        log: AttemptLog,
        last_success: Attempt | None,
        last_failure: Attempt | None,
        now: float,
    ) -> dict[str, Any]:
        reason = webhook.extra.get("disabled_reason")
        state: dict[str, Any] = {
            "active": webhook.active,
            "health": "healthy",
            "failing_since": None,
            "disabled_reason": reason if isinstance(reason, str) else None,
            "circuit_open_until": (
                _circuit_open_until(log, now, webhook) if webhook.active else None
            ),
            "source": "webhook",
        }
        if not webhook.active:
            state["health"] = "disabled" if state["disabled_reason"] else "inactive"
            return state
        status = await self._activity.status(webhook.id)
        # The webhook's times as its deliveries' health reads them: one stamped past the clock
        # tells nothing (until 2026-12-07 such a webhook showed healthy while it failed).
        created_at = not_after(webhook.created_at, now)
        updated_at = not_after(webhook.updated_at, now)
        # A failing period that began before the webhook was created is a deleted one's.
        if status is not None and before_created(status.failing_since, created_at):
            status = None
        # A "disabled" status of a webhook that is active again is stale: it was turned on
        # again; so is a failing period that began before the webhook's version (changed since:
        # its URL, or turned off and on). Its deliveries' health starts afresh then
        # (:class:`~bridge.delivery.endpoint_health.EndpointHealth`), and so do its failures
        # read from the log (until 2026-12-07 those before it were read).
        changed_at: float | None = None
        if status is not None and (
            status.state == "disabled"
            or (status.state == "failing" and before_created(status.failing_since, updated_at))
        ):
            changed_at = created_seconds(updated_at) if updated_at else None
            status = None
        if status is not None and status.state in ("healthy", "failing"):
            state.update(
                health=status.state,
                failing_since=_moment(status.failing_since) if status.state == "failing" else None,
                source="status",
            )
            return state
        state["source"] = "log"
        if last_failure is None or (
            last_success is not None and last_success.at_seconds > last_failure.at_seconds
        ):
            return state
        # Failing since the oldest failure kept after the last success (and since the webhook
        # was created: the log keeps a deleted webhook's attempts under a reused id).
        since = None if last_success is None else last_success.at_seconds
        for floor in (created_seconds(created_at) if created_at else None, changed_at):
            if floor is not None and (since is None or since < floor):
                since = floor
        if since is not None and last_failure.at_seconds < since:
            return state  # no failure since it was turned on again
        query = LogQuery(outcome="failure", since=since)
        first: Attempt | None = None
        cursor: str | None = None
        while True:
            page = log.page(query, now=now, limit=1000, cursor=cursor)
            if page.items:
                first = page.items[-1]
            cursor = page.next_cursor
            if cursor is None:
                break
        state.update(health="failing", failing_since=first.at if first else last_failure.at)
        return state

    async def delivery(
        self, principal: Principal, delivery_id: str, *, webhook_id: str | None = None
    ) -> dict[str, Any]:
        """The ``Delivery`` view: the delivery's attempts in order; ``404`` without any.
        With ``webhook_id``, only that webhook's log is looked in."""
        attempts = await self._delivery_attempts(principal, delivery_id, webhook_id)
        first = attempts[0]
        return {
            "delivery_id": delivery_id,
            "webhook_id": first.webhook_id,
            "event_id": first.event_id,
            "event_type": first.event_type,
            "state": delivery_state(attempts),
            "attempts": [a.as_dict() for a in attempts],
        }

    async def _delivery_attempts(
        self, principal: Principal, delivery_id: str, webhook_id: str | None
    ) -> list[Attempt]:
        named: Webhook | None = None
        if webhook_id is not None:
            # One log, read by the worker holding it, rather than every owner asked.
            try:
                named = await self._webhook(principal, webhook_id)
            except Problem as exc:
                if exc.slug != "not_found" or not principal.restricted:
                    raise
                # Said as of a delivery not found: a worker names the webhook of a delivery it
                # found in another worker's log when it routes a redelivery there, and "no
                # such webhook" told a restricted token another site's delivery id was one
                # (until 2026-12-07).
                raise Problem("not_found", "no attempt of this delivery is kept") from None
            log = (await self._activity.activity(webhook_id)).log
            # Those past the log's age as the other paths leave them out, until a sweep
            # forgets them (until 2026-12-06 shown here only, with the state they made).
            oldest = self._clock() - log.max_age
            attempts = [a for a in log.delivery(delivery_id) if a.at_seconds >= oldest]
        else:
            attempts = await self._activity.delivery(delivery_id)
        if not attempts:
            raise Problem("not_found", "no attempt of this delivery is kept")
        webhook = named or await self._repository.get(attempts[0].webhook_id)
        if webhook is not None:
            # A delivery id is made of the event's id and the webhook's, so a webhook that took
            # a deleted one's id and was sent an event the deleted one had (a recovery) has
            # the same delivery id: its attempts are the webhook's of that id now, the others
            # are shown only when it has none (and never to a restricted token). Until
            # 2026-12-06 the two webhooks' attempts were one delivery, and a restricted token
            # was answered 404 for the new webhook's because the first was the old one's.
            own = [a for a in attempts if webhook.made_for(a.at_seconds, a.webhook_created_at)]
            if own:
                attempts = own
            elif principal.restricted:
                raise Problem("not_found", "no attempt of this delivery is kept")
        if principal.restricted:
            if webhook is None:  # whose it was is no longer known
                raise Problem("not_found", "no attempt of this delivery is kept")
            principal.see(webhook, "no attempt of this delivery is kept")
        return attempts

    # ------------------------------------------------------------------ recovery

    async def redeliver(
        self,
        principal: Principal,
        delivery_id: str,
        *,
        webhook_id: str | None = None,
        change: KeyedChange | None = None,
    ) -> Started:
        """Send one delivery again (same delivery id): a recovery of that delivery alone (found
        in ``webhook_id``'s log alone when given). With ``change`` (an ``Idempotency-Key``),
        the redelivery that key started already, if any."""
        if webhook_id is None:
            require_read_to_find(principal)
        attempts = await self._delivery_attempts(principal, delivery_id, webhook_id)
        first = attempts[0]
        webhook = await self._repository.get(first.webhook_id)
        if webhook is None:
            raise Problem("conflict", "the delivery's webhook was deleted")
        principal.see(webhook, "no attempt of this delivery is kept")
        since = datetime.fromtimestamp(redelivery_since(first, self._lookback), UTC)
        # Its record was published before the attempt, but stamped by its producer's clock,
        # which may run ahead of the worker's: the margin on this side too (until 2026-12-06 one
        # second, and a record stamped two ahead ended the redelivery failed, not retained).
        until = datetime.fromtimestamp(first.at_seconds + REDELIVER_MARGIN, UTC)
        request = RecoveryRequest(webhook, since, until, delivery_id=delivery_id)
        target = f"redeliver:{webhook.id}:{webhook.created_at}:{delivery_id}"
        return await self._start_once(request, change, target)

    async def _start_once(
        self, request: RecoveryRequest, change: KeyedChange | None, target: str
    ) -> Started:
        """The operation ``change``'s key started for ``target`` (replayed), if any; else
        ``request`` started now (``409`` when its webhook is not active). Looked up and started
        under one lock per operation id: two requests with one key at once start one (the
        second finds the first's, which is recorded, and looked for, with awaits between)."""
        locked = (
            nullcontext() if change is None else self._starting.hold(change.operation_id(target))
        )
        async with locked:
            replayed = await self._started(change, target)
            if replayed is not None:
                return replayed
            if not request.webhook.active:
                raise Problem("conflict", "the webhook is not active: nothing would be sent")
            return await self._start(request, change, target)

    async def _started(self, change: KeyedChange | None, target: str) -> Started | None:
        """The operation ``change``'s key started for ``target`` (``replayed``), if any;
        ``422`` when that key started it for another request."""
        if change is None:
            return None
        operation = await self._known(change.operation_id(target))
        if operation is None:
            return None
        if operation.request_digest != change.request:
            raise reused()
        return Started(operation, replayed=True)

    async def _start(
        self, request: RecoveryRequest, change: KeyedChange | None, target: str
    ) -> Started:
        if change is None:
            return Started(await self._recoveries.start(request))
        operation = await self._recoveries.start(
            request, operation_id=change.operation_id(target), request_digest=change.request
        )
        return Started(operation)

    async def recover(
        self,
        principal: Principal,
        webhook_id: str,
        *,
        since: datetime,
        until: datetime | None,
        rate: float | None,
        change: KeyedChange | None = None,
    ) -> Started:
        """Send the webhook again its events published in ``[since, until)`` (until now, and
        now for an ``until`` past it: the recovery reads what the topic holds when it starts;
        until 2026-12-06 it showed the later ``until`` it never read to). With ``change`` (an
        ``Idempotency-Key``), the recovery that key started already, if any."""
        webhook = await self._webhook(principal, webhook_id)
        now = datetime.fromtimestamp(self._clock(), UTC)
        if since > now:
            raise Problem.invalid(FieldError("since", "range", "since is in the future"))
        end = now if until is None else min(until, now)
        try:
            rounded = whole_milliseconds(end)  # as the request keeps them
        except ValueError:
            raise Problem.invalid(FieldError("until", "range", "a time out of range")) from None
        if rounded <= whole_milliseconds(since):
            field = "until" if until is not None else "since"
            raise Problem.invalid(FieldError(field, "range", "since must be before until"))
        request = RecoveryRequest(webhook, since, end, rate=DEFAULT_RATE if rate is None else rate)
        target = f"recover:{webhook.id}:{webhook.created_at}"
        return await self._start_once(request, change, target)

    async def _known(self, operation_id: str) -> Operation | None:
        """An operation this process runs or ran, else as the journal last recorded it (of its
        webhook as it is now); ``None`` when neither knows it."""
        operation = self._recoveries.get(operation_id)
        if operation is not None:
            return operation
        record = await self._recoveries.record_of(operation_id)
        operation = self._recoveries.get(operation_id)  # started here while the journal was read
        if operation is not None or record is None:
            return operation
        webhook_id = record.get("webhook_id")
        webhook = await self._repository.get(webhook_id) if isinstance(webhook_id, str) else None
        if webhook is None:
            return None
        try:
            return Operation.from_record(record, webhook)
        except ValueError:
            return None

    async def _operation(self, principal: Principal, operation_id: str) -> Operation:
        """An operation this process runs or ran, else as the journal last recorded it."""
        operation = await self._known(operation_id)
        if operation is None:
            raise Problem("not_found", "no such recovery")
        if principal.restricted:
            current = await self._repository.get(operation.request.webhook.id)
            if not sees_recovery(principal, current, operation.started_at):
                raise Problem("not_found", "no such recovery")
        return operation

    async def recoveries(
        self,
        principal: Principal,
        webhook_id: str,
        *,
        state: str | None,
        limit: int,
        cursor: str | None,
    ) -> RecoveryPage:
        """A webhook's recoveries and redeliveries (those running, and those that ended within
        ``recovery_retention``), newest first; with ``state``, only those in it."""
        after = decode_recovery_cursor(cursor) if cursor is not None else None
        webhook = await self._webhook(principal, webhook_id)
        created = _restricted_since(principal, webhook)
        chosen = sorted(
            (
                operation
                for operation in await self._recoveries.of_webhook(webhook)
                if (state is None or operation.state == state)
                and (created is None or operation.started_at >= created)
                and (after is None or (operation.started_at, operation.id) < after)
            ),
            key=lambda operation: (operation.started_at, operation.id),
            reverse=True,
        )
        items = chosen[:limit]
        more = len(chosen) > limit
        return RecoveryPage(items, encode_recovery_cursor(items[-1]) if more else None)

    async def recovery(self, principal: Principal, operation_id: str) -> Operation:
        return await self._operation(principal, operation_id)

    async def cancel_recovery(self, principal: Principal, operation_id: str) -> Operation:
        """Stop a running recovery; a finished one is answered as it is. One that this process
        does not run (it was sent here, so no live runner was known) is recorded cancelled."""
        operation = await self._operation(principal, operation_id)
        if self._recoveries.running_here(operation_id):
            stopped = await self._recoveries.cancel(operation_id)
            assert stopped is not None
            return stopped
        return await self._recoveries.cancel_recorded(operation)

    # ------------------------------------------------------------------ dead letters

    async def _scoped_webhook(self, principal: Principal, webhook_id: str | None) -> Webhook | None:
        """For a restricted token naming a webhook (``webhook_id``): that webhook, ``404`` if
        there is none or it is outside the restriction; else ``None``."""
        if not principal.restricted or webhook_id is None:
            return None
        return _named_webhook(principal, await self._repository.get(webhook_id))

    async def _scope_dead_letters(
        self, principal: Principal, webhook_id: str | None
    ) -> Callable[[dict[str, Any]], Any] | None:
        """``None`` for an unrestricted token; else a check of a record's webhook (awaitable).

        The letters, and ``webhook_id``, are judged by the webhooks as they are when the
        listing begins, read once (:meth:`WebhookRepository.current`, as a replay reads them):
        until 2026-12-07 each webhook the letters named was read apart, which for ``serve``
        read the whole subscriptions topic once each (letters of 40 other webhooks among
        10,000: past the request's timeout, holding a dead-letter read's place meanwhile)."""
        if not principal.restricted:
            return None
        webhooks = await self._repository.current()
        if webhook_id is not None:
            _named_webhook(principal, webhooks(webhook_id))

        async def visible(record: dict[str, Any]) -> bool:
            owner = record.get("webhook_id")
            if not isinstance(owner, str):
                return False
            webhook = webhooks(owner)
            if webhook is None or not principal.allows(webhook.site_id, webhook.user_id):
                return False
            return webhook.created_at is None or of_webhook_created(record, webhook.created_at)

        return visible

    async def dead_letters(
        self, principal: Principal, where: DeadLetterFilter, *, limit: int, cursor: str | None
    ) -> DeadLetterPage:
        """Dead letters ``where`` selects, oldest first, within the token's restriction."""
        after = decode_dead_letter_cursor(cursor) if cursor is not None else None
        visible = await self._scope_dead_letters(principal, where.webhook_id)
        read = await self._of_delivery_webhook(where)
        # The letters after the cursor were written at or after its time: only they are read
        # (on a broker with a time index, from there on), not the whole topic for every page.
        if after is not None:
            try:
                moment = parse_time(after[0])
            except ValueError:
                moment = None  # a letter without a time: nothing to narrow by
            if moment is not None and (where.since is None or moment > where.since):
                read = dataclasses.replace(read, since=moment)
        # The first ``limit + 1`` letters after the cursor, kept in order as the topic is read:
        # a page holds that many letters, not every letter the read goes through; and once it
        # has them, the read need not go past the last one's time.
        first: list[tuple[DeadLetterPosition, int, dict[str, Any]]] = []
        count = itertools.count()  # keeps equal positions apart without comparing records

        def needed_until() -> datetime | None:
            if len(first) <= limit:
                return None
            try:
                return parse_time(first[-1][0][0])
            except ValueError:
                return None  # a letter without a time sorts first: no later time to stop at

        letters_read = self._dead_letters.read(read, needed_until=needed_until)
        async with aclosing(letters_read) as letters:
            async for record in letters:
                position = _dead_letter_position(record)
                if after is not None and not _after(position, after):
                    continue
                if len(first) > limit and position >= first[-1][0]:
                    continue
                if visible is not None and not await visible(record):
                    continue
                if not _writable(record):
                    # Read, but not what an answer can hold (an integer past JavaScript's
                    # safe range, written by something else than the bridge): left out, on
                    # every page alike (until 2026-12-05 every page holding it was a 500).
                    continue
                bisect.insort(first, (position, next(count), record))
                del first[limit + 1 :]
        items = [record for _, _, record in first[:limit]]
        if len(first) > limit:
            return DeadLetterPage(items, encode_dead_letter_cursor(first[limit - 1][0]))
        return DeadLetterPage(items, None)

    async def replay_dead_letters(
        self,
        principal: Principal,
        where: DeadLetterFilter,
        *,
        cursor: str | None = None,
        deadline: float | None = None,
    ) -> tuple[ReplayReport, str | None]:
        """Re-enqueue the dead letters ``where`` selects; a restricted token names its webhook.
        Stops reading at ``deadline`` (the loop's time); then the cursor a replay of the same
        ``where`` goes on from (:func:`encode_replay_cursor`), else ``None``. ``cursor``: one
        of those, its replay's filter ``where``."""
        asked = where
        resume: dict[int, int] | None = None
        if cursor is not None:
            until, resume = decode_replay_cursor(cursor, where)
            where = dataclasses.replace(where, until=until)
        if principal.restricted and where.webhook_id is None:
            raise Problem(
                "forbidden",
                "a token restricted to a site or account replays one webhook at a time",
                errors=[FieldError("webhook_id", "required", "give one of your webhooks")],
            )
        webhook = await self._scoped_webhook(principal, where.webhook_id)
        if webhook is not None and webhook.created_at is not None:
            where = dataclasses.replace(where, webhook_created_at=webhook.created_at)
        where = await self._of_delivery_webhook(where)
        # The webhooks read once, current as of now, for every letter: a read each (the whole
        # topic for ``serve``) cost one a webhook replayed, and a worker's table unchecked
        # could still show off a webhook turned on just before (2026-12-06).
        webhooks = await self._repository.current()

        async def current(webhook_id: str) -> Webhook | None:
            return webhooks(webhook_id)

        report = await self._dead_letters.replay(
            where, webhooks=current, resume=resume, deadline=deadline
        )
        if report.complete:
            return report, None
        return report, encode_replay_cursor(report, asked)

    async def _of_delivery_webhook(self, where: DeadLetterFilter) -> DeadLetterFilter:
        """``where``, naming a delivery and no webhook, narrowed to the delivery's webhook when
        the delivery logs know it: a delivery's letters are all its webhook's (its id is made
        from the webhook's), and they are in that webhook's partition of the topic, so one
        partition is read instead of every one. Without the logs' index (finding the delivery
        would read the whole attempts topic), or with no attempt of it kept, or while an
        owner does not answer, ``where`` as it is: the whole topic is read, as before."""
        if (
            where.delivery_id is None
            or where.webhook_id is not None
            or not self._activity.indexes_deliveries
        ):
            return where
        try:
            attempts = await self._activity.delivery(where.delivery_id)
        except Problem as problem:
            if problem.status != 503:
                raise
            return where
        if not attempts:
            return where
        return dataclasses.replace(where, webhook_id=attempts[0].webhook_id)


def _writable(record: dict[str, Any]) -> bool:
    """Whether ``record`` can be written in an answer as it is: at ``items[i]`` of a page, two
    levels down (a letter of data nested 253 or 254 levels, accepted until 2026-12-07, encoded
    alone and made its page a 500)."""
    try:
        jsoncanon.dumps(record, max_depth=jsoncanon.MAX_DEPTH - 2)
    except InvalidRecord:
        return False
    return True
