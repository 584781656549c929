"""bridge.attempts: attempt records read back, the per-webhook log and its stats (pure)."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.attempts.book import ActivityBook
from bridge.attempts.keys import MAX_ATTEMPT_NUMBER
from bridge.attempts.log import LogQuery, decode_cursor, encode_cursor
from bridge.attempts.record import Attempt
from bridge.attempts.stats import LATENCY_BOUNDS, WebhookStats
from bridge.errors import InvalidRecord
from tests.support.attempt_logs import LogFactory

T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC).timestamp()


def stamp(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "delivery_id": "d1",
        "webhook_id": "wh",
        "event_id": "e1",
        "event_type": "post.created",
        "attempt": 1,
        "outcome": "success",
        "status": 200,
        "error": None,
        "duration_seconds": 0.05,
        "at": stamp(T0),
        "next": None,
    }
    base.update(changes)
    return base


def attempt(at: float = T0, **changes: Any) -> Attempt:
    return Attempt.of(record(at=stamp(at), **changes))


# ------------------------------------------------------------------------------- records


def test_an_attempt_record_reads_back_as_the_deliverer_wrote_it() -> None:
    parsed = Attempt.parse(json.dumps(record(status=503, outcome="failure")).encode())
    assert parsed.status_class == "5xx"
    assert parsed.at_seconds == T0
    assert parsed.as_dict()["status_class"] == "5xx"
    assert {k: parsed.as_dict()[k] for k in record()} == record(status=503, outcome="failure")


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"[1]",
        b"not json",
        json.dumps(record(attempt=0)).encode(),
        json.dumps(record(attempt=True)).encode(),
        json.dumps(record(outcome="maybe")).encode(),
        json.dumps(record(status="200")).encode(),
        json.dumps(record(duration_seconds=-1)).encode(),
        json.dumps(record(at="yesterday")).encode(),
        json.dumps(record(at="2024-01-15T10:00:00")).encode(),
        json.dumps(record(delivery_id="")).encode(),
        json.dumps(record(webhook_id=None)).encode(),
    ],
)
def test_what_is_not_an_attempt_record_is_refused_with_a_reason(value: bytes | None) -> None:
    with pytest.raises(InvalidRecord) as caught:
        Attempt.parse(value)
    assert caught.value.reason
    assert "yesterday" not in str(caught.value)  # values are never quoted


# ------------------------------------------------------------------------------------ log


def test_the_log_lists_newest_first_in_pages_that_meet_exactly(make_log: LogFactory) -> None:
    log = make_log(max_attempts=100, max_age=86400)
    for i in range(25):
        assert log.add(attempt(T0 + i, delivery_id=f"d{i:02}"), now=T0 + 30)
    seen: list[str] = []
    cursor = None
    while True:
        page = log.page(LogQuery(), now=T0 + 30, limit=10, cursor=cursor)
        seen += [a.delivery_id for a in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"d{i:02}" for i in reversed(range(25))]


def test_filters_combine(make_log: LogFactory) -> None:
    log = make_log(max_attempts=100, max_age=86400)
    log.add(attempt(T0, delivery_id="a"), now=T0)
    log.add(attempt(T0 + 1, delivery_id="b", outcome="failure", status=500), now=T0)
    log.add(attempt(T0 + 2, delivery_id="c", outcome="failure", status=None, error="timeout"), T0)
    log.add(attempt(T0 + 3, delivery_id="d", event_type="post.deleted"), now=T0)

    def ids(query: LogQuery) -> list[str]:
        return [a.delivery_id for a in log.page(query, now=T0 + 10).items]

    assert ids(LogQuery(outcome="failure")) == ["c", "b"]
    assert ids(LogQuery(status_class="none")) == ["c"]
    assert ids(LogQuery(status_class="2xx", event_type="post.created")) == ["a"]
    assert ids(LogQuery(since=T0 + 1, until=T0 + 3)) == ["c", "b"]
    with pytest.raises(ValueError):
        LogQuery(outcome="maybe")


def test_a_delivery_shows_every_attempt_in_order(make_log: LogFactory) -> None:
    log = make_log(max_attempts=100, max_age=86400)
    log.add(attempt(T0 + 60, attempt=3), now=T0 + 60)
    log.add(attempt(T0, attempt=1, outcome="failure", status=500, next="retry"), now=T0 + 60)
    log.add(attempt(T0 + 5, attempt=2, outcome="failure", status=502, next="retry"), T0 + 60)
    log.add(attempt(T0 + 1, delivery_id="other"), now=T0 + 60)
    assert [(a.attempt, a.status) for a in log.delivery("d1")] == [(1, 500), (2, 502), (3, 200)]
    assert log.delivery("missing") == []


def test_the_same_record_read_twice_is_kept_once() -> None:
    book = ActivityBook()
    assert book.add(attempt(), now=T0)
    assert not book.add(attempt(), now=T0)
    activity = book.get("wh")
    assert activity is not None and len(activity.log) == 1
    assert activity.stats.window("1h", T0).attempts == 1


def test_a_delivery_is_found_by_its_id_while_kept_and_the_index_forgets_it_after() -> None:
    book = ActivityBook(max_attempts=3, max_age=3600.0)
    now = T0 + 10
    for n in range(6):  # webhook a keeps its newest 3 deliveries
        assert book.add(attempt(T0 + n, delivery_id=f"a{n}", webhook_id="a"), now)
    book.add(attempt(T0, delivery_id="b0", webhook_id="b"), now)
    book.add(attempt(T0 + 1, delivery_id="b0", webhook_id="b", attempt=2), now)
    # the same id under another webhook (no worker writes it; a hostile record could)
    book.add(attempt(T0 + 2, delivery_id="b0", webhook_id="c"), now)
    assert book.delivery("a0") == [] and [a.delivery_id for a in book.delivery("a5")] == ["a5"]
    assert [(a.webhook_id, a.attempt) for a in book.delivery("b0")] == [
        ("b", 1),
        ("b", 2),
        ("c", 1),
    ]
    assert set(book._by_delivery) == {"a3", "a4", "a5", "b0"}  # evicted ones are not held
    book.forget("b")
    assert [a.webhook_id for a in book.delivery("b0")] == ["c"]
    book.forget("c")
    book.activities()[0].log.expire(T0 + 3600 + 10)  # a's attempts age out
    assert book.delivery("a5") == [] and book._by_delivery == {}


def test_the_log_is_bounded_by_count_and_age(make_log: LogFactory) -> None:
    log = make_log(max_attempts=3, max_age=100)
    for i in range(5):
        log.add(attempt(T0 + i, delivery_id=f"d{i}"), now=T0 + 5)
    assert [a.delivery_id for a in log.page(LogQuery(), now=T0 + 5).items] == ["d4", "d3", "d2"]
    assert not log.add(attempt(T0, delivery_id="old"), now=T0 + 5)  # older than a full log
    assert log.page(LogQuery(), now=T0 + 103).items[-1].delivery_id == "d3"
    assert log.page(LogQuery(), now=T0 + 1000).items == []
    assert log.delivery("d4") == []
    assert not log.add(attempt(T0, delivery_id="late"), now=T0 + 1000)


def as_cursor(raw: bytes) -> str:
    """``raw`` wrapped as :func:`encode_cursor` wraps its JSON."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Cursors whose JSON is well formed but names a position no kept attempt can have.
