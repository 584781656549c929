"""A webhook's delivery stats over the last hour, day and week, in bounded memory.

Attempts are counted in time buckets: one per minute for the last hour, one per hour for the
last week. A window takes the current (partly elapsed) bucket and as many whole ones before it as
its name holds, so it covers at least its name: the hour window up to one minute more, the day
and week windows up to one hour more.
The stats are of the newest webhook of an id: an id can be used again after a delete, and an
attempt recorded for a webhook created later (``webhook_created_at``) starts them afresh, while
one for a webhook created earlier is not counted. Attempts recorded without it count for
whichever webhook the stats are of.
Latency quantiles are estimated from a fixed histogram per bucket, interpolated within the
histogram bucket that holds the quantile, as Prometheus' ``histogram_quantile`` does, but within
the latencies seen: each time bucket also keeps its fastest and slowest attempt, so that the
interpolation never reaches below the window's fastest or above its slowest. The error is at
most the width of the histogram bucket that holds the quantile, cut to that range: a window
whose attempts all took the same time gives that time exactly, and the open bucket (30 s and
more) gives at most the slowest attempt rather than its lower bound alone.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from bridge.attempts.record import Attempt
from bridge.errors import InvalidRecord
from bridge.subscriptions.webhook import created_seconds

__all__ = ["LATENCY_BOUNDS", "WINDOWS", "WindowStats", "WebhookStats"]

#: Upper bounds (seconds) of the latency histogram's buckets; the last one is open.
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
#: The windows stats are given for, by name, in seconds.
WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 604800.0}

_MINUTE = 60.0
_HOUR = 3600.0
# One more than the longest window's whole buckets: the current one is partly elapsed.
_MINUTES_KEPT = 60 + 1
_HOURS_KEPT = 24 * 7 + 1


@dataclass(slots=True)
class _Bucket:
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    skipped: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BOUNDS))
    #: The fastest and slowest attempt counted in ``latency`` (``None`` without one, or in
    #: buckets sent by a worker that did not keep them).
    fastest: float | None = None
    slowest: float | None = None

    def add(self, outcome: str, duration: float, index: int) -> None:
        """Count an attempt: its ``outcome``, and its ``duration`` in the latency histogram's
        bucket ``index``."""
        if outcome == "skipped":
            self.skipped += 1
            return
        self.attempts += 1
        if outcome == "success":
            self.successes += 1
        else:
            self.failures += 1
        self.latency[index] += 1
        fastest = self.fastest
        if fastest is None or duration < fastest:
            self.fastest = duration
        slowest = self.slowest
        if slowest is None or duration > slowest:
            self.slowest = duration


@dataclass(frozen=True)
class WindowStats:
    """What one window saw. ``attempts`` counts requests made (``successes + failures``);
    skipped attempts (open circuit, full queue, rate limit, refused destination) are apart."""

    window: str
    attempts: int
    successes: int
    failures: int
    skipped: int
    #: ``failures / attempts``, ``None`` without attempts.
    failure_ratio: float | None
    #: Estimated latency quantiles in seconds, ``None`` without attempts.
    latency_p50: float | None
    latency_p99: float | None

    def as_dict(self) -> dict[str, Any]:
        """The window as the API's ``WindowStats`` (and the CLI's ``--json``) show it."""
        return {
            "attempts": self.attempts,
            "successes": self.successes,
            "failures": self.failures,
            "skipped": self.skipped,
            "failure_ratio": self.failure_ratio,
            "latency_p50_seconds": self.latency_p50,
            "latency_p99_seconds": self.latency_p99,
        }

    @classmethod
    def of(cls, window: str, shown: dict[str, Any]) -> WindowStats:
        """The window :meth:`as_dict` showed (``KeyError`` for a missing field)."""
        return cls(
            window=window,
            attempts=shown["attempts"],
            successes=shown["successes"],
            failures=shown["failures"],
            skipped=shown["skipped"],
            failure_ratio=shown["failure_ratio"],
            latency_p50=shown["latency_p50_seconds"],
            latency_p99=shown["latency_p99_seconds"],
        )


def _seconds(created_at: str) -> float:
    """Unreadable is older than any readable time."""
    seconds = created_seconds(created_at)
    return -math.inf if seconds is None else seconds


def _quantile(
    q: float, counts: list[int], fastest: float | None = None, slowest: float | None = None
) -> float | None:
    """The ``q`` quantile of the latencies counted in ``counts``, interpolated within the
    histogram bucket that holds it and within ``[fastest, slowest]`` (when known: the fastest
    latency lies in the first non-empty bucket and the slowest in the last, so the range only
    ever narrows the bucket the quantile is in)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = 0.0 if index == 0 else LATENCY_BOUNDS[index - 1]
            upper = LATENCY_BOUNDS[index]
            if fastest is not None and fastest > lower:
                lower = min(fastest, upper)
            if slowest is not None and slowest < upper:
                upper = max(slowest, lower)
            if math.isinf(upper):
                return lower  # the open bucket, its slowest unknown: its lower bound
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS[-2]


