"""What endpoints answered lately, read back from the attempts topic when a worker starts: the
endpoints it may take as quick, and those still slow (:meth:`SlowEndpoints.remember`).

A worker hears from no endpoint before it starts, and takes every endpoint it has not heard
answering quickly for one that may hang (its requests share a part of the worker's places, one
at a time: :class:`~bridge.delivery.limits.SlowEndpoints`). The workers before it heard from
them: each attempt record says how long its endpoint took to answer (``duration_seconds``).
Only the newest answered attempt of each endpoint counts. A record names the endpoint its
request went to (``endpoint``, since 2026-12-07); one written before names only its webhook, and
counts for the webhook as the table holds it now, unchanged since: a webhook updated after its
attempt may point somewhere else (its ``updated_at`` says when it changed: a record without one,
a producer's, is left out; and a producer that moved a webhook keeping its ``updated_at`` made
the new endpoint take the old one's answers, which a record naming its endpoint cannot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bridge.attempts.record import Attempt
from bridge.delivery.limits import SLOW_AFTER, SLOW_FOR
from bridge.errors import InvalidRecord, InvalidUrl
from bridge.metrics import SKIP_REASONS
from bridge.subscriptions.urls import WebhookUrl
from bridge.subscriptions.webhook import Webhook, created_seconds

__all__ = ["RecentAnswers", "SEED_SINCE", "SEED_RECORDS", "SEED_TIMEOUT"]

#: How far back (seconds) the attempts topic is read: an answer older says little of today's
#: endpoint.
SEED_SINCE = 3600.0
#: At most this many attempt records are read, the newest of each partition (an equal part
#: each): ~1 s on the embedded broker, and one answer kept a webhook (12 MB for 60,000) until
#: the first delivery (BENCHMARKS.md, "A starting worker's read of recent answers"), beside
#: the worker's group join and table recovery.
SEED_RECORDS = 100_000
#: The longest (seconds) a starting worker's first deliveries wait for the read: past it, they
#: go with what was read by then.
SEED_TIMEOUT = 10.0
#: Seconds an attempt may be stamped past this worker's clock and still be taken: writers'
#: clocks differ by less (as the delivery log's ``FUTURE_MARGIN``).
_FUTURE_MARGIN = 300.0
#: Errors that say nothing of how an endpoint answers: no request was made, or none was
#: answered (``interrupted``: a stopping worker's request cut short, recorded with no duration,
#: which until it was left out made every endpoint a stopped worker had a request out to, those
#: that hang above all, quick to the next).
_NO_ANSWER = frozenset(SKIP_REASONS)
#: Webhooks resolved between two turns of the event loop (:meth:`RecentAnswers.endpoints`).
_RESOLVE_STEP = 1000


@dataclass(slots=True)
class _Answer:
    at: float
    duration: float
    webhook_created_at: str | None


@dataclass
class RecentAnswers:
    """The newest answered attempt of each endpoint (of each webhook, for records naming no
    endpoint), as attempt records are :meth:`add` ed."""

    #: When the read began (wall time): answers stamped more than :data:`SEED_SINCE` before,
    #: or more than the clocks' margin after, are not taken.
    now: float
    since: float = SEED_SINCE
    slow_after: float = SLOW_AFTER
    slow_for: float = SLOW_FOR
    #: By webhook id, the newest answer of the records that name no endpoint.
    _newest: dict[str, _Answer] = field(default_factory=dict)
    #: By endpoint, the newest answer of the records that name theirs.
    _by_endpoint: dict[str, _Answer] = field(default_factory=dict)
    #: Records taken (answered attempts), and skipped (no request made or answered, not an
    #: attempt record, or stamped outside the read's reach).
    taken: int = 0
    skipped: int = 0

    def add_value(self, value: bytes | None) -> None:
        """:meth:`add` the attempt of an attempts-topic record's value; one that is no attempt
        record is skipped."""
        try:
            attempt = Attempt.parse(value)
        except InvalidRecord:
            self.skipped += 1
            return
        self.add(attempt)

    def add(self, attempt: Attempt) -> None:
        at = attempt.at_seconds
        if (
            attempt.outcome == "skipped"
            or attempt.error in _NO_ANSWER
            or not at
            or at > self.now + _FUTURE_MARGIN
            or at < self.now - self.since
        ):
            self.skipped += 1
            return
        self.taken += 1
        key = attempt.endpoint
        answers = self._by_endpoint
        if key is None:
            key, answers = attempt.webhook_id, self._newest
        newest = answers.get(key)
        if newest is None or at >= newest.at:
            answers[key] = _Answer(at, attempt.duration_seconds, attempt.webhook_created_at)

    def __len__(self) -> int:
        return len(self._newest) + len(self._by_endpoint)

    def clear(self) -> None:
        """Forget the answers (once remembered: up to one entry per webhook or endpoint read)."""
        self._newest.clear()
        self._by_endpoint.clear()

    async def endpoints(
        self, webhooks: Callable[[str], Webhook | None], now: float
    ) -> tuple[list[str], Mapping[str, float]]:
        """The endpoints heard answering quickly, and those heard answering slowly with the
        seconds of their slowness left at ``now`` (wall time; :data:`SLOW_FOR` after the
        answer), by the newest answer of each heard within ``since`` of ``now``. A record
        that names its endpoint is that endpoint's answer; one that does not (written before
        2026-12-07) is its webhook's, as ``webhooks`` (the table) holds it now: a webhook
        deleted, re-created, or updated since its attempt is left out (its URL may have
        changed). Lets the event loop run every :data:`_RESOLVE_STEP` webhooks (63,000 took
        0.95 s: BENCHMARKS.md)."""
        oldest = now - self.since
        newest = {e: a for e, a in self._by_endpoint.items() if a.at >= oldest}
        for n, (webhook_id, answer) in enumerate(list(self._newest.items()), start=1):
            if n % _RESOLVE_STEP == 0:
                await asyncio.sleep(0)
            if answer.at < oldest:
                continue
            webhook = webhooks(webhook_id)
            if webhook is None or not _unchanged_since(webhook, answer):
                continue
            try:
                # Not remembered: the cache of URLs (6.6 KB an entry) is for the webhooks
                # delivered to, and these are every webhook heard from in the read.
                endpoint = WebhookUrl.parse(webhook.url, remember=False).endpoint
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
                left = answer.at + self.slow_for - now
                if left > 0:
                    slow[endpoint] = left
        return proven, slow


def _unchanged_since(webhook: Webhook, answer: _Answer) -> bool:
    """Whether ``webhook`` is the one the answered attempt was made for, as it was then."""
    if not webhook.made_for(answer.at, answer.webhook_created_at):
        return False
    changed = webhook.updated_at
    if changed is None:  # (a producer's record: when it changed is not known)
        return False
    seconds = created_seconds(changed)
    return seconds is not None and seconds <= answer.at
