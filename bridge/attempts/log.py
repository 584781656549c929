"""A webhook's delivery log: its newest attempts, bounded by count and age, queried newest first.

Attempts are ordered by when they started, then by delivery id and attempt number, an order
that does not depend on when a worker read them: a cursor handed out before a restart still
points at the same place after the log was rebuilt from the attempts topic.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from bridge import cursors
from bridge.attempts.keys import MAX_ATTEMPT_NUMBER
from bridge.attempts.record import OUTCOMES, TRIGGERS, Attempt
from bridge.contract.schemas import EVENT_TYPES
from bridge.memo import put_newest

__all__ = [
    "COUNTED_REMEMBERED",
    "STATUS_CLASSES",
    "AttemptLog",
    "LogQuery",
    "Page",
    "WebhookLog",
    "decode_cursor",
    "encode_cursor",
    "fill_page",
]

#: The values of :attr:`LogQuery.status_class`.
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "none")

#: Attempts a webhook's log remembers having counted without keeping them (older than every
#: kept one in a full log), so that a copy read again soon after is not counted again.
COUNTED_REMEMBERED = 64

#: Where an attempt sits in a log: (started at, delivery id, attempt number).
_Position = tuple[float, str, int]


@dataclass(frozen=True)
class LogQuery:
    """Which attempts to list; ``None`` matches everything."""

    event_type: str | None = None
    #: ``success``, ``failure`` or ``skipped``.
    outcome: str | None = None
    #: ``2xx`` … ``5xx``, or ``none`` for attempts that got no response.
    status_class: str | None = None
    #: Seconds since the epoch, inclusive.
    since: float | None = None
    #: Seconds since the epoch, exclusive.
    until: float | None = None
    #: ``scheduled`` (the event's own attempts and their retries) or ``manual`` (an operator's
    #: redelivery, recovery or dead-letter replay, and their retries).
    trigger: str | None = None
    #: Only the attempts of this recovery or redelivery (``/v1/recoveries/{id}``).
    recovery_id: str | None = None
    #: Only the attempts made for the webhook created then (their record names it, or no
    #: webhook: made before records named it), not for a deleted webhook of the same id.
    webhook_created_at: str | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(sorted(OUTCOMES))}")
        if self.trigger is not None and self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}")
        # As /v1 refuses them (400): until 2026-12-07 the CLI's reading on Kafka listed
        # nothing for them, a typo looking like a webhook without attempts.
        if self.event_type is not None and self.event_type not in EVENT_TYPES:
            raise ValueError(f"event_type must be one of {', '.join(EVENT_TYPES)}")
        if self.status_class is not None and self.status_class not in STATUS_CLASSES:
            raise ValueError(f"status_class must be one of {', '.join(STATUS_CLASSES)}")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be after since")

    def matches(self, attempt: Attempt) -> bool:
        return (
            (self.event_type is None or attempt.event_type == self.event_type)
            and (self.outcome is None or attempt.outcome == self.outcome)
            and (self.status_class is None or attempt.status_class == self.status_class)
            and (self.since is None or attempt.at_seconds >= self.since)
            and (self.until is None or attempt.at_seconds < self.until)
            and (self.trigger is None or attempt.trigger == self.trigger)
            and (self.recovery_id is None or attempt.recovery_id == self.recovery_id)
            and (
                self.webhook_created_at is None
                or attempt.webhook_created_at in (None, self.webhook_created_at)
            )
        )


@dataclass(frozen=True)
class Page:
    """Attempts newest first, and the cursor of the next (older) page, if there is one."""

    items: list[Attempt]
    next_cursor: str | None


def encode_cursor(position: _Position) -> str:
    """An opaque cursor for the attempts older than ``position``."""
    return cursors.encode_cursor(list(position))


def decode_cursor(cursor: str) -> _Position:
    """The position a cursor from :func:`encode_cursor` names; ``ValueError`` for anything else,
    and for a position no kept attempt can have: a time that is not finite, an attempt number
    a key of the RocksDB store cannot hold (so that both stores refuse the same cursors)."""
    at, delivery_id, number = cursors.decode_cursor(cursor, ((int, float), str, int))
    if not 0 <= number <= MAX_ATTEMPT_NUMBER:
        raise ValueError("not a cursor of this list")
    return (at, delivery_id, number)


class AttemptLog(Protocol):
    """A webhook's log as the API reads it: :class:`WebhookLog` in memory,
    :class:`~bridge.attempts.rocks.DiskWebhookLog` on disk (the same results and cursors)."""

    def __len__(self) -> int: ...

    @property
    def max_age(self) -> float:
        """Seconds an attempt is kept (an older one is forgotten by the next sweep)."""
        ...

    def page(
        self, query: LogQuery, *, now: float, limit: int = 50, cursor: str | None = None
    ) -> Page: ...

    def attempts(self) -> list[Attempt]: ...

    def delivery(self, delivery_id: str) -> list[Attempt]: ...


def _position(attempt: Attempt) -> _Position:
    return (attempt.at_seconds, attempt.delivery_id, attempt.attempt)


def fill_page(newest_first: Iterable[Attempt], query: LogQuery, limit: int) -> Page:
    """The first ``limit`` attempts of ``newest_first`` that match ``query``, and the cursor
    after them when another one matches (``newest_first`` ends where the page must: at
    ``query.since`` or the log's age limit)."""
    items: list[Attempt] = []
    for attempt in newest_first:
        if not query.matches(attempt):
            continue
        if len(items) == limit:
            return Page(items, encode_cursor(_position(items[-1])))
        items.append(attempt)
    return Page(items, None)


class WebhookLog:
    """The newest attempts of one webhook: at most ``max_attempts``, none older than
    ``max_age`` seconds (checked against the ``now`` given to :meth:`add` and :meth:`page`).
    ``on_forget`` is called with a delivery id when the log no longer keeps any of its
    attempts."""

    def __init__(
        self,
        *,
        max_attempts: int,
        max_age: float,
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        if max_attempts < 1 or max_age <= 0:
            raise ValueError("a delivery log keeps at least one attempt for some time")
        self._max_attempts = max_attempts
        self._max_age = max_age
        self._on_forget = on_forget
        #: Whether the last attempt :meth:`add` refused was new but older than every kept one
        #: in a full log.
        self.older_than_kept = False
        #: The positions of the last such attempts (:data:`COUNTED_REMEMBERED`), so that one
        #: read again (a copy written by a send retried) is not counted again.
        self._counted: dict[_Position, None] = {}
        #: Positions, oldest first, and the attempt at each.
        self._positions: list[_Position] = []
        self._attempts: dict[_Position, Attempt] = {}
        #: Positions of each delivery's attempts.
        self._deliveries: dict[str, list[_Position]] = {}

    def __len__(self) -> int:
        return len(self._positions)

    @property
    def max_age(self) -> float:
        return self._max_age

    def add(self, attempt: Attempt, now: float) -> bool:
        """Keep ``attempt``; ``False`` when it is already kept (the same record read twice) or
        too old to keep (:attr:`older_than_kept` tells which)."""
        self.older_than_kept = False
        at = attempt.at_seconds
        if at < now - self._max_age:
            return False
        position = (at, attempt.delivery_id, attempt.attempt)
        attempts = self._attempts
        if position in attempts:
            return False
        positions = self._positions
        if positions and position < positions[0] and len(positions) >= self._max_attempts:
            # Older than everything kept in a full log: not kept, but new (a timeout is
            # stamped when it began and recorded 30 s later, after a busy webhook's newer
            # attempts): the caller counts it, once.
            if position not in self._counted:
                put_newest(self._counted, position, None, COUNTED_REMEMBERED)
                self.older_than_kept = True
            return False
        if not positions or position > positions[-1]:
            positions.append(position)  # the usual case: records are read in time order
        else:
            bisect.insort(positions, position)
        attempts[position] = attempt
        kept = self._deliveries.get(attempt.delivery_id)
        if kept is None:
            self._deliveries[attempt.delivery_id] = [position]
        else:
            kept.append(position)
        while len(positions) > self._max_attempts:
            self._drop_oldest()
        if positions[0][0] < now - self._max_age:
            self.expire(now)
        return True

    def expire(self, now: float) -> None:
        """Forget attempts older than the log's age limit."""
        oldest = now - self._max_age
        while self._positions and self._positions[0][0] < oldest:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        position = self._positions.pop(0)
        attempt = self._attempts.pop(position)
        kept = self._deliveries[attempt.delivery_id]
        kept.remove(position)
        if not kept:
            del self._deliveries[attempt.delivery_id]
            if self._on_forget is not None:
                self._on_forget(attempt.delivery_id)

    def _newest_first(self, before: _Position | None) -> Iterator[Attempt]:
        end = (
            len(self._positions) if before is None else bisect.bisect_left(self._positions, before)
        )
        for index in range(end - 1, -1, -1):
            yield self._attempts[self._positions[index]]

    def page(
        self, query: LogQuery, *, now: float, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Attempts matching ``query``, newest first, ``limit`` at a time; ``cursor`` (from the
        previous page) continues where it ended. ``ValueError`` for a bad limit or cursor."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        self.expire(now)
        before = None if cursor is None else decode_cursor(cursor)
        since = query.since
        kept = self._newest_first(before)
        if since is not None:
            kept = itertools.takewhile(lambda a: a.at_seconds >= since, kept)
        return fill_page(kept, query, limit)

    def attempts(self) -> list[Attempt]:
        """Every kept attempt, oldest first."""
        return [self._attempts[p] for p in self._positions]

    def delivery(self, delivery_id: str) -> list[Attempt]:
        """Every kept attempt of one delivery, in the order they were made."""
        return [self._attempts[p] for p in sorted(self._deliveries.get(delivery_id, ()))]

    def delivery_ids(self) -> list[str]:
        """The deliveries with a kept attempt."""
        return list(self._deliveries)