class WebhookStats:
    """Counts of one webhook's attempts by minute (last hour) and by hour (last week), and
    when it last succeeded and failed."""

    def __init__(self) -> None:
        self._minutes: dict[int, _Bucket] = {}
        self._hours: dict[int, _Bucket] = {}
        #: The minute of ``now`` when buckets were last expired.
        self._expired_minute: int | None = None
        #: ``at`` of the newest successful and failed attempt seen.
        self.last_success: Attempt | None = None
        self.last_failure: Attempt | None = None
        #: The ``created_at`` of the webhook counted (``None`` until an attempt names one).
        self.webhook_created_at: str | None = None

    def of_webhook(self, created_at: str | None) -> WebhookStats:
        """These stats if they count the webhook created at ``created_at``, else none: an id
        used again after a delete shows the deleted webhook's until the new one's first attempt
        (until 2026-12-05 they were shown as the new webhook's, to another site's token too)."""
        counted = self.webhook_created_at
        if counted is None or created_at is None or counted == created_at:
            return self
        return WebhookStats()

    def takes_as_last(self, attempt: Attempt) -> bool:
        """Whether :meth:`add` of ``attempt`` makes it the last success or failure."""
        if attempt.outcome not in ("success", "failure"):
            return False
        created = attempt.webhook_created_at
        counted = self.webhook_created_at
        if created is not None and counted is not None and created != counted:
            return _seconds(created) >= _seconds(counted)  # a newer webhook's: all anew
        return self._newer_than_last(attempt)

    def _newer_than_last(self, attempt: Attempt) -> bool:
        """Whether ``attempt`` is a success (failure) newer than the last one known."""
        if attempt.outcome == "success":
            last = self.last_success
        elif attempt.outcome == "failure":
            last = self.last_failure
        else:
            return False
        return last is None or attempt.at_seconds > last.at_seconds

    def _take_last(self, attempt: Attempt) -> None:
        """``attempt`` as the last success or failure, if it is newer than the one known."""
        if self._newer_than_last(attempt):
            if attempt.outcome == "success":
                self.last_success = attempt
            else:
                self.last_failure = attempt

    def remember(self, attempt: Attempt) -> None:
        """Take ``attempt`` as the last success or failure if it is newer than the one known
        and of the webhook counted (a store's record of them, which its log may no longer
        keep), without counting it."""
        created = attempt.webhook_created_at
        counted = self.webhook_created_at
        if created is not None and counted is not None and created != counted:
            return
        if counted is None and created is not None:
            self.webhook_created_at = created  # as counting it would have
        self._take_last(attempt)

    def add(self, attempt: Attempt, now: float) -> None:
        """Count ``attempt`` (each attempt once: the caller drops records read twice)."""
        created = attempt.webhook_created_at
        if created is not None and created != self.webhook_created_at:
            if self.webhook_created_at is not None:
                if _seconds(created) < _seconds(self.webhook_created_at):
                    return  # a deleted webhook's, read after the newer one's
                self._minutes.clear()
                self._hours.clear()
                self.last_success = self.last_failure = None
            self.webhook_created_at = created
        self._take_last(attempt)
        at = attempt.at_seconds
        minute = int(at // _MINUTE)
        now_minute = int(now // _MINUTE)
        # Each attempt goes into a minute and an hour bucket: its latency bucket is found once.
        outcome = attempt.outcome
        duration = attempt.duration_seconds
        index = bisect.bisect_left(LATENCY_BOUNDS, duration)
        # get, then make only when missing: setdefault would build a bucket every time
        if minute > now_minute - _MINUTES_KEPT:
            bucket = self._minutes.get(minute)
            if bucket is None:
                bucket = self._minutes[minute] = _Bucket()
            bucket.add(outcome, duration, index)
        hour = int(at // _HOUR)
        if hour > int(now // _HOUR) - _HOURS_KEPT:
            bucket = self._hours.get(hour)
            if bucket is None:
                bucket = self._hours[hour] = _Bucket()
            bucket.add(outcome, duration, index)
        if now_minute != self._expired_minute:
            # Buckets only age out as minutes pass: once a minute is enough (per attempt, the
            # walk over up to 230 buckets cost more than the counting).
            self.expire(now)

    def expire(self, now: float) -> None:
        """Forget buckets that no window reaches any more."""
        self._expired_minute = int(now // _MINUTE)
        first_minute = int(now // _MINUTE) - _MINUTES_KEPT + 1
        for key in [k for k in self._minutes if k < first_minute]:
            del self._minutes[key]
        first_hour = int(now // _HOUR) - _HOURS_KEPT + 1
        for key in [k for k in self._hours if k < first_hour]:
            del self._hours[key]

    def to_dict(self) -> dict[str, Any]:
        """The counts as JSON-able data (:meth:`from_dict` rebuilds them)."""

        def buckets(held: dict[int, _Bucket]) -> list[list[Any]]:
            return [
                [key, b.attempts, b.successes, b.failures, b.skipped, b.latency]
                for key, b in sorted(held.items())
            ]

        def extremes(held: dict[int, _Bucket]) -> list[list[Any]]:
            return [
                [key, b.fastest, b.slowest]
                for key, b in sorted(held.items())
                if b.fastest is not None and b.slowest is not None
            ]

        # The fastest and slowest attempts apart from the buckets' lists: a worker that does
        # not know them reads the rest as before (workers of two releases, mid-upgrade).
        return {
            "minutes": buckets(self._minutes),
            "hours": buckets(self._hours),
            "latency_extremes": {
                "minutes": extremes(self._minutes),
                "hours": extremes(self._hours),
            },
            "last_success": None if self.last_success is None else self.last_success.as_dict(),
            "last_failure": None if self.last_failure is None else self.last_failure.as_dict(),
            "webhook_created_at": self.webhook_created_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookStats:
        """The stats :meth:`to_dict` gave; ``ValueError`` for anything else."""
        stats = cls()
        try:
            for name, held in (("minutes", stats._minutes), ("hours", stats._hours)):
                for key, attempts, successes, failures, skipped, latency in data[name]:
                    if len(latency) != len(LATENCY_BOUNDS):
                        raise ValueError("latency histogram of another size")
                    held[int(key)] = _Bucket(
                        int(attempts),
                        int(successes),
                        int(failures),
                        int(skipped),
                        [int(n) for n in latency],
                    )
            extremes = data.get("latency_extremes", {})
            if not isinstance(extremes, dict):
                raise ValueError("latency extremes are not an object")
            for name, held in (("minutes", stats._minutes), ("hours", stats._hours)):
                for key, fastest, slowest in extremes.get(name, ()):
                    bucket = held.get(int(key))
                    if bucket is None or bucket.attempts == 0:
                        raise ValueError("latency extremes of a bucket without attempts")
                    fastest, slowest = float(fastest), float(slowest)
                    if not 0.0 <= fastest <= slowest or math.isinf(fastest):
                        raise ValueError("latency extremes out of order")
                    bucket.fastest, bucket.slowest = fastest, slowest
            for name in ("last_success", "last_failure"):
                if data[name] is not None:
                    setattr(stats, name, Attempt.of(data[name]))
            created = data.get("webhook_created_at")
            if created is not None and not isinstance(created, str):
                raise ValueError("webhook_created_at is not a string")
            stats.webhook_created_at = created
        except (KeyError, TypeError, InvalidRecord) as exc:
            raise ValueError(f"not stats data: {exc}") from None
        return stats

    @property
    def buckets(self) -> int:
        """How many buckets are held (the memory this webhook's stats take grows with it)."""
        return len(self._minutes) + len(self._hours)

    def window(self, name: str, now: float) -> WindowStats:
        """The stats of window ``name`` (``1h``, ``24h`` or ``7d``) as of ``now``."""
        seconds = WINDOWS[name]
        self.expire(now)
        if seconds <= _MINUTES_KEPT * _MINUTE:
            first = int(now // _MINUTE) - int(seconds // _MINUTE)
            chosen = [b for k, b in self._minutes.items() if k >= first]
        else:
            first = int(now // _HOUR) - int(seconds // _HOUR)
            chosen = [b for k, b in self._hours.items() if k >= first]
        total = _Bucket()
        ranged = True
        for bucket in chosen:
            total.attempts += bucket.attempts
            total.successes += bucket.successes
            total.failures += bucket.failures
            total.skipped += bucket.skipped
            total.latency = [a + b for a, b in zip(total.latency, bucket.latency, strict=True)]
            if bucket.attempts:
                if bucket.fastest is None or bucket.slowest is None:
                    # Sent by a worker that did not keep them: the range is not known.
                    ranged = False
                elif ranged:
                    if total.fastest is None or bucket.fastest < total.fastest:
                        total.fastest = bucket.fastest
                    if total.slowest is None or bucket.slowest > total.slowest:
                        total.slowest = bucket.slowest
        latencies = (
            (total.latency, total.fastest, total.slowest) if ranged else (total.latency, None, None)
        )
        return WindowStats(
            window=name,
            attempts=total.attempts,
            successes=total.successes,
            failures=total.failures,
            skipped=total.skipped,
            failure_ratio=total.failures / total.attempts if total.attempts else None,
            latency_p50=_quantile(0.5, *latencies),
            latency_p99=_quantile(0.99, *latencies),
        )