MADE_UP_CURSORS = {
    "time beyond the double range": as_cursor(b"[1" + b"0" * 400 + b',"d1",1]'),
    "NaN time": as_cursor(b'[NaN,"d1",1]'),
    "infinite time": as_cursor(b'[-Infinity,"d1",1]'),
    "negative attempt number": as_cursor(b'[1705312800.0,"d1",-1]'),
    "attempt number no key holds": as_cursor(f'[1705312800.0,"d1",{1 << 2040}]'.encode()),
}


@pytest.mark.parametrize(
    "cursor",
    ["", "x", "bm90IGpzb24", encode_cursor((1.0, "d", 1))[:-2], *MADE_UP_CURSORS.values()],
    ids=["empty", "x", "not json", "cut", *MADE_UP_CURSORS],
)
def test_a_cursor_that_is_not_ours_is_refused(cursor: str, make_log: LogFactory) -> None:
    """By both stores alike (a made-up position was a 500, or a page from one store only)."""
    log = make_log(max_attempts=3, max_age=100)
    for n in range(3):
        log.add(attempt(T0 + n, delivery_id=f"d{n}"), now=T0 + 10)
    with pytest.raises(ValueError):
        decode_cursor(cursor)
    with pytest.raises(ValueError):
        log.page(LogQuery(), now=T0 + 10, cursor=cursor)


