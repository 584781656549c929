"""bridge.delivery.retry_policy: durations, the schedule, jitter, Retry-After and the tier a retry
waits in.

The policy is pure: randomness is injected (``rand``) and the clock is passed to
``parse_retry_after``, so every expectation below is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import format_duration, parse_duration, parse_schedule
from bridge.delivery.retry_policy import (
    DEFAULT_SCHEDULE,
    Decision,
    RetryPolicy,
    parse_retry_after,
)

NOW = datetime(2024, 1, 15, 10, 30, 0, tzinfo=UTC)


# -- parse_duration / parse_schedule / format_duration ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("200ms", 0.2),
        ("1500ms", 1.5),
        ("5s", 5.0),
        ("0.5s", 0.5),
        ("5", 5.0),
        ("2.5", 2.5),
        ("5m", 300.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        (" 5 s ", 5.0),
        ("10h", 36000.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", " ", "s", "ms", "5x", "5min", "5 m s", "-5s", "+5s", ".5s", "5.s", "1e3", "five", "5s5"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "schedule"),
    [
        ("5s,5m,30m,2h,5h,10h,10h", DEFAULT_SCHEDULE),
        ("5s, 1m , 2h", (5.0, 60.0, 7200.0)),
        ("5s,,1m,", (5.0, 60.0)),
        ("250ms", (0.25,)),
        ("10", (10.0,)),
    ],
)
def test_parse_schedule(text: str, schedule: tuple[float, ...]) -> None:
    assert parse_schedule(text) == pytest.approx(schedule)


@pytest.mark.parametrize("text", ["", ",", " , ", "0s", "5s,0", "5s,0ms", "5s,x", "5s;5m"])
def test_parse_schedule_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "200ms"),
        (1.5, "1500ms"),
        (5.0, "5s"),
        (90.0, "90s"),
        (300.0, "5m"),
        (5400.0, "90m"),
        (7200.0, "2h"),
        (36000.0, "10h"),
        (86400.0, "1d"),
        (172800.0, "2d"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_default_schedule_is_svix_like() -> None:
    assert DEFAULT_SCHEDULE == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    assert ",".join(format_duration(d) for d in DEFAULT_SCHEDULE) == "5s,5m,30m,2h,5h,10h,10h"
    # From the first failure to the last attempt: about 27.5 hours.
    assert 27.5 <= sum(DEFAULT_SCHEDULE) / 3600 < 27.6


@given(st.integers(min_value=1, max_value=10**9))
def test_format_duration_round_trips(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12)


# -- RetryPolicy.after_failure ---------------------------------------------------------------------


def test_empty_schedule_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(())


@pytest.mark.parametrize("schedule", [DEFAULT_SCHEDULE, (5.0,), (1.0, 2.0, 3.0)])
def test_attempt_numbering(schedule: tuple[float, ...]) -> None:
    policy = RetryPolicy(schedule, jitter=0.0)
    assert policy.max_attempts == len(schedule) + 1
    decisions = [policy.after_failure(n) for n in range(1, policy.max_attempts + 1)]
    # Attempt n failed: wait schedule[n - 1] in tier n - 1; after the last attempt, give up.
    assert decisions[:-1] == [
        Decision("retry", tier=n, delay=delay) for n, delay in enumerate(schedule)
    ]
    assert decisions[-1] == Decision("dead_letter")
    assert policy.after_failure(policy.max_attempts + 5).action == "dead_letter"


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.999999, 1.0])
@pytest.mark.parametrize("jitter", [0.1, 0.5])
def test_jitter_only_shortens(r: float, jitter: float) -> None:
    policy = RetryPolicy(DEFAULT_SCHEDULE, jitter=jitter, rand=lambda: r)
    for attempt, base in enumerate(DEFAULT_SCHEDULE, start=1):
        decision = policy.after_failure(attempt)
        assert decision.tier == attempt - 1
        assert decision.delay == pytest.approx(base * (1 - jitter * r))
        assert base * (1 - jitter) - 1e-9 <= decision.delay <= base


def test_jitter_with_the_default_random_source_stays_in_bounds() -> None:
    policy = RetryPolicy(jitter=0.1)
    delays = [policy.after_failure(2).delay for _ in range(200)]
    assert all(d is not None and 270.0 <= d <= 300.0 for d in delays)
    # It does spread: 200 draws are not all the same.
    assert len(set(delays)) > 1


def test_retry_after_longer_than_the_tier_is_honoured() -> None:
    policy = RetryPolicy(jitter=0.0)
    # Attempt 1 failed (tier 0 waits 5 s); the endpoint asked for 60 s: the first tier whose
    # delay covers 60 s is tier 1 (5 min).
    assert policy.after_failure(1, retry_after=60.0) == Decision("retry", tier=1, delay=60.0)


def test_retry_after_shorter_than_the_tier_does_not_shorten_it() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert policy.after_failure(1, retry_after=3.0) == Decision("retry", tier=0, delay=5.0)
    assert policy.after_failure(3, retry_after=60.0) == Decision("retry", tier=2, delay=1800.0)
    assert policy.after_failure(1, retry_after=0.0) == Decision("retry", tier=0, delay=5.0)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "tier"),
    [
        (1, 5.0, 0),  # equal to tier 0's delay: not longer, stays
        (1, 6.0, 1),
        (1, 300.0, 1),  # exactly covered by 5 min
        (1, 301.0, 2),
        (1, 1800.0, 2),
        (1, 3000.0, 3),
        (2, 301.0, 2),
        (2, 2000.0, 3),
        (4, 3500.0, 3),  # tier 3 (2 h) already covers it
    ],
)
def test_tier_for_long_retry_after_is_the_first_that_covers_it(
    attempt: int, retry_after: float, tier: int
) -> None:
    policy = RetryPolicy(jitter=0.0)
    decision = policy.after_failure(attempt, retry_after=retry_after)
    assert decision.tier == tier
    assert decision.delay == max(DEFAULT_SCHEDULE[attempt - 1], retry_after)


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(jitter=0.0, retry_after_cap=3600.0)
    # 1 day asked for, 1 hour granted: waits in the 2 h tier.
    assert policy.after_failure(1, retry_after=86400.0) == Decision("retry", tier=3, delay=3600.0)
    small_cap = RetryPolicy(jitter=0.0, retry_after_cap=100.0)
    assert small_cap.after_failure(1, retry_after=86400.0) == Decision("retry", tier=1, delay=100.0)


def test_a_wait_beyond_every_tier_is_cut_to_the_last_tiers_delay() -> None:
    # A record waiting longer than its tier's delay would hold up every retry behind it in
    # that partition (other webhooks' too): the last tier's delay bounds every wait.
    policy = RetryPolicy((5.0, 60.0, 120.0), jitter=0.0, retry_after_cap=3600.0)
    assert policy.after_failure(1, retry_after=600.0) == Decision("retry", tier=2, delay=120.0)
    assert policy.after_skip(wait=600.0) == Decision("retry", tier=2, delay=120.0)


def test_a_wait_is_cut_to_the_longest_delay_not_the_last_one() -> None:
    """Schedules need not increase: a Retry-After is cut to the longest delay of the tiers the
    retry may go to, and a skip's wait to the schedule's longest (until 2026-12-07 both were
    cut to the last delay, here 60 s where the endpoint asked for 30 min)."""
    policy = RetryPolicy((5.0, 3600.0, 60.0), jitter=0.0, retry_after_cap=7200.0)
    assert policy.after_failure(1, retry_after=1800.0) == Decision("retry", tier=1, delay=1800.0)
    assert policy.after_failure(1, retry_after=9000.0) == Decision("retry", tier=1, delay=3600.0)
    assert policy.after_skip(wait=1800.0) == Decision("retry", tier=1, delay=1800.0)
    assert policy.after_skip(deferred=1000) == Decision("retry", tier=1, delay=3600.0)
    # From the last tier on, 60 s is the longest: a longer wait would hold its partition up.
    assert policy.after_failure(3, retry_after=1800.0) == Decision("retry", tier=2, delay=60.0)


def test_each_deferral_of_a_delivery_waits_twice_the_one_before_up_to_the_cap() -> None:
    """An endpoint that never has room had each of its deliveries tried every 5 s, the
    deferrals growing with its backlog until they took most of a worker's CPU (until
    2026-12-06)."""
    policy = RetryPolicy(jitter=0.0, retry_after_cap=3600.0)
    delays = [policy.after_skip(deferred=n).delay for n in range(12)]
    assert delays[:4] == [5.0, 10.0, 20.0, 40.0]
    assert delays[-1] == 3600.0 and all(a <= b for a, b in zip(delays, delays[1:], strict=False))
    # A circuit that opens later than the backoff still sets the wait.
    assert policy.after_skip(wait=300.0, deferred=1).delay == 300.0
    assert policy.after_skip(wait=1.0, deferred=3).delay == 40.0
    # Whatever the count, no wait passes the cap or the last tier's delay.
    short = RetryPolicy((5.0, 60.0), jitter=0.0, retry_after_cap=3600.0)
    assert short.after_skip(deferred=1000).delay == 60.0


@given(
    schedule=st.lists(st.floats(0.1, 1e5), min_size=1, max_size=8),
    wait=st.floats(0.0, 1e7),
    attempt=st.integers(1, 8),
)
def test_no_decision_waits_longer_than_its_tiers_delay(
    schedule: list[float], wait: float, attempt: int
) -> None:
    policy = RetryPolicy(schedule, jitter=0.0, retry_after_cap=86400.0)
    decisions = [policy.after_skip(wait=wait), policy.after_skip(wait=wait, deferred=attempt * 4)]
    if attempt < policy.max_attempts:
        decisions.append(policy.after_failure(attempt, retry_after=wait))
    for decision in decisions:
        assert decision.tier is not None
        assert decision.delay <= max(policy.schedule[decision.tier], policy.schedule[0])


def test_retry_after_never_moves_a_retry_to_an_earlier_tier() -> None:
    # Schedules need not increase: the tier is searched from the attempt's own tier on.
    policy = RetryPolicy((100.0, 5.0, 300.0), jitter=0.0)
    assert policy.after_failure(2, retry_after=50.0) == Decision("retry", tier=2, delay=50.0)


def test_retry_after_beats_a_jittered_delay() -> None:
    # Jitter shortened 300 s to 270 s; the endpoint asked for 280 s.
    policy = RetryPolicy(jitter=0.1, rand=lambda: 1.0)
    decision = policy.after_failure(2, retry_after=280.0)
    assert decision == Decision("retry", tier=1, delay=280.0)


def test_retry_after_does_not_revive_an_exhausted_delivery() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert policy.after_failure(policy.max_attempts, retry_after=10.0) == Decision("dead_letter")


# Delays, Retry-After values and caps of comparable size, so that a Retry-After often falls
# between tiers, including of schedules that are not increasing.
seconds = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
schedules = st.lists(st.floats(min_value=0.001, max_value=1e4, allow_nan=False), min_size=1)
maybe_seconds = st.none() | seconds


@given(
    schedule=schedules,
    data=st.data(),
    retry_after=maybe_seconds,
    cap=seconds,
    jitter=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    r=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
def test_delay_never_exceeds_the_tier_or_the_capped_retry_after(
    schedule: list[float],
    data: st.DataObject,
    retry_after: float | None,
    cap: float,
    jitter: float,
    r: float,
) -> None:
    attempt = data.draw(st.integers(min_value=1, max_value=len(schedule)))
    policy = RetryPolicy(schedule, jitter=jitter, retry_after_cap=cap, rand=lambda: r)
    decision = policy.after_failure(attempt, retry_after)
    base = schedule[attempt - 1]
    wanted = min(retry_after, cap) if retry_after is not None else 0.0
    assert decision.action == "retry"
    assert decision.delay is not None and decision.tier is not None
    assert decision.delay <= max(base, wanted)
    assert decision.delay >= base * (1 - jitter) - 1e-9
    # A retry never moves to an earlier (shorter) tier than its attempt's.
    assert attempt - 1 <= decision.tier < len(schedule)


# -- parse_retry_after -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("86400", 86400.0),
        # HTTP dates (RFC 9110 IMF-fixdate, and the obsolete forms it tolerates).
        ("Mon, 15 Jan 2024 10:40:00 GMT", 600.0),
        ("Mon, 15 Jan 2024 10:30:30 GMT", 30.0),
        ("Mon, 15 Jan 2024 12:30:00 +0100", 3600.0),
        ("Mon, 15 Jan 2024 10:40:00 -0000", 600.0),  # no zone given: UTC
        ("Monday, 15-Jan-24 10:40:00 GMT", 600.0),  # RFC 850
        ("Mon Jan 15 10:40:00 2024", 600.0),  # asctime
        ("Mon, 5 Jan 2024 10:30:00 GMT", 0.0),  # a one-digit day, as some senders write it
        ("mon, 15 jan 2024 10:40:00 gmt", 600.0),  # case and spaces as Python's parser takes
        ("MON,  15 JAN 2024  10:40:00 UT", 600.0),
        ("Mon, 15 Jan 2024 10:30:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: due now
        ("Mon, 15 Jan 2024 10:29:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    # Superscript and non-ASCII digits pass str.isdigit() but are not delta-seconds.
    [None, "", "   ", "soon", "1.5", "-5", "12abc", "0x10", "Mon, 99 Foo 2024", "∞", "²", "١٢٠"]
    # Dates past the calendar (OverflowError, until 2026-12-05 a bridge error that
    # dead-lettered the delivery at once).
    + [
        "Mon, 01 Jan 2030 99999999999999999999:00:00 GMT",
        "Mon, 01 Jan 99999999999 10:00:00 GMT",
        "Mon, 99999999999 Jan 2030 10:00:00 GMT",
        "Mon, 01 Jan 2030 10:00:00 +99999999999",
        # A date and more: taken for the date until 2026-12-07.
        "Mon, 15 Jan 2024 10:40:00 GMT garbage",
        "Mon, 15 Jan 2024 10:40:00 GMT, Tue, 16 Jan 2024 10:40:00 GMT",
        "x Mon, 15 Jan 2024 10:40:00 GMT",
        "Mon, 15 Jan 2024 10:40 GMT",
    ],
)
def test_parse_retry_after_garbage(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


@given(st.integers(min_value=0, max_value=10**12))
def test_parse_retry_after_any_delta_seconds(seconds: int) -> None:
    assert parse_retry_after(str(seconds), NOW) == float(seconds)


_NUMBER = st.integers(min_value=-(10**25), max_value=10**25).map(str) | st.sampled_from(
    ["00", "60", "99", "9999", "10000", "0001"]
)
#: Strings shaped as HTTP dates, each part any number: what an endpoint may send.
_DATE_SHAPED = st.builds(
    "{}, {} {} {} {}:{}:{} {}".format,
    st.sampled_from(["Mon", "Sun", "Monday", "Xyz"]),
    _NUMBER,
    st.sampled_from(["Jan", "Feb", "Dec", "Foo"]),
    _NUMBER,
    _NUMBER,
    _NUMBER,
    _NUMBER,
    st.sampled_from(["GMT", "UTC", "-0000", "+2359", "-2359"]) | _NUMBER.map("+{}".format),
)


@given(st.text(max_size=40) | st.text(alphabet="0123456789²³¹٣ ", max_size=8) | _DATE_SHAPED)
def test_parse_retry_after_never_raises(value: str) -> None:
    # Header values come from the endpoint; whatever they hold, the answer is a non-negative
    # number of seconds or None, never an exception.
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0.0
