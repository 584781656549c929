"""bridge.attempts.wire: a webhook's log and stats sent between workers come back equal (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.attempts.book import ActivityBook
from bridge.attempts.stats import WINDOWS, WebhookStats
from bridge.attempts.wire import activity_from_dict, activity_to_dict, attempts_from_list
from bridge.contract import jsoncanon
from tests.unit.attempts.test_attempts import T0, attempt


def test_an_activity_comes_back_equal_through_json() -> None:
    book = ActivityBook(max_attempts=3, max_age=7 * 86400.0)
    for n in range(5):  # more than the log keeps: the stats count all five
        outcome = "failure" if n % 2 else "success"
        book.add(
            attempt(T0 + n * 700, delivery_id=f"d{n}", outcome=outcome, duration_seconds=n / 10),
            T0 + 4000,
        )
    held = book.get("wh")
    assert held is not None
    data = jsoncanon.loads(jsoncanon.dumps(activity_to_dict(held)))
    back = activity_from_dict(data, max_attempts=3, max_age=7 * 86400.0, now=T0 + 4000)
    assert back.log.attempts() == held.log.attempts()
    assert len(back.log) == 3
    for window in WINDOWS:
        assert back.stats.window(window, T0 + 4000) == held.stats.window(window, T0 + 4000)
    assert back.stats.window("24h", T0 + 4000).attempts == 5
    assert back.stats.last_success == held.stats.last_success
    assert back.stats.last_failure == held.stats.last_failure


def test_latency_extremes_come_back_and_buckets_keep_their_shape() -> None:
    """The fastest and slowest attempts travel apart from the buckets' lists, which keep the
    six items a worker without them reads; stats from such a worker (no extremes) are read,
    their quantiles interpolated within the histogram buckets alone."""
    stats = WebhookStats()
    for i, duration in enumerate((0.0038, 0.0042)):
        stats.add(attempt(T0, delivery_id=f"d{i}", duration_seconds=duration), T0)
    data = jsoncanon.loads(jsoncanon.dumps(stats.to_dict()))
    assert isinstance(data, dict)
    assert all(len(bucket) == 6 for name in ("minutes", "hours") for bucket in data[name])
    back = WebhookStats.from_dict(data)
    assert back.window("1h", T0) == stats.window("1h", T0)
    assert back.window("1h", T0).latency_p50 == pytest.approx(0.004)
    del data["latency_extremes"]
    older = WebhookStats.from_dict(data).window("1h", T0)
    assert older.attempts == 2
    assert older.latency_p50 == pytest.approx(0.0025)  # the middle of 0-5 ms


@pytest.mark.parametrize(
    "extremes",
    [
        {"minutes": [[0, 0.001, 0.002]]},  # no such bucket
        {"minutes": [["x", 0.001, 0.002]]},
        {"hours": [[1, 0.003]]},
        "fast",
    ],
)
def test_latency_extremes_that_do_not_fit_are_a_value_error(extremes: object) -> None:
    stats = WebhookStats()
    stats.add(attempt(T0, duration_seconds=0.004), T0)
    data = stats.to_dict()
    data["latency_extremes"] = extremes
    with pytest.raises(ValueError):
        WebhookStats.from_dict(data)


@pytest.mark.parametrize("pair", [(0.002, 0.001), (-1.0, 0.001), ("nan", 0.001), (0.001, "x")])
def test_latency_extremes_out_of_order_are_a_value_error(pair: tuple[object, object]) -> None:
    stats = WebhookStats()
    stats.add(attempt(T0, duration_seconds=0.004), T0)
    data = stats.to_dict()
    minute = data["minutes"][0][0]
    data["latency_extremes"] = {"minutes": [[minute, *pair]], "hours": []}
    with pytest.raises(ValueError):
        WebhookStats.from_dict(data)


def test_empty_stats_come_back_empty() -> None:
    stats = WebhookStats.from_dict(WebhookStats().to_dict())
    assert dataclasses.astuple(stats.window("7d", T0))[1:5] == (0, 0, 0, 0)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"attempts": []},
        {"attempts": "x", "stats": WebhookStats().to_dict()},
        {"attempts": [], "stats": {"minutes": [[1, 1, 1, 0, 0, [1]]], "hours": []}},
        {"attempts": [{"attempt": 0}], "stats": WebhookStats().to_dict()},
    ],
)
def test_anything_else_is_a_value_error(data: object) -> None:
    with pytest.raises(ValueError):
        activity_from_dict(data, max_attempts=3, max_age=7 * 86400.0, now=T0)


def test_attempts_from_list() -> None:
    one = attempt(T0)
    assert attempts_from_list([one.as_dict()]) == [one]
    with pytest.raises(ValueError):
        attempts_from_list({"attempts": []})


def test_the_response_fields_come_back_through_json() -> None:
    """What the owner of a log sends another worker: the size, and a kept prefix with control
    characters, escaped by JSON and unchanged on arrival."""
    kept = attempt(T0, response_bytes=70, response_truncated=True, response_prefix="\x00\x1b[2J")
    plain = attempt(T0 + 1, delivery_id="d2", response_bytes=2)
    data = jsoncanon.loads(jsoncanon.dumps([kept.as_dict(), plain.as_dict()]))
    assert attempts_from_list(data) == [kept, plain]
    assert "response_prefix" not in data[1]