_cursor_times = st.one_of(
    st.integers(-5, 5).map(lambda n: T0 + n),
    st.floats(),  # NaN and the infinities too, which json.dumps writes and json.loads takes
    st.integers(-(10**400), 10**400),
    st.booleans(),
    st.text(max_size=3),
)
_cursor_ids = st.one_of(st.sampled_from(["d0", "d1", "d2"]), st.text(max_size=4), st.none())
_cursor_numbers = st.one_of(
    st.integers(0, 4),
    st.integers(-(1 << 2100), 1 << 2100),
    st.sampled_from([MAX_ATTEMPT_NUMBER, MAX_ATTEMPT_NUMBER + 1]),
    st.floats(),
    st.booleans(),
)
#: Any cursor a client could send: positions near kept attempts', made-up positions, other
#: JSON, and text that is not a cursor at all.
cursors = st.one_of(
    st.tuples(_cursor_times, _cursor_ids, _cursor_numbers).map(
        lambda position: as_cursor(json.dumps(list(position)).encode())
    ),
    st.lists(_cursor_times, max_size=4).map(lambda other: as_cursor(json.dumps(other).encode())),
    st.text(max_size=20),
)


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.sampled_from(["a", "b", "c"]), st.integers(1, 3)),
        max_size=60,
    ),
    st.integers(1, 7),
    st.sampled_from([None, "success", "failure"]),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # make_log: a factory
