"""When to try a failed delivery again, and when to give up (pure: the clock is passed in)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = [
    "DEFAULT_SCHEDULE",
    "MAX_RETRY_DELAY",
    "parse_retry_after",
    "RetryPolicy",
    "Decision",
]

#: Svix's schedule: after the first attempt fails, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)

#: The longest wait a schedule may hold: a retry record waits its delay in its tier's topic,
#: which keeps records 3 days (``retention.ms`` of the retry topics, topics/topics.json); a
#: delay of days would have the broker delete records before they are due, and leave no time
#: for a tier held up (its endpoint failing, a worker down) to catch up.
MAX_RETRY_DELAY = 86400.0


_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_CLOCK = r"\d{2}:\d{2}:\d{2}"
#: IMF-fixdate (a numeric zone taken too, as senders write it), and the obsolete RFC 850 and
#: asctime forms a recipient must read too; nothing before or after. Read leniently as to case
#: and spaces, as Python's date parser reads them (and read them before 2026-12-07).
_HTTP_DATE = re.compile(
    rf"\A(?:{_DAY}, +\d{{1,2}} +{_MONTH} +\d{{4}} +{_CLOCK} +(?:GMT|UTC?|[+-]\d{{4}})"
    rf"|{_LONG_DAY}, +\d{{2}}-{_MONTH}-\d{{2}} +{_CLOCK} +GMT"
    rf"|{_DAY} +{_MONTH} +\d{{1,2}} +{_CLOCK} +\d{{4}})\Z",
    re.IGNORECASE,
)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or ``None``.

    Total: the header is the endpoint's, and whatever it holds is a number or ``None`` (until
    2026-12-05 a date of an hour past the calendar, ``OverflowError``, made the delivery's
    failure a bridge error: dead-lettered at once, every retry skipped)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)  # inf past a double's range: callers cap it
    if not _HTTP_DATE.match(text):
        # An HTTP date's three forms (RFC 9110, 5.6.7) alone: Python's e-mail date parser
        # takes a date followed by anything (until 2026-12-07 "<date> garbage" was a date).
        return None
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt."""

    #: ``"retry"`` or ``"dead_letter"``.
    action: str
    #: For a retry: the tier (index into the schedule, so the topic) to wait in.
    tier: int | None = None
    #: For a retry: seconds to wait from now.
    delay: float | None = None


class RetryPolicy:
    """The retry schedule with jitter and ``Retry-After`` handling."""

    def __init__(
        self,
        schedule: Sequence[float] = DEFAULT_SCHEDULE,
        *,
        jitter: float = 0.1,
        retry_after_cap: float = 3600.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not schedule:
            raise ValueError("empty retry schedule")
        self.schedule = tuple(schedule)
        # The longest delay of the tiers from each on: a wait is cut to what a tier it may go
        # to covers. Schedules need not increase, so it is not always the last tier's (until
        # 2026-12-07 it was taken to be: a Retry-After was cut to a last delay shorter than
        # an earlier one).
        self._longest_from = tuple(
            max(self.schedule[index:]) for index in range(len(self.schedule))
        )
        self.jitter = jitter
        self.retry_after_cap = retry_after_cap
        self._rand = rand

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one per delay."""
        return len(self.schedule) + 1

    def after_failure(self, attempts_made: int, retry_after: float | None = None) -> Decision:
        """Decide after attempt number ``attempts_made`` (1-based) failed."""
        if attempts_made >= self.max_attempts:
            return Decision("dead_letter")
        tier = attempts_made - 1
        base = self.schedule[tier]
        # Jitter spreads a burst of failures (an endpoint that was down) over time; it only
        # ever shortens the wait so that a record is never due after its tier's delay.
        delay = base * (1.0 - self.jitter * self._rand())
        if retry_after is not None:
            wanted = min(retry_after, self.retry_after_cap, self._longest_from[tier])
            if wanted > delay:
                delay = wanted
                tier = self.tier_for(wanted, at_least=tier)
        return Decision("retry", tier=tier, delay=delay)

    def after_skip(self, wait: float | None = None, *, deferred: int = 0) -> Decision:
        """Decide after an attempt that was not made (an open circuit, a full endpoint queue):
        the same attempt, once ``wait`` seconds have passed (when the circuit lets a request
        through), and no sooner than the first delay of the schedule doubled for each time
        the delivery was ``deferred`` before (up to ``retry_after_cap``); it spends no entry of
        the schedule. Doubling: an endpoint that never has room (one answering in 1 s, sent
        17 times what its 16 places carry) had each of its deliveries tried again every 5 s,
        its deferrals growing with its backlog, and other endpoints' deliveries waited for the
        worker's CPU (until 2026-12-06; BENCHMARKS.md, "A slow endpoint's deferrals"); doubled,
        a delivery is deferred about log2(its wait / 5 s) times."""
        backoff = self.schedule[0] * 2.0 ** min(max(deferred, 0), 32)
        longest = self._longest_from[0]
        delay = min(backoff, max(self.schedule[0], min(self.retry_after_cap, longest)))
        delay *= 1.0 - self.jitter * self._rand()
        if wait is not None:
            delay = max(delay, min(wait, self.retry_after_cap, longest))
        return Decision("retry", tier=self.tier_for(delay), delay=delay)

    def tier_delay(self, tier: int) -> float:
        """The longest a record waits in ``tier`` (the schedule's delay; the last one's for a
        tier past the schedule, as a deployment whose schedule shrank reads)."""
        return self.schedule[min(max(tier, 0), len(self.schedule) - 1)]

    def tier_for(self, wait: float, *, at_least: int = 0) -> int:
        """The first tier (from ``at_least``) whose delay covers ``wait``: a record waiting in a
        tier then never holds up the records queued behind it for longer than the tier's delay.
        Waits are never longer than the longest delay of the tiers from ``at_least`` on (a
        Retry-After or a skip's wait is cut to it), so one covers it: a longer one would hold
        up the last tier's partition, every webhook's retries behind it, for that long."""
        for index in range(at_least, len(self.schedule)):
            if self.schedule[index] >= wait:
                return index
        return len(self.schedule) - 1
