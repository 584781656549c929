"""What endpoints answered lately, read back from the attempts topic when a worker starts: the
endpoints it may take as quick, and those still slow (:meth:`SlowEndpoints.remember`).

A worker hears from no endpoint before it starts, and takes every endpoint it has not heard
answering quickly for one that may hang (its requests share a part of the worker's places, one
at a time: :class:`~bridge.delivery.limits.SlowEndpoints`). The workers before it heard from
them: each attempt record says how long its endpoint took to answer (``duration_seconds``).
Only the newest answered attempt of each webhook counts, and only for the webhook as the table
holds it now, unchanged since: a webhook updated after its attempt may point somewhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bridge.attempts.record import Attempt
from bridge.delivery.breaker import endpoint_of
from bridge.delivery.limits import SLOW_AFTER, SLOW_FOR
from bridge.errors import InvalidUrl
from bridge.subscriptions.webhook import Webhook, created_seconds

__all__ = ["RecentAnswers", "SEED_SINCE", "SEED_RECORDS", "SEED_TIMEOUT"]

#: How far back (seconds) the attempts topic is read: an answer older says little of today's
#: endpoint.
SEED_SINCE = 3600.0
#: At most this many attempt records are read, the newest of each partition (an equal part
#: each): 2.2 s on the embedded broker (20,000: 0.5 s; BENCHMARKS.md, "A starting worker's
#: read of recent answers"), beside the worker's group join and table recovery.
SEED_RECORDS = 200_000
#: The longest (seconds) a starting worker's first deliveries wait for the read: past it, they
#: go with what was read by then.
SEED_TIMEOUT = 10.0
#: Seconds an attempt may be stamped past this worker's clock and still be taken: writers'
#: clocks differ by less (as the delivery log's ``FUTURE_MARGIN``).
_FUTURE_MARGIN = 300.0
#: Errors that say nothing of how an endpoint answers: no request was made.
_NO_REQUEST = frozenset({"destination_forbidden"})


@dataclass(slots=True)
class _Answer:
    at: float
    duration: float
    webhook_created_at: str | None


@dataclass
class RecentAnswers:
    """The newest answered attempt of each webhook, as attempt records are :meth:`add` ed."""

    now: float
    slow_after: float = SLOW_AFTER
    slow_for: float = SLOW_FOR
    _newest: dict[str, _Answer] = field(default_factory=dict)
    #: Records taken (answered attempts), and skipped (no request made, or stamped ahead).
    taken: int = 0
    skipped: int = 0

    def add(self, attempt: Attempt) -> None:
        at = attempt.at_seconds
        if (
            attempt.outcome == "skipped"
            or attempt.error in _NO_REQUEST
            or not at
            or at > self.now + _FUTURE_MARGIN
        ):
            self.skipped += 1
            return
        self.taken += 1
        newest = self._newest.get(attempt.webhook_id)
        if newest is None or at >= newest.at:
            self._newest[attempt.webhook_id] = _Answer(
                at, attempt.duration_seconds, attempt.webhook_created_at
            )

    def __len__(self) -> int:
        return len(self._newest)

    def clear(self) -> None:
        """Forget the answers (once remembered: up to one entry per webhook read)."""
        self._newest.clear()

    def endpoints(
        self, webhooks: Callable[[str], Webhook | None]
    ) -> tuple[list[str], Mapping[str, float]]:
        """The endpoints heard answering quickly, and those heard answering slowly with the
        seconds of their slowness left (:data:`SLOW_FOR` after the answer), by the newest
        answer of each: the webhooks' as ``webhooks`` (the table) holds them now. A webhook
        deleted, re-created, or updated since its attempt is left out (its URL may have
        changed)."""
        newest: dict[str, _Answer] = {}
        for webhook_id, answer in self._newest.items():
            webhook = webhooks(webhook_id)
            if webhook is None or not _unchanged_since(webhook, answer):
                continue
            try:
                endpoint = endpoint_of(webhook.url)
            except InvalidUrl:
                continue
            known = newest.get(endpoint)
            if known is None or answer.at >= known.at:
                newest[endpoint] = answer
        proven: list[str] = []
        slow: dict[str, float] = {}
        for endpoint, answer in newest.items():
            if answer.duration < self.slow_after:
                proven.append(endpoint)
            else:
                left = answer.at + self.slow_for - self.now
                if left > 0:
                    slow[endpoint] = left
        return proven, slow


def _unchanged_since(webhook: Webhook, answer: _Answer) -> bool:
    """Whether ``webhook`` is the one the answered attempt was made for, as it was then."""
    if not webhook.made_for(answer.at, answer.webhook_created_at):
        return False
    changed = webhook.updated_at or webhook.created_at
    if changed is None:
        return True
    seconds = created_seconds(changed)
    return seconds is not None and seconds <= answer.at