def test_paging_lists_each_kept_attempt_once_in_order(
    make_log: LogFactory, rows: list[tuple[int, str, int]], limit: int, outcome: str | None
) -> None:
    log = make_log(max_attempts=40, max_age=10_000)
    for offset, delivery, number in rows:
        log.add(
            attempt(
                T0 + offset,
                delivery_id=delivery,
                attempt=number,
                outcome="success" if number == 3 else "failure",
            ),
            now=T0 + 60,
        )
    query = LogQuery(outcome=outcome)
    everything = log.page(query, now=T0 + 60, limit=1000).items
    paged: list[Attempt] = []
    cursor = None
    for _ in range(100):
        page = log.page(query, now=T0 + 60, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        paged += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    assert paged == everything
    keys = [(a.at_seconds, a.delivery_id, a.attempt) for a in paged]
    assert keys == sorted(set(keys), reverse=True)
    assert len(log) <= 40


@given(
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.integers(0, MAX_ATTEMPT_NUMBER),
)
def test_cursors_round_trip(at: float, delivery_id: str, number: int) -> None:
    assert decode_cursor(encode_cursor((at, delivery_id, number))) == (at, delivery_id, number)


# ---------------------------------------------------------------------------------- stats


def test_windows_count_what_they_cover() -> None:
    stats = WebhookStats()
    now = T0 + 10 * 86400
    stats.add(attempt(now - 30), now)  # this minute
    stats.add(attempt(now - 1800, outcome="failure", status=500), now)
    stats.add(attempt(now - 7200, outcome="failure", status=None, error="timeout"), now)
    stats.add(attempt(now - 3 * 86400), now)
    stats.add(attempt(now - 60, outcome="skipped", status=None, error="circuit_open"), now)
    stats.add(attempt(now - 8 * 86400), now)  # beyond every window
    hour, day, week = (stats.window(w, now) for w in ("1h", "24h", "7d"))
    assert (hour.attempts, hour.successes, hour.failures, hour.skipped) == (2, 1, 1, 1)
    assert hour.failure_ratio == 0.5
    assert (day.attempts, day.failures) == (3, 2)
    assert (week.attempts, week.successes) == (4, 2)
    assert stats.last_failure is not None and stats.last_failure.at_seconds == now - 1800
    assert stats.last_success is not None and stats.last_success.at_seconds == now - 30


@pytest.mark.parametrize(
    ("window", "age", "counted"),
    [
        ("1h", 3600, True),
        ("1h", 3600 + 30, True),  # the start of the minute an hour before this one
        ("1h", 3600 + 31, False),
        ("24h", 23.5 * 3600, True),
        ("24h", 86400 - 60, True),
        ("24h", 86400, True),
        ("24h", 86400 + 1830, True),  # the start of the hour a day before this one
        ("24h", 86400 + 1831, False),
        ("7d", 7 * 86400 - 1800, True),
        ("7d", 7 * 86400, True),
        ("7d", 7 * 86400 + 1830, True),
        ("7d", 7 * 86400 + 1831, False),
    ],
)
def test_a_window_covers_its_name_and_at_most_one_bucket_more(
    window: str, age: float, counted: bool
) -> None:
    """The current bucket is partly elapsed, so a window takes one whole bucket more than its
    name holds (the 24h window reached back 23-24 hours, missing attempts of the last day)."""
    now = T0 + 10 * 86400 + 1830  # 30 s into a minute, 30.5 minutes into an hour
    stats = WebhookStats()
    stats.add(attempt(now - age), now)
    assert stats.window(window, now).attempts == int(counted)


def test_stats_are_of_the_newest_webhook_of_an_id() -> None:
    """An id used again after a delete: the new webhook's attempts (a later created_at) start
    its stats afresh, and the deleted one's, read after them, are not counted."""
    now = T0 + 10 * 86400
    old, new = stamp(now - 86400), stamp(now - 600)
    stats = WebhookStats()
    stats.add(attempt(now - 3000, webhook_created_at=old), now)
    stats.add(attempt(now - 2000, outcome="failure", status=500, webhook_created_at=old), now)
    stats.add(attempt(now - 300, outcome="failure", status=503, webhook_created_at=new), now)
    stats.add(attempt(now - 200, delivery_id="late", webhook_created_at=old), now)
    for name in ("1h", "24h", "7d"):
        window = stats.window(name, now)
        assert (window.attempts, window.successes, window.failures) == (1, 0, 1), name
    assert stats.last_success is None
    assert stats.last_failure is not None and stats.last_failure.status == 503
    assert stats.webhook_created_at == new
    back = WebhookStats.from_dict(stats.to_dict())
    assert back.webhook_created_at == new and back.to_dict() == stats.to_dict()
    back.add(attempt(now - 100, webhook_created_at=old), now)
    assert back.window("1h", now).attempts == 1


def test_attempts_recorded_without_a_created_at_count_for_the_webhook_they_are_kept_with() -> None:
    """Records written before ``webhook_created_at`` was recorded: kept, and the first record
    naming a webhook does not drop them (an upgrade keeps a week of stats)."""
    now = T0 + 10 * 86400
    stats = WebhookStats()
    stats.add(attempt(now - 300), now)
    stats.add(attempt(now - 200, webhook_created_at=stamp(now - 86400)), now)
    stats.add(attempt(now - 100), now)
    assert stats.window("1h", now).attempts == 3


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["success", "failure"])),
        min_size=1,
        max_size=30,
    )
)
def test_stats_count_exactly_the_newest_webhooks_attempts(
    made: list[tuple[int, str]],
) -> None:
    """Attempts of up to four webhooks of one id (created an hour apart), in any order: the
    stats hold those of the newest one seen, and only those."""
    now = T0 + 10 * 86400
    created = [stamp(now - 5 * 3600 + k * 3600) for k in range(4)]
    stats = WebhookStats()
    for i, (k, outcome) in enumerate(made):
        status = 200 if outcome == "success" else 500
        one = attempt(now - 60, delivery_id=f"d{i}", outcome=outcome, status=status)
        one.webhook_created_at = created[k]
        stats.add(one, now)
    newest = max(k for k, _ in made)
    kept = [outcome for k, outcome in made if k == newest]
    window = stats.window("24h", now)
    assert (window.attempts, window.successes) == (len(kept), kept.count("success"))
    assert stats.webhook_created_at == created[newest]


def test_an_empty_window_has_no_ratio_or_latency() -> None:
    window = WebhookStats().window("24h", T0)
    assert (window.attempts, window.failure_ratio, window.latency_p50) == (0, None, None)


def test_buckets_are_dropped_once_no_window_reaches_them() -> None:
    stats = WebhookStats()
    for minute in range(600):
        stats.add(attempt(T0 + minute * 60), T0 + minute * 60)
    assert stats.buckets <= 60 + 11
    stats.expire(T0 + 30 * 86400)
    assert stats.buckets == 0


