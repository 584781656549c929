"""bridge.delivery.recent_answers and SlowEndpoints.remember: what a starting worker takes from
the attempts its predecessors recorded (which endpoints answered quickly, which are still
slow), and what it leaves out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.attempts.record import Attempt
from bridge.contract import jsoncanon
from bridge.contract.events import format_timestamp
from bridge.delivery import limits
from bridge.delivery.limits import PROBE, QUICK, SLOW, SLOW_FOR, UNPROVEN, SlowEndpoints
from bridge.delivery.recent_answers import RecentAnswers
from bridge.subscriptions.webhook import Webhook, parse_webhook
from tests.support.builders import webhook_record
from tests.support.clocks import FakeClock

NOW = 1_765_000_000.0  # wall time of the read
CREATED = "2025-01-01T00:00:00.000Z"


def hook(webhook_id: str, url: str, **changes: Any) -> Webhook:
    """A webhook as WebhookStore writes it: created and last changed at CREATED."""
    times = {"created_at": CREATED, "updated_at": CREATED}
    record = webhook_record(id=webhook_id, url=url, **{**times, **changes})
    webhook = parse_webhook(webhook_id.encode(), jsoncanon.dumps(record))
    assert webhook is not None
    return webhook


def attempt(webhook_id: str, ago: float, duration: float, **changes: Any) -> Attempt:
    record: dict[str, Any] = {
        "delivery_id": "d-" + webhook_id,
        "webhook_id": webhook_id,
        "event_type": "post.created",
        "attempt": 1,
        "outcome": "success",
        "duration_seconds": duration,
        "at": format_timestamp_of(NOW - ago),
        "webhook_created_at": CREATED,
    }
    record.update(changes)
    return Attempt.of(record)


def format_timestamp_of(seconds: float) -> str:
    from datetime import UTC, datetime

    return format_timestamp(datetime.fromtimestamp(seconds, UTC))


def table(*webhooks: Webhook) -> Any:
    return {w.id: w for w in webhooks}.get


async def test_the_newest_answer_of_each_webhook_decides_its_endpoint() -> None:
    answers = RecentAnswers(now=NOW)
    # "q": slow once, quick since; "s": quick once, slow since (read out of order).
    answers.add(attempt("q", 100, 30.0))
    answers.add(attempt("q", 10, 0.05))
    answers.add(attempt("s", 10, 30.0, outcome="failure", error="timeout"))
    answers.add(attempt("s", 100, 0.05))
    webhooks = table(hook("q", "https://q.example/a"), hook("s", "https://s.example/a"))
    proven, slow = await answers.endpoints(webhooks, NOW)
    assert proven == ["https://q.example:443"]
    assert slow == {"https://s.example:443": SLOW_FOR - 10}


async def test_a_quick_failure_proves_its_endpoint_and_no_request_says_nothing() -> None:
    """As an answer heard live: an error answered within SLOW_AFTER (a 500, a refused
    connection) is no hang. A skipped attempt, or one the SSRF guard refused, made no request."""
    answers = RecentAnswers(now=NOW)
    answers.add(attempt("e", 5, 0.01, outcome="failure", status=500, error="http_status"))
    answers.add(attempt("k", 5, 0.0, outcome="skipped", error="circuit_open"))
    answers.add(attempt("f", 5, 0.0, outcome="failure", error="destination_forbidden"))
    webhooks = table(
        hook("e", "https://e.example/"),
        hook("k", "https://k.example/"),
        hook("f", "https://f.example/"),
    )
    assert await answers.endpoints(webhooks, NOW) == (["https://e.example:443"], {})
    assert answers.skipped == 2


async def test_a_request_cut_short_by_a_stopping_worker_is_no_answer() -> None:
    """``interrupted``, recorded with no duration as a worker stops with requests out (to the
    endpoints that hang above all): taken as an answer, it made every one of them quick to the
    next worker. The timeout before it stays the newest answer."""
    answers = RecentAnswers(now=NOW)
    answers.add(attempt("h", 40, 30.0, outcome="failure", error="timeout"))
    answers.add(attempt("h", 5, 0.0, outcome="failure", error="interrupted"))
    answers.add(attempt("n", 5, 0.0, outcome="failure", error="interrupted"))
    webhooks = table(hook("h", "https://h.example/"), hook("n", "https://n.example/"))
    assert await answers.endpoints(webhooks, NOW) == ([], {"https://h.example:443": SLOW_FOR - 40})
    assert answers.skipped == 2


async def test_a_producers_record_without_updated_at_is_left_out() -> None:
    """When it changed is not known: its URL may be another than the attempt's."""
    answers = RecentAnswers(now=NOW)
    answers.add(attempt("p", 10, 0.01))
    record = webhook_record(id="p", url="https://p.example/", created_at=CREATED)
    webhook = parse_webhook(b"p", jsoncanon.dumps(record))
    assert webhook is not None and webhook.updated_at is None
    assert await answers.endpoints(table(webhook), NOW) == ([], {})