@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=200))
def test_latency_quantiles_are_within_the_bucket_that_holds_them(durations: list[float]) -> None:
    stats = WebhookStats()
    for i, duration in enumerate(durations):
        stats.add(attempt(T0, delivery_id=str(i), duration_seconds=duration), T0)
    window = stats.window("1h", T0)
    assert window.attempts == len(durations)
    for q, estimate in ((0.5, window.latency_p50), (0.99, window.latency_p99)):
        assert estimate is not None
        exact = sorted(durations)[max(0, math.ceil(q * len(durations)) - 1)]
        index = next(i for i, bound in enumerate(LATENCY_BOUNDS) if exact <= bound)
        lower = 0.0 if index == 0 else LATENCY_BOUNDS[index - 1]
        # The open bucket (30 s and more) reaches as far as the slowest attempt.
        upper = LATENCY_BOUNDS[index] if index < len(LATENCY_BOUNDS) - 1 else max(durations)
        assert lower - 1e-9 <= estimate <= upper + 1e-9
        assert min(durations) - 1e-9 <= estimate <= max(durations) + 1e-9


@given(st.floats(0.0, 100.0), st.integers(1, 50))
def test_attempts_that_all_took_the_same_time_give_that_time(duration: float, n: int) -> None:
    stats = WebhookStats()
    for i in range(n):
        stats.add(attempt(T0, delivery_id=str(i), duration_seconds=duration), T0)
    for name in ("1h", "24h", "7d"):
        window = stats.window(name, T0)
        assert window.latency_p50 == pytest.approx(duration)
        assert window.latency_p99 == pytest.approx(duration)


def test_quantiles_stay_within_the_fastest_and_slowest_attempts() -> None:
    """In a histogram bucket that holds every attempt, the estimate is interpolated between the
    fastest and the slowest rather than between the bucket's bounds (0 and 5 ms here; 30 s and
    no bound for the open bucket); in windows apart, each its own range."""
    stats = WebhookStats()
    for i, duration in enumerate((0.0038, 0.0039, 0.0040, 0.0041, 0.0042)):
        stats.add(attempt(T0, delivery_id=f"fast{i}", duration_seconds=duration), T0)
    window = stats.window("1h", T0)
    assert window.latency_p50 == pytest.approx(0.0040)
    assert window.latency_p99 == pytest.approx(0.0042, abs=1e-5)  # not 4.95 ms
    # Timeouts, an hour later (outside the hour window, inside the day's).
    later = T0 + 3 * 3600
    for i in range(4):
        stats.add(attempt(later, delivery_id=f"slow{i}", duration_seconds=30.5), later)
    assert stats.window("1h", later).latency_p50 == pytest.approx(30.5)
    day = stats.window("24h", later)
    assert 0.0038 <= day.latency_p50 <= 0.005  # type: ignore[operator]
    assert 30.4 < day.latency_p99 <= 30.5  # type: ignore[operator]  # not 30 s


def test_the_book_keeps_one_text_of_what_its_attempts_repeat() -> None:
    """A webhook's id and created_at and a known event type are held once, however many
    attempts repeat them; a type no event has is kept as read, and remembered nowhere."""
    import copy

    from bridge.attempts import book as book_module

    known = copy.copy(book_module._EVENT_TYPES)
    book = ActivityBook()
    created = "2024-01-15T09:00:00.000Z"
    kept = []
    for n, event_type in enumerate(["post.created", "post.created", "x.unknown"]):
        # each parsed from its own bytes: equal texts, distinct objects
        read = Attempt.parse(
            json.dumps(
                record(
                    delivery_id=f"d{n}",
                    event_type=event_type,
                    webhook_created_at=created,
                    endpoint="https://example.test:443",
                )
            ).encode()
        )
        assert read.endpoint == "https://example.test:443"
        assert book.add(read, now=T0)
        # Not shown by the log: not held either (a text of its own in each record).
        assert read.endpoint is None
        kept.append(read)
    first, second, unknown = kept
    assert first.webhook_id is second.webhook_id is unknown.webhook_id
    assert first.webhook_created_at is second.webhook_created_at is unknown.webhook_created_at
    assert first.event_type is second.event_type
    assert unknown.event_type == "x.unknown" and book_module._EVENT_TYPES == known
    assert [a.delivery_id for a in book.delivery("d1")] == ["d1"]


@pytest.mark.parametrize(
    "query",
    [
        {"event_type": "bogus.type"},
        {"status_class": "9xx"},
        {"status_class": "2XX"},
        {"since": 10.0, "until": 10.0},
        {"since": 10.0, "until": 5.0},
    ],
)
def test_a_query_the_api_refuses_is_refused(query: dict[str, Any]) -> None:
    """As ``/v1`` answers them 400, so the CLI's reading on Kafka refuses them (until
    2026-12-07 it listed nothing)."""
    with pytest.raises(ValueError):
        LogQuery(**query)