async def test_answers_are_judged_by_the_time_they_are_remembered_at() -> None:
    """The first delivery may come long after the read (an idle worker): slowness left is
    counted to then, and answers older than the read's reach by then are left out."""
    answers = RecentAnswers(now=NOW, since=3600)
    answers.add(attempt("s", 10, 30.0))
    answers.add(attempt("q", 3500, 0.01))
    answers.add(attempt("old", 3700, 0.01))  # beyond the reach when read
    webhooks = table(
        hook("s", "https://s.example/"),
        hook("q", "https://q.example/"),
        hook("old", "https://old.example/"),
    )
    assert answers.skipped == 1
    assert await answers.endpoints(webhooks, NOW + 200) == (
        [],
        {"https://s.example:443": SLOW_FOR - 210},
    )


async def test_slowness_heard_longer_ago_than_it_lasts_is_over() -> None:
    answers = RecentAnswers(now=NOW)
    answers.add(attempt("old", SLOW_FOR + 1, 30.0))
    assert await answers.endpoints(table(hook("old", "https://old.example/")), NOW) == ([], {})


async def test_answers_stamped_far_ahead_of_the_clock_are_not_taken() -> None:
    answers = RecentAnswers(now=NOW)
    answers.add(attempt("f", -3600, 0.01))
    answers.add(attempt("f", 60, 30.0))
    # The one from the future would have been the newest and made it quick.
    assert await answers.endpoints(table(hook("f", "https://f.example/")), NOW) == (
        [],
        {"https://f.example:443": SLOW_FOR - 60},
    )


async def test_a_webhook_deleted_recreated_or_changed_since_its_attempt_is_left_out() -> None:
    """Its URL may be another now: the answer was not its endpoint's."""
    answers = RecentAnswers(now=NOW)
    for webhook_id in ("gone", "again", "moved", "kept"):
        answers.add(attempt(webhook_id, 60, 0.01))
    webhooks = table(
        hook("again", "https://again.example/", created_at="2025-06-01T00:00:00.000Z"),
        hook("moved", "https://moved.example/", updated_at=format_timestamp_of(NOW - 30)),
        hook("kept", "https://kept.example/", updated_at=format_timestamp_of(NOW - 90)),
    )
    assert await answers.endpoints(webhooks, NOW) == (["https://kept.example:443"], {})


async def test_webhooks_on_one_endpoint_it_is_judged_by_the_newest_answer() -> None:
    answers = RecentAnswers(now=NOW)
    answers.add(attempt("a", 20, 0.01))
    answers.add(attempt("b", 10, 30.0))
    webhooks = table(hook("a", "https://shared.example/a"), hook("b", "https://shared.example/b"))
    assert await answers.endpoints(webhooks, NOW) == (
        [],
        {"https://shared.example:443": SLOW_FOR - 10},
    )


async def test_a_record_naming_its_endpoint_is_that_endpoints_answer() -> None:
    """Since 2026-12-07 a record names the endpoint its request went to. A producer that moved
    a webhook to another URL and kept its updated_at made the new endpoint take the old one's
    answers (the table said the webhook was unchanged since); and an answer needs no webhook of
    the table (deleted, re-created, or without updated_at: the endpoint answered all the same)."""
    answers = RecentAnswers(now=NOW)
    answers.add(attempt("m", 10, 0.01, endpoint="https://old.example:443"))
    answers.add(attempt("gone", 10, 30.0, endpoint="https://slow.example:443"))
    record = webhook_record(id="p", url="https://p.example/", created_at=CREATED)
    answers.add(attempt("p", 10, 0.01, endpoint="https://p.example:443"))
    producers = parse_webhook(b"p", jsoncanon.dumps(record))
    assert producers is not None and producers.updated_at is None
    # "m" moved to new.example, its updated_at copied from before its attempt.
    webhooks = table(hook("m", "https://new.example/hook"), producers)
    proven, slow = await answers.endpoints(webhooks, NOW)
    assert sorted(proven) == ["https://old.example:443", "https://p.example:443"]
    assert slow == {"https://slow.example:443": SLOW_FOR - 10}
    assert len(answers) == 3


async def test_an_endpoint_is_judged_by_its_newest_answer_whichever_record_names_it() -> None:
    """During a rolling upgrade records of both forms are read: a record naming no endpoint
    counts for its webhook's, and the newest answer of the endpoint decides."""
    for quick_first in (True, False):
        answers = RecentAnswers(now=NOW)
        old_form = attempt("a", 20 if quick_first else 10, 0.01 if quick_first else 30.0)
        new_form = attempt(
            "b",
            10 if quick_first else 20,
            30.0 if quick_first else 0.01,
            endpoint="https://shared.example:443",
        )
        answers.add(old_form)
        answers.add(new_form)
        webhooks = table(hook("a", "https://shared.example/a"))
        proven, slow = await answers.endpoints(webhooks, NOW)
        assert (proven, slow) == ([], {"https://shared.example:443": SLOW_FOR - 10})


async def test_a_record_that_is_no_attempt_is_skipped() -> None:
    answers = RecentAnswers(now=NOW)
    for value in (None, b"", b"{", b"[]", b'{"webhook_id": "w"}', b"x" * 20_000):
        answers.add_value(value)
    answers.add_value(jsoncanon.dumps(attempt("q", 10, 0.01).as_dict()))
    assert (answers.skipped, answers.taken, len(answers)) == (6, 1, 1)


async def test_a_webhook_whose_url_no_one_could_use_is_left_out() -> None:
    answers = RecentAnswers(now=NOW)
    answers.add(attempt("bad", 10, 0.01))
    record = webhook_record(id="bad", url="not a url", created_at=CREATED)
    webhook = parse_webhook(b"bad", jsoncanon.dumps(record))
    assert webhook is not None
    assert await answers.endpoints(table(webhook), NOW) == ([], {})


def test_remembered_endpoints_are_judged_as_if_heard_here() -> None:
    clock = FakeClock(1000.0)
    slow = SlowEndpoints(4, clock=clock)
    A, B, C = "https://a.example:443", "https://b.example:443", "https://c.example:443"
    slow.remember([A], {B: 100.0})
    assert slow.judge(A, "site_id:s") == QUICK
    assert slow.judge(B, "site_id:t") == SLOW
    assert slow.judge(C, "site_id:u") == UNPROVEN
    clock.now += 100
    assert slow.judge(B, "site_id:t") == PROBE  # its slowness over: measured again


def test_remembering_never_ends_a_slowness_heard_here() -> None:
    """Remembered after live answers (never so as the worker wires it, before its first
    request): a slowness heard here stays, a remembered one is taken as the newer news."""
    clock = FakeClock(1000.0)
    slow = SlowEndpoints(4, clock=clock)
    A, B = "https://a.example:443", "https://b.example:443"
    slow.observe((A, None), 30.0, probe=False)  # slow here
    slow.observe((B, None), 0.01, probe=False)  # quick here
    slow.remember([A], {B: 50.0})
    assert slow.judge(A) == SLOW
    # B is slow for what it was remembered (the newer news of it), then probed.
    assert slow.judge(B) == SLOW
    clock.now += 50
    assert slow.judge(B) == PROBE
    clock.now += SLOW_FOR
    assert slow.judge(A) == PROBE


def test_remembered_slownesses_beyond_the_bound_keep_those_that_last_longest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "_MAX_REMEMBERED", 3)
    clock = FakeClock(1000.0)
    slow = SlowEndpoints(4, clock=clock)
    slow.remember([], {f"k{n}": float(10 * n + 1) for n in range(6)})
    assert list(slow._until) == ["k3", "k4", "k5"]


@given(st.lists(st.floats(min_value=0.5, max_value=SLOW_FOR * 2), min_size=1, max_size=40))
def test_remembered_slownesses_end_in_order_and_are_all_forgotten(lefts: list[float]) -> None:
    """Whatever lengths are remembered, each key is slow for exactly what it was given (at
    most SLOW_FOR), and the map empties once every slowness is over (the forgetting reads the
    oldest entries first: their order is the order they end)."""
    clock = FakeClock(1000.0)
    slow = SlowEndpoints(4, clock=clock)
    keys = {f"https://h{n}.example:443": left for n, left in enumerate(lefts)}
    slow.remember([], keys)
    ends = list(slow._until.values())
    assert ends == sorted(ends)
    for key, left in keys.items():
        assert slow._until[key] == 1000.0 + min(left, SLOW_FOR)
    clock.now += SLOW_FOR + 1
    slow.observe(("https://fresh.example:443", None), 30.0, probe=False)
    for _ in range(len(keys) // 8 + 1):
        slow.observe(("https://fresh.example:443", None), 30.0, probe=False)
    assert list(slow._until) == ["https://fresh.example:443"]
