"""The delivery log, stats, recovery and dead-letter routes over in-memory sources and runner."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.admin.dead_letters import SKIP_REASONS, STAMP_MARGIN, DeadLetterFilter, ReplayReport
from bridge.api.activity import EndpointStatus
from bridge.api.app import REPLAY_SHARE, ApiConfig, create_app
from bridge.api.auth import Principal, TokenSet
from bridge.api.control import (
    DEFAULT_REDELIVER_LOOKBACK,
    REDELIVER_MARGIN,
    ControlService,
    decode_replay_cursor,
    encode_replay_cursor,
    redelivery_since,
)
from bridge.api.problems import Problem
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService
from bridge.attempts.log import decode_cursor, encode_cursor
from bridge.attempts.record import Attempt
from bridge.contract.events import MAX_DATA_DEPTH, Event, format_timestamp
from bridge.cursors import decode_cursor as decode_raw_cursor
from bridge.cursors import encode_cursor as encode_raw_cursor
from bridge.delivery.dead_letters import dead_letter_record
from bridge.delivery.job import SourceRef
from bridge.subscriptions.webhook import Webhook, webhook_from_record
from tests.support.builders import webhook_record
from tests.support.waiting import eventually
from tests.unit.api.conftest import (
    ADMIN,
    NOW,
    SITE_1,
    TOKENS,
    USER_1,
    Api,
    MemoryActivity,
    MemoryDeadLetters,
    Runner,
    attempt,
    auth,
    control_service,
    dead_letter,
)
from tests.unit.attempts.test_attempts import MADE_UP_CURSORS, cursors


async def problem(response: ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    result: dict[str, Any] = await response.json()
    return result


async def get_json(api: Api, path: str) -> dict[str, Any]:
    response = await api.client.get(path, headers=auth())
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


def fields(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["field"], e["reason"]) for e in result.get("errors", [])]


def failed_twice_then_delivered(api: Api, delivery_id: str = "d1", webhook_id: str = "wh_1"):
    api.activity.add(
        attempt(delivery_id, 1, webhook_id=webhook_id, at=NOW - 300, status=500),
        attempt(delivery_id, 2, webhook_id=webhook_id, at=NOW - 200, status=503),
        attempt(
            delivery_id,
            3,
            webhook_id=webhook_id,
            at=NOW - 100,
            outcome="success",
            status=200,
            next=None,
        ),
    )


async def test_attempts_newest_first_filtered_and_paged(api: Api) -> None:
    await api.create(id="wh_1")
    failed_twice_then_delivered(api)
    response = await api.client.get("/v1/webhooks/wh_1/attempts", headers=auth())
    assert response.status == 200
    page = await response.json()
    assert [(a["attempt"], a["status"], a["status_class"]) for a in page["items"]] == [
        (3, 200, "2xx"),
        (2, 503, "5xx"),
        (1, 500, "5xx"),
    ]
    assert page["next_cursor"] is None

    failures = await (
        await api.client.get("/v1/webhooks/wh_1/attempts?outcome=failure", headers=auth())
    ).json()
    assert [a["attempt"] for a in failures["items"]] == [2, 1]
    since = "2026-01-15T10:26:00Z"  # NOW - 240 s: attempts 2 and 3
    until = "2026-01-15T10:28:30%2B00:00"  # NOW - 90 s, exclusive
    ranged = await (
        await api.client.get(
            f"/v1/webhooks/wh_1/attempts?since={since}&until={until}", headers=auth()
        )
    ).json()
    assert [a["attempt"] for a in ranged["items"]] == [3, 2]

    first = await (
        await api.client.get("/v1/webhooks/wh_1/attempts?limit=2", headers=auth())
    ).json()
    assert [a["attempt"] for a in first["items"]] == [3, 2] and first["next_cursor"]
    rest = await (
        await api.client.get(
            f"/v1/webhooks/wh_1/attempts?limit=2&cursor={first['next_cursor']}", headers=auth()
        )
    ).json()
    assert [a["attempt"] for a in rest["items"]] == [1] and rest["next_cursor"] is None


async def test_attempts_filtered_by_trigger_and_recovery(api: Api) -> None:
    """The event's own attempts, an operator's, and one recovery's (with its retries) alone."""
    await api.create(id="wh_1")
    failed_twice_then_delivered(api)
    api.activity.add(
        attempt("d1", 1, at=NOW - 50, recovery_id="rec_a"),
        attempt("d1", 2, at=NOW - 40, recovery_id="rec_a", outcome="success", status=200),
        attempt("d1", 1, at=NOW - 30, recovery_id="rec_b", outcome="success", status=200),
        attempt("d2", 2, at=NOW - 20, manual=True, outcome="success", status=200),  # a replay
    )

    async def listed(query: str) -> list[tuple[str, int, str, str | None]]:
        response = await api.client.get(f"/v1/webhooks/wh_1/attempts?{query}", headers=auth())
        assert response.status == 200, await response.text()
        return [
            (a["delivery_id"], a["attempt"], a["trigger"], a["recovery_id"])
            for a in (await response.json())["items"]
        ]

    assert await listed("trigger=scheduled") == [
        ("d1", 3, "scheduled", None),
        ("d1", 2, "scheduled", None),
        ("d1", 1, "scheduled", None),
    ]
    assert await listed("trigger=manual") == [
        ("d2", 2, "manual", None),
        ("d1", 1, "manual", "rec_b"),
        ("d1", 2, "manual", "rec_a"),
        ("d1", 1, "manual", "rec_a"),
    ]
    assert await listed("recovery_id=rec_a") == [
        ("d1", 2, "manual", "rec_a"),
        ("d1", 1, "manual", "rec_a"),
    ]
    assert await listed("recovery_id=rec_a&outcome=failure") == [("d1", 1, "manual", "rec_a")]
    assert await listed("recovery_id=rec_a&trigger=scheduled") == []
    assert await listed("recovery_id=nobody") == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("outcome=won", [("outcome", "enum")]),
        ("trigger=automatic", [("trigger", "enum")]),
        ("recovery_id=", [("recovery_id", "length")]),
        ("recovery_id=" + "r" * 201, [("recovery_id", "length")]),
        ("status_class=6xx", [("status_class", "enum")]),
        ("event_type=post.exploded", [("event_type", "enum")]),
        ("since=yesterday", [("since", "format")]),
        ("since=2026-01-15T10:00:00", [("since", "format")]),  # no time zone
        # ISO 8601 but not RFC 3339 (taken until 2026-12-06): basic format, a week date, hours
        # alone, a space for the T.
        ("since=20260115T100000Z", [("since", "format")]),
        ("since=2026-W03-4T10:00:00Z", [("since", "format")]),
        ("since=2026-01-15T10Z", [("since", "format")]),
        ("since=2026-01-15%2010:00:00Z", [("since", "format")]),
        ("since=2026-01-15T11:00:00Z&until=2026-01-15T10:00:00Z", [("until", "range")]),
        ("cursor=not-a-cursor", [("cursor", "invalid_cursor")]),
        ("limit=0", [("limit", "range")]),
        ("colour=red", [("colour", "unknown_field")]),
        ("outcome=failure&outcome=success", [("outcome", "repeated")]),
    ],
)
async def test_bad_attempt_queries_are_400s_naming_the_field(
    api: Api, query: str, expected: list[tuple[str, str]]
) -> None:
    await api.create(id="wh_1")
    response = await api.client.get(f"/v1/webhooks/wh_1/attempts?{query}", headers=auth())
    assert fields(await problem(response, 400)) == expected


@pytest.mark.parametrize("cursor", MADE_UP_CURSORS.values(), ids=MADE_UP_CURSORS)
async def test_a_made_up_attempts_cursor_is_a_400_naming_cursor(api: Api, cursor: str) -> None:
    """A time beyond the double range was a 500; a NaN time, or an attempt number no key
    holds, a page from the memory store."""
    await api.create(id="wh_1")
    failed_twice_then_delivered(api)
    response = await api.client.get(
        "/v1/webhooks/wh_1/attempts", params={"cursor": cursor}, headers=auth()
    )
    assert fields(await problem(response, 400)) == [("cursor", "invalid_cursor")]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cursor=cursors)
async def test_any_attempts_cursor_is_a_page_or_a_400_naming_cursor(api: Api, cursor: str) -> None:
    """Never a 500: a page when it decodes, else a 400 (the app is made once for every
    example; the examples only read)."""
    if not await api.repository.get("wh_1"):
        await api.create(id="wh_1")
        failed_twice_then_delivered(api)
    response = await api.client.get(
        "/v1/webhooks/wh_1/attempts", params={"cursor": cursor, "limit": "1"}, headers=auth()
    )
    try:
        decode_cursor(cursor)
    except ValueError:
        assert fields(await problem(response, 400)) == [("cursor", "invalid_cursor")]
    else:
        assert response.status == 200, await response.text()


async def test_attempts_and_stats_of_an_unknown_webhook_are_404s(api: Api) -> None:
    for path in ("/v1/webhooks/nope/attempts", "/v1/webhooks/nope/stats"):
        await problem(await api.client.get(path, headers=auth()), 404)


async def test_stats_count_the_windows_and_say_failing_since_from_the_log(api: Api) -> None:
    await api.create(id="wh_1")
    failed_twice_then_delivered(api)
    api.activity.add(attempt("d2", 1, at=NOW - 50, status=502))
    stats = await (await api.client.get("/v1/webhooks/wh_1/stats", headers=auth())).json()
    for window in ("1h", "24h", "7d"):
        counted = stats["windows"][window]
        assert (counted["attempts"], counted["successes"], counted["failures"]) == (4, 1, 3)
        assert counted["failure_ratio"] == pytest.approx(0.75)
        assert counted["latency_p50_seconds"] is not None
    assert stats["last_success_at"] == "2026-01-15T10:28:20.000Z"
    assert stats["last_failure_at"] == "2026-01-15T10:29:10.000Z"
    assert stats["state"] == {
        "active": True,
        "health": "failing",
        "failing_since": "2026-01-15T10:29:10.000Z",
        "disabled_reason": None,
        "circuit_open_until": None,
        "source": "log",
    }


def moment(seconds: float) -> str:
    """A Unix time as the API and the records write it."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def circuit_skip(at: float, due: float) -> Attempt:
    """An attempt skipped because the endpoint's circuit was open, its retry due at ``due``."""
    return Attempt.of(
        {
            "delivery_id": "d3",
            "webhook_id": "wh_1",
            "event_id": "evt_d3",
            "event_type": "post.created",
            "attempt": 1,
            "outcome": "skipped",
            "status": None,
            "error": "circuit_open",
            "duration_seconds": 0.0,
            "at": moment(at),
            "next": "retry",
            "next_at": moment(due),
        }
    )


async def test_stats_say_until_when_the_circuit_is_open_from_the_newest_attempt(api: Api) -> None:
    await api.create(id="wh_1")
    failed_twice_then_delivered(api)
    api.activity.add(circuit_skip(at=NOW - 10, due=NOW + 20))
    state = (await (await api.client.get("/v1/webhooks/wh_1/stats", headers=auth())).json())[
        "state"
    ]
    assert state["circuit_open_until"] == "2026-01-15T10:30:20.000Z"
    # Once the retry was due, or a newer attempt was made, the circuit let one through.
    api.activity.add(attempt("d4", 1, at=NOW - 5, outcome="success", status=200, next=None))
    state = (await (await api.client.get("/v1/webhooks/wh_1/stats", headers=auth())).json())[
        "state"
    ]
    assert state["circuit_open_until"] is None


async def test_stats_state_from_the_status_topic_and_the_webhook_record(api: Api) -> None:
    await api.create(id="wh_1")
    api.activity.statuses["wh_1"] = EndpointStatus("failing", NOW - 1800, None, "x")
    state = (await (await api.client.get("/v1/webhooks/wh_1/stats", headers=auth())).json())[
        "state"
    ]
    assert (state["health"], state["failing_since"], state["source"]) == (
        "failing",
        "2026-01-15T10:00:00.000Z",
        "status",
    )
    webhook = await api.repository.get("wh_1")
    assert webhook is not None
    from bridge.subscriptions.webhook import webhook_from_record

    record = webhook.to_record()
    record.update(active=False, disabled_reason="gone")
    await api.repository.put(webhook_from_record(record))
    stats = await (await api.client.get("/v1/webhooks/wh_1/stats", headers=auth())).json()
    assert stats["state"] == {
        "active": False,
        "health": "disabled",
        "failing_since": None,
        "disabled_reason": "gone",
        "circuit_open_until": None,
        "source": "webhook",
    }
    assert stats["windows"]["1h"]["attempts"] == 0 and stats["last_success_at"] is None


@pytest.mark.parametrize("status", ["disabled", "failing"])
async def test_stats_of_a_webhook_turned_on_again_count_its_failures_since(
    api: Api, status: str
) -> None:
    """Disabled (410) and turned on again, or changed while failing: the state is read from the
    failures since its new version, as its deliveries' health starts afresh then (until
    2026-12-07 it showed the old failing period, which the pipeline no longer counted)."""
    from bridge.subscriptions.webhook import webhook_from_record

    await api.create(id="wh_1")
    api.activity.add(
        attempt("d1", 1, at=NOW - 3000, status=500),
        attempt("d2", 1, at=NOW - 2000, status=410, next="disabled"),
    )
    reason = "gone" if status == "disabled" else None
    api.activity.statuses["wh_1"] = EndpointStatus(status, NOW - 3000, reason, "x")
    webhook = await api.repository.get("wh_1")
    assert webhook is not None
    record = webhook.to_record()
    record.update(active=True, updated_at=moment(NOW - 1000))
    await api.repository.put(webhook_from_record(record))
    state = (await get_json(api, "/v1/webhooks/wh_1/stats"))["state"]
    assert (state["health"], state["failing_since"], state["source"]) == ("healthy", None, "log")
    api.activity.add(attempt("d3", 1, at=NOW - 500, status=500), attempt("d3", 2, at=NOW - 400))
    state = (await get_json(api, "/v1/webhooks/wh_1/stats"))["state"]
    assert (state["health"], state["failing_since"]) == ("failing", moment(NOW - 500))


@pytest.mark.parametrize("field", ["created_at", "updated_at"])
async def test_stats_of_a_webhook_stamped_past_the_clock_show_its_failing_period(
    api: Api, field: str
) -> None:
    """A webhook whose record is stamped in year 3000 (another service's) showed healthy
    while it failed, until 2026-12-07: its failing period began "before" it."""
    from bridge.subscriptions.webhook import webhook_from_record

    await api.create(id="wh_1")
    api.activity.add(attempt("d1", 1, at=NOW - 3000, status=500))
    api.activity.statuses["wh_1"] = EndpointStatus("failing", NOW - 3000, None, "x")
    webhook = await api.repository.get("wh_1")
    assert webhook is not None
    record = webhook.to_record()
    record.update({field: "3000-01-01T00:00:00.000Z"})
    await api.repository.put(webhook_from_record(record))
    state = (await get_json(api, "/v1/webhooks/wh_1/stats"))["state"]
    assert (state["health"], state["failing_since"]) == ("failing", moment(NOW - 3000))


async def test_a_delivery_shows_every_attempt_in_order(api: Api) -> None:
    await api.create(id="wh_1")
    failed_twice_then_delivered(api)
    response = await api.client.get("/v1/deliveries/d1", headers=auth())
    assert response.status == 200
    delivery = await response.json()
    assert delivery["state"] == "delivered" and delivery["webhook_id"] == "wh_1"
    assert [(a["attempt"], a["status"]) for a in delivery["attempts"]] == [
        (1, 500),
        (2, 503),
        (3, 200),
    ]
    await problem(await api.client.get("/v1/deliveries/none", headers=auth()), 404)


async def test_a_delivery_named_with_its_webhook_is_read_from_that_log_alone(api: Api) -> None:
    """``?webhook_id=``: the webhook's log (held by one worker) is read, not every worker's
    book asked; the same answer; 404 when that webhook has no attempt of it."""
    await api.create(id="wh_1")
    await api.create(id="wh_2")
    failed_twice_then_delivered(api)
    everywhere = await get_json(api, "/v1/deliveries/d1")
    assert api.activity.deliveries_asked == ["d1"]
    narrowed = await get_json(api, "/v1/deliveries/d1?webhook_id=wh_1")
    assert narrowed == everywhere and api.activity.deliveries_asked == ["d1"]
    for path, status in (
        ("/v1/deliveries/d1?webhook_id=wh_2", 404),  # another webhook's log
        ("/v1/deliveries/d1?webhook_id=nope", 404),
        ("/v1/deliveries/d1?webhook_id=", 400),
        (f"/v1/deliveries/d1?webhook_id={'w' * 201}", 400),
        ("/v1/deliveries/d1?webhook_id=wh_1&webhook_id=wh_1", 400),
        ("/v1/deliveries/d1?webhook=wh_1", 400),
    ):
        await problem(await api.client.get(path, headers=auth()), status)
    started = await api.client.post("/v1/deliveries/d1/redeliver?webhook_id=wh_1", headers=auth())
    assert started.status == 202, await started.text()
    assert (await started.json())["webhook_id"] == "wh_1"
    other = await api.client.post("/v1/deliveries/d1/redeliver?webhook_id=wh_2", headers=auth())
    await problem(other, 404)
    assert api.activity.deliveries_asked == ["d1"]


async def test_redeliver_starts_a_recovery_of_that_delivery(api: Api) -> None:
    await api.create(id="wh_1")
    failed_twice_then_delivered(api)
    response = await api.client.post("/v1/deliveries/d1/redeliver", headers=auth())
    assert response.status == 202, await response.text()
    started = await response.json()
    assert response.headers["Location"] == f"/v1/recoveries/{started['id']}"
    assert started["delivery_id"] == "d1" and started["webhook_id"] == "wh_1"
    [operation] = api.runner.ran
    request = operation.request
    assert request.delivery_id == "d1"
    assert request.until.timestamp() == NOW - 300 + REDELIVER_MARGIN  # after the first attempt
    polled = await eventually(
        lambda: _done(api, response.headers["Location"]), message="the redelivery did not end"
    )
    assert polled["enqueued"] == 2 and polled["finished_at"] is not None

    await problem(await api.client.post("/v1/deliveries/none/redeliver", headers=auth()), 404)
    await api.client.patch("/v1/webhooks/wh_1", json={"active": False}, headers=auth())
    await problem(await api.client.post("/v1/deliveries/d1/redeliver", headers=auth()), 409)


@pytest.mark.parametrize(
    ("event_at", "since"),
    [
        # The event's record was published after it happened (give or take REDELIVER_MARGIN):
        # minutes of events are read, not the delivery log's whole age.
        ("2026-01-15T09:59:00.000Z", datetime(2026, 1, 15, 9, 54, tzinfo=UTC).timestamp()),
        # Recorded before the event's time was: the whole age (7 days by default).
        (None, NOW - 300 - DEFAULT_REDELIVER_LOOKBACK),
        # Not a time, or older than the lookback: the lookback bounds it.
        ("yesterday", NOW - 300 - DEFAULT_REDELIVER_LOOKBACK),
        ("2020-01-01T00:00:00Z", NOW - 300 - DEFAULT_REDELIVER_LOOKBACK),
        # Stamped after the attempt (a producer's clock ahead, a time in the future): still
        # published before the attempt, so from the margin before it.
        ("2026-01-15T10:35:00Z", NOW - 300 - REDELIVER_MARGIN),
        ("9999-12-31T23:59:59Z", NOW - 300 - REDELIVER_MARGIN),
    ],
)
def test_a_redelivery_reads_from_minutes_before_its_event(
    event_at: str | None, since: float
) -> None:
    first = attempt("d1", 1, at=NOW - 300, event_at=event_at)
    assert redelivery_since(first, DEFAULT_REDELIVER_LOOKBACK) == since
    assert REDELIVER_MARGIN == 300


@pytest.mark.parametrize("event_at", ["2026-01-15T10:35:00Z", "9999-12-31T23:59:59Z"])
async def test_a_delivery_of_an_event_stamped_after_its_attempt_is_redelivered(
    api: Api, event_at: str
) -> None:
    """Its window ended before it began: a 500 until 2026-12-06. Its record, stamped by a
    producer's clock ahead of the worker's, is within the window's end too (one second after
    the attempt until 2026-12-06: two seconds ahead, and the redelivery failed, not
    retained)."""
    await api.create(id="wh_1")
    api.activity.add(attempt("dX", 1, at=NOW - 300, event_at=event_at))
    response = await api.client.post("/v1/deliveries/dX/redeliver", headers=auth())
    assert response.status == 202, await response.text()
    [operation] = api.runner.ran
    assert operation.request.since.timestamp() == NOW - 300 - REDELIVER_MARGIN
    assert operation.request.until.timestamp() == NOW - 300 + REDELIVER_MARGIN


async def _done(api: Api, location: str) -> dict[str, Any] | None:
    shown: dict[str, Any] = await (await api.client.get(location, headers=auth())).json()
    return shown if shown["state"] == "done" else None


async def test_a_redelivery_whose_event_is_gone_fails_saying_so(api: Api) -> None:
    await api.create(id="wh_1")
    failed_twice_then_delivered(api)
    api.runner.enqueued = 0
    response = await api.client.post("/v1/deliveries/d1/redeliver", headers=auth())
    location = response.headers["Location"]

    async def failed() -> dict[str, Any] | None:
        shown: dict[str, Any] = await (await api.client.get(location, headers=auth())).json()
        return shown if shown["state"] == "failed" else None

    assert (await eventually(failed))["error"] == "event_not_retained"


async def test_recover_since_a_time_then_poll_it(api: Api) -> None:
    await api.create(id="wh_1")
    body = {"since": "2026-01-15T09:00:00Z", "until": "2026-01-15T10:00:00Z", "rate": 5}
    response = await api.client.post("/v1/webhooks/wh_1/recoveries", json=body, headers=auth())
    assert response.status == 202, await response.text()
    started = await response.json()
    assert (started["since"], started["until"], started["rate"]) == (
        "2026-01-15T09:00:00.000Z",
        "2026-01-15T10:00:00.000Z",
        5,
    )
    done = await eventually(lambda: _done(api, response.headers["Location"]))
    assert done["progress"] == 1.0 and done["scanned"] == 5
    # Until defaults to now.
    response = await api.client.post(
        "/v1/webhooks/wh_1/recoveries", json={"since": "2026-01-15T09:00:00Z"}, headers=auth()
    )
    assert (await response.json())["until"] == "2026-01-15T10:30:00.000Z"
    await eventually(lambda: _done(api, response.headers["Location"]))
    # One in the future is taken as now: the recovery reads what the topic holds when it
    # starts (until 2026-12-06 it showed the future until it never read to).
    response = await api.client.post(
        "/v1/webhooks/wh_1/recoveries",
        json={"since": "2026-01-15T09:00:00Z", "until": "2026-01-15T11:00:00Z"},
        headers=auth(),
    )
    assert response.status == 202, await response.text()
    assert (await response.json())["until"] == "2026-01-15T10:30:00.000Z"


async def test_a_webhooks_recoveries_are_listed_newest_first_in_pages(api: Api) -> None:
    await api.create(id="wh_1")
    await api.create(id="wh_2")
    api.runner.hold = True
    started = []
    for hour, webhook_id in enumerate(["wh_1", "wh_1", "wh_2", "wh_1", "wh_1"]):
        # Each over an hour of its own: windows of one webhook may not overlap.
        body = {"since": f"2026-01-15T0{hour}:00:00Z", "until": f"2026-01-15T0{hour}:59:00Z"}
        response = await api.client.post(
            f"/v1/webhooks/{webhook_id}/recoveries", json=body, headers=auth()
        )
        started.append((webhook_id, (await response.json())["id"]))
    mine = [rid for webhook_id, rid in started if webhook_id == "wh_1"]
    await api.client.delete(f"/v1/recoveries/{mine[1]}", headers=auth())
    pages: list[list[dict[str, Any]]] = []
    cursor = ""
    while cursor is not None:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await get_json(api, f"/v1/webhooks/wh_1/recoveries?{query}")
        pages.append(page["items"])
        cursor = page["next_cursor"]
    # Newest first: here all started at the same time (the fixture's clock), then by id.
    newest = sorted(mine, reverse=True)
    assert [[r["id"] for r in page] for page in pages] == [newest[:3], newest[3:]]
    assert {r["webhook_id"] for page in pages for r in page} == {"wh_1"}
    only = await get_json(api, "/v1/webhooks/wh_1/recoveries?state=cancelled")
    assert [r["id"] for r in only["items"]] == [mine[1]] and only["next_cursor"] is None
    none = await get_json(api, "/v1/webhooks/wh_1/recoveries?state=failed")
    assert none == {"items": [], "next_cursor": None}
    for query, field in (
        ("state=lost", "state"),
        ("cursor=abc", "cursor"),
        (f"cursor={encode_cursor((1.0, 'x', 1))}", "cursor"),
        ("limit=0", "limit"),
    ):
        bad = await api.client.get(f"/v1/webhooks/wh_1/recoveries?{query}", headers=auth())
        assert [name for name, _ in fields(await problem(bad, 400))] == [field], query
    await problem(await api.client.get("/v1/webhooks/nope/recoveries", headers=auth()), 404)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, [("since", "required")]),
        ({"since": "soon"}, [("since", "format")]),
        ({"since": "0001-01-01T00:00:00+05:00"}, [("since", "format")]),  # before year 1 in UTC
        ({"since": "20260115T090000Z"}, [("since", "format")]),  # ISO 8601's basic format
        ({"since": "2026-01-15T09:00:00.5+0100"}, [("since", "format")]),  # offset sans colon
        ({"since": "2026-01-15T09:00:00+00:60"}, [("since", "format")]),  # minutes past 59
        ({"since": "2026-01-15T09:00:00+24:00"}, [("since", "format")]),  # hours past 23
        ({"since": "2026-01-15T09:00:00Z", "until": "2026-01-15T08:00:00Z"}, [("until", "range")]),
        ({"since": "2026-01-16T09:00:00Z"}, [("since", "range")]),  # after now
        # From 0.01 to 1,000 a second: 5e-324 was taken until 2026-12-05, and its recovery
        # waited for ever between two deliveries, holding a place.
        *(
            ({"since": "2026-01-15T09:00:00Z", "rate": rate}, [("rate", rule)])
            for rate, rule in [(5e-324, "minimum"), (0, "minimum"), (1001, "maximum")]
        ),
        ({"since": "2026-01-15T09:00:00Z", "speed": 1}, [("speed", "unknown_field")]),
    ],
)
async def test_bad_recoveries_are_400s_naming_the_field(
    api: Api, body: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    await api.create(id="wh_1")
    response = await api.client.post("/v1/webhooks/wh_1/recoveries", json=body, headers=auth())
    assert fields(await problem(response, 400)) == expected
    assert api.runner.ran == []


async def test_cancel_stops_a_running_recovery(api: Api) -> None:
    await api.create(id="wh_1")
    api.runner.hold = True
    response = await api.client.post(
        "/v1/webhooks/wh_1/recoveries", json={"since": "2026-01-15T09:00:00Z"}, headers=auth()
    )
    location = response.headers["Location"]
    assert (await (await api.client.get(location, headers=auth())).json())["state"] == "running"
    cancelled = await api.client.delete(location, headers=auth())
    assert cancelled.status == 200
    assert (await cancelled.json())["state"] == "cancelled"
    again = await api.client.delete(location, headers=auth())  # answered as it is
    assert (await again.json())["state"] == "cancelled"
    await problem(await api.client.get("/v1/recoveries/nope", headers=auth()), 404)
    await problem(await api.client.delete("/v1/recoveries/nope", headers=auth()), 404)


async def test_shutting_the_app_down_cancels_running_recoveries() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    repository = MemoryRepository()
    runner = Runner(hold=True)
    control = control_service(repository, MemoryActivity(), runner)
    app = create_app(WebhookService(repository), control, TokenSet.from_mapping(TOKENS))
    client = TestClient(TestServer(app))
    await client.start_server()
    body = {"url": "https://example.com/h", "events": ["*"], "site_id": "s", "id": "wh_1"}
    await client.post("/v1/webhooks", json=body, headers=auth())
    await client.post(
        "/v1/webhooks/wh_1/recoveries", json={"since": "2026-01-15T09:00:00Z"}, headers=auth()
    )
    [operation] = runner.ran
    assert operation.state == "running"
    await client.close()
    assert operation.state == "cancelled" and operation.finished_at is not None


async def test_a_letter_no_answer_can_hold_is_left_out_of_every_page(api: Api) -> None:
    """A letter with an integer past JavaScript's safe range (written by something else than
    the bridge) is read, but cannot be written in an answer: until 2026-12-05 every page
    holding it was a 500. It is left out, the pages around it as they would be without it."""
    odd = dead_letter(2, at="2026-01-15T10:02:00.000Z")
    odd["attempts"] = [{"status": 2**62}]
    api.dead_letters.records = [
        dead_letter(1, at="2026-01-15T10:01:00.000Z"),
        odd,
        dead_letter(3, at="2026-01-15T10:03:00.000Z"),
    ]
    first = await api.client.get("/v1/dead-letters?limit=1", headers=auth())
    page = await first.json()
    assert first.status == 200 and [d["delivery_id"] for d in page["items"]] == ["dl_1"]
    rest = await api.client.get(
        f"/v1/dead-letters?limit=5&cursor={page['next_cursor']}", headers=auth()
    )
    assert [d["delivery_id"] for d in (await rest.json())["items"]] == ["dl_3"]


async def test_dead_letters_listed_oldest_first_in_pages(api: Api) -> None:
    api.dead_letters.records = [
        dead_letter(3, at="2026-01-15T10:03:00.000Z"),
        dead_letter(1, at="2026-01-15T10:01:00.000Z"),
        dead_letter(2, webhook_id="wh_2", at="2026-01-15T10:02:00.000Z"),
    ]
    first = await (await api.client.get("/v1/dead-letters?limit=2", headers=auth())).json()
    assert [d["delivery_id"] for d in first["items"]] == ["dl_1", "dl_2"]
    rest = await (
        await api.client.get(
            f"/v1/dead-letters?limit=2&cursor={first['next_cursor']}", headers=auth()
        )
    ).json()
    assert [d["delivery_id"] for d in rest["items"]] == ["dl_3"] and rest["next_cursor"] is None
    only = await (await api.client.get("/v1/dead-letters?webhook_id=wh_2", headers=auth())).json()
    assert [d["delivery_id"] for d in only["items"]] == ["dl_2"]
    ranged = await (
        await api.client.get("/v1/dead-letters?since=2026-01-15T10:02:30Z", headers=auth())
    ).json()
    assert [d["delivery_id"] for d in ranged["items"]] == ["dl_3"]
    bad = await api.client.get(
        f"/v1/dead-letters?cursor={encode_cursor((1.0, 'x', 1))}&until=x", headers=auth()
    )
    assert fields(await problem(bad, 400)) == [("until", "format")]
    bad = await api.client.get("/v1/dead-letters?cursor=abc", headers=auth())
    assert fields(await problem(bad, 400)) == [("cursor", "invalid_cursor")]


async def test_replay_dead_letters(api: Api) -> None:
    api.dead_letters.records = [dead_letter(1), dead_letter(2, webhook_id="wh_2")]
    response = await api.client.post(
        "/v1/dead-letters/replay", json={"webhook_id": "wh_1"}, headers=auth()
    )
    assert response.status == 200
    assert await response.json() == {
        "replayed": ["dl_1"],
        "skipped": 0,
        "skipped_by_reason": dict.fromkeys(SKIP_REASONS, 0),
        "complete": True,
        "next_cursor": None,
    }
    everything = await api.client.post("/v1/dead-letters/replay", headers=auth())
    assert (await everything.json())["replayed"] == ["dl_1", "dl_2"]
    bad = await api.client.post(
        "/v1/dead-letters/replay", json={"since": "2026-01-15T10:00:00"}, headers=auth()
    )
    assert fields(await problem(bad, 400)) == [("since", "format")]


async def test_a_replay_judges_letters_by_the_current_webhooks(api: Api) -> None:
    """The replay is given the repository's webhooks by id: a letter that does not name the
    ``created_at`` of its webhook (written before letters did) is replayed only to the webhook
    it was made for (``bridge.admin.dead_letters.replay_dead_letters``). Until 2026-12-06 the
    replay had no webhooks to judge it by, and replayed it to whichever webhook had its id."""
    created = await api.create(id="wh_1")
    api.dead_letters.records = [dead_letter(1)]
    response = await api.client.post(
        "/v1/dead-letters/replay", json={"webhook_id": "wh_1"}, headers=auth()
    )
    assert response.status == 200
    (lookup,) = api.dead_letters.lookups
    current = await lookup("wh_1")
    assert current is not None and current.created_at == created["created_at"]
    assert await lookup("wh_gone") is None


async def test_a_replay_reads_the_current_webhooks_once(api: Api) -> None:
    """One read of the repository's current webhooks for the whole replay, however many
    webhooks its letters name: ``serve``'s repository read the whole topic at each lookup, and a
    worker's answered from a table that could trail a change made just before (2026-12-06)."""
    for n in (1, 2, 3):
        await api.create(id=f"wh_{n}")
    reads: list[str] = []
    repository = api.repository
    original_get, original_current = repository.get, repository.current

    async def get(webhook_id: str) -> Any:
        reads.append(f"get {webhook_id}")
        return await original_get(webhook_id)

    async def current() -> Any:
        reads.append("current")
        return await original_current()

    repository.get = get  # type: ignore[method-assign]
    repository.current = current  # type: ignore[method-assign]
    response = await api.client.post("/v1/dead-letters/replay", headers=auth())
    assert response.status == 200
    (lookup,) = api.dead_letters.lookups
    found = [await lookup(f"wh_{n}") for n in (1, 2, 3, 4)]
    assert [w is not None for w in found] == [True, True, True, False]
    assert reads == ["current"]


class LoadingRepository(MemoryRepository):
    """A repository whose every read loads all the webhooks, as ``serve``'s reads the whole
    subscriptions topic (:class:`~bridge.api.store_repository.StoreRepository`): counted."""

    loads = 0

    async def get(self, webhook_id: str) -> Webhook | None:
        self.loads += 1
        return await super().get(webhook_id)

    async def current(self) -> Callable[[str], Webhook | None]:
        self.loads += 1
        return await super().current()


@pytest.mark.parametrize("named", [None, "wh_0"])
async def test_a_restricted_dead_letter_listing_reads_the_webhooks_once(named: str | None) -> None:
    """One read of the webhooks for a site token's listing, however many webhooks its letters
    name (until 2026-12-07 one each: for ``serve`` the whole topic each)."""
    webhooks = {
        f"wh_{n}": webhook_from_record(
            webhook_record(id=f"wh_{n}", site_id="site_1" if n % 2 == 0 else "site_2")
        )
        for n in range(20)
    }
    repository = LoadingRepository(webhooks)
    source = MemoryDeadLetters(
        records=[dead_letter(n, webhook_id=f"wh_{n % 20}") for n in range(60)]
    )
    control = control_service(repository, dead_letters=source)
    site = Principal("site", frozenset({"read"}), site_id="site_1")
    where = DeadLetterFilter(webhook_id=named)
    page = await control.dead_letters(site, where, limit=100, cursor=None)
    shown = {item["webhook_id"] for item in page.items}
    assert shown == ({f"wh_{n}" for n in range(0, 20, 2)} if named is None else {named})
    assert repository.loads == 1
    outside = DeadLetterFilter(webhook_id="wh_1")
    with pytest.raises(Problem) as refused:
        await control.dead_letters(site, outside, limit=100, cursor=None)
    assert refused.value.status == 404


async def test_a_site_token_reaches_only_its_sites_webhooks(api: Api) -> None:
    await api.create(id="wh_1", site_id="site_1", user_id="user_1")
    await api.create(id="wh_2", site_id="site_2", user_id="user_2")
    await api.create(id="wh_3", site_id=None, user_id="user_1")
    failed_twice_then_delivered(api, "d1", "wh_1")
    failed_twice_then_delivered(api, "d2", "wh_2")
    failed_twice_then_delivered(api, "d3", "wh_3")
    api.dead_letters.records = [
        dead_letter(1),
        dead_letter(2, webhook_id="wh_2"),
        dead_letter(3, webhook_id=None),
        dead_letter(4, webhook_id="wh_3"),
    ]
    # The site's token has the site's webhook; the account's its account-wide one (a site's
    # webhook, user_1's or not, gets every event of the site: not the account's).
    for token, own, others in ((SITE_1, 1, (2, 3)), (USER_1, 3, (1, 2))):
        assert (await api.client.get(f"/v1/webhooks/wh_{own}/attempts", headers=auth(token))).ok
        assert (await api.client.get(f"/v1/deliveries/d{own}", headers=auth(token))).ok
        named = f"/v1/deliveries/d{own}?webhook_id=wh_{own}"
        assert (await api.client.get(named, headers=auth(token))).ok
        for other in others:
            for method, path in (
                ("GET", f"/v1/webhooks/wh_{other}/attempts"),
                ("GET", f"/v1/webhooks/wh_{other}/stats"),
                ("GET", f"/v1/deliveries/d{other}"),
                ("GET", f"/v1/deliveries/d{other}?webhook_id=wh_{other}"),
                ("POST", f"/v1/deliveries/d{other}/redeliver"),
                ("POST", f"/v1/deliveries/d{other}/redeliver?webhook_id=wh_{other}"),
            ):
                # Answered as ids that name nothing: the token cannot tell which are taken.
                response = await api.client.request(method, path, headers=auth(token))
                nothing = path.replace(f"wh_{other}", "wh_none").replace(f"d{other}", "d_none")
                missing = await api.client.request(method, nothing, headers=auth(token))
                assert await problem(response, 404) == await problem(missing, 404), path
        response = await api.client.post(
            "/v1/webhooks/wh_2/recoveries",
            json={"since": "2026-01-15T09:00:00Z"},
            headers=auth(token),
        )
        assert (await problem(response, 404))["detail"] == "no such webhook"
        # Dead letters: its webhooks' only, and a replay names one of them.
        listed = await (await api.client.get("/v1/dead-letters", headers=auth(token))).json()
        assert [d["delivery_id"] for d in listed["items"]] == [f"dl_{own + (own == 3)}"]
        other = await api.client.get("/v1/dead-letters?webhook_id=wh_2", headers=auth(token))
        assert (await problem(other, 404))["detail"] == "no such webhook"
        replay = await api.client.post("/v1/dead-letters/replay", headers=auth(token))
        assert fields(await problem(replay, 403)) == [("webhook_id", "required")]
        replay = await api.client.post(
            "/v1/dead-letters/replay", json={"webhook_id": "wh_2"}, headers=auth(token)
        )
        assert (await problem(replay, 404))["detail"] == "no such webhook"
    assert api.dead_letters.replays == []
    # A recovery started by the platform is not the site's to see or cancel.
    response = await api.client.post(
        "/v1/webhooks/wh_2/recoveries", json={"since": "2026-01-15T09:00:00Z"}, headers=auth()
    )
    location = response.headers["Location"]
    for method in ("GET", "DELETE"):
        response = await api.client.request(method, location, headers=auth(SITE_1))
        assert (await problem(response, 404))["detail"] == "no such recovery"
    listed = await api.client.get("/v1/webhooks/wh_2/recoveries", headers=auth(SITE_1))
    assert (await problem(listed, 404))["detail"] == "no such webhook"


async def test_attempts_show_the_response_size_and_a_kept_prefix(api: Api) -> None:
    """The API shows what the record holds: the size always (null without a response), the
    prefix only when the worker kept one, as JSON (control characters escaped), in the
    document's Attempt schema."""
    from jsonschema import Draft202012Validator
    from msgspec.structs import replace

    from bridge.api.openapi import openapi_document

    await api.create(id="wh_1")
    kept = "\x1b[2J\x00 Jane"
    api.activity.add(
        replace(
            attempt("d1", 1, at=NOW - 200, status=500),
            response_bytes=70000 // 2,
            response_truncated=True,
            response_prefix=kept,
        ),
        replace(
            attempt("d1", 2, at=NOW - 100, outcome="success", status=200, next=None),
            response_bytes=2,
        ),
        attempt("d2", 1, at=NOW - 50, status=None),
    )
    page = await get_json(api, "/v1/webhooks/wh_1/attempts")
    shown = {(a["delivery_id"], a["attempt"]): a for a in page["items"]}
    assert (shown["d1", 1]["response_bytes"], shown["d1", 1]["response_truncated"]) == (35000, True)
    assert shown["d1", 1]["response_prefix"] == kept
    assert (shown["d1", 2]["response_bytes"], shown["d1", 2]["response_truncated"]) == (2, False)
    assert "response_prefix" not in shown["d1", 2]
    assert shown["d2", 1]["response_bytes"] is None
    schema = openapi_document()["components"]["schemas"]["Attempt"]
    validator = Draft202012Validator(schema)
    for item in page["items"]:
        assert list(validator.iter_errors(item)) == []
    raw = await (await api.client.get("/v1/deliveries/d1", headers=auth())).read()
    assert b"\x1b" not in raw and b"\x00" not in raw
    delivery = await get_json(api, "/v1/deliveries/d1")
    assert [a.get("response_prefix") for a in delivery["attempts"]] == [kept, None]


class ReadingDeadLetters(MemoryDeadLetters):
    """Records each read's filter (what a Kafka read of the topic would be narrowed by)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[DeadLetterFilter] = []

    async def read(
        self, where: DeadLetterFilter, *, needed_until: Any = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        self.reads.append(where)
        async for record in super().read(where):
            yield record


def oldest_first(records: list[dict[str, Any]], where: DeadLetterFilter) -> list[dict[str, Any]]:
    """The letters ``where`` selects as a listing gives them: oldest first; one time by source
    position (here: the offset)."""
    return sorted(
        (r for r in records if where.matches(r)),
        key=lambda r: (r["dead_lettered_at"], r["source"]["offset"]),
    )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from([None, 0, 1, 1, 2, 5, 9]), min_size=0, max_size=25),
    st.integers(1, 4),
    st.sampled_from([None, 1, 3]),
)
async def test_paging_dead_letters_reads_from_the_cursor_and_loses_none(
    minutes: list[int | None], limit: int, since: int | None
) -> None:
    """Each page after the first reads only the letters written from its cursor's time on,
    and the pages together are the whole listing, in order (letters without a time, and many
    of the same time, included)."""
    source = ReadingDeadLetters()
    source.records = [
        dead_letter(n, at="" if m is None else f"2026-01-15T10:{m:02d}:00.000Z")
        for n, m in enumerate(minutes)
    ]
    control = control_service(MemoryRepository(), dead_letters=source)
    start = None if since is None else datetime(2026, 1, 15, 10, since, tzinfo=UTC)
    where = DeadLetterFilter(since=start)
    admin = Principal("admin", frozenset({"read", "write"}))
    whole = (await control.dead_letters(admin, where, limit=1000, cursor=None)).items
    assert whole == oldest_first(source.records, where)
    paged: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page = await control.dead_letters(admin, where, limit=limit, cursor=cursor)
        paged += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        last = paged[-1]["dead_lettered_at"]
        await control.dead_letters(admin, where, limit=limit, cursor=cursor)
        read = source.reads[-1].since
        if last:
            assert read is not None and read >= datetime.fromisoformat(last)
    assert paged == whole


async def every_page(
    control: Any, where: DeadLetterFilter, limit: int, cursor: str | None = None
) -> list[dict[str, Any]]:
    """The letters of every page of a listing, from ``cursor`` on."""
    admin = Principal("admin", frozenset({"read", "write"}))
    listed: list[dict[str, Any]] = []
    for _ in range(100):
        page = await control.dead_letters(admin, where, limit=limit, cursor=cursor)
        listed += page.items
        if page.next_cursor is None:
            return listed
        cursor = page.next_cursor
    raise AssertionError("a listing without end")


def letters_of_one_event(webhooks: list[str]) -> list[dict[str, Any]]:
    """The letters of one event that ``webhooks`` get, dead-lettered in the same millisecond."""
    letters = []
    for webhook_id in webhooks:
        letter = dead_letter(7, webhook_id=webhook_id)
        letter.update(reason="payload_too_large", delivery_id=f"dl_7_{webhook_id}")
        letters.append(letter)
    return letters


@pytest.mark.parametrize("limit", [1, 2])
async def test_letters_of_one_event_dead_lettered_at_once_are_each_listed_once(
    limit: int,
) -> None:
    """Three webhooks' letters of one event, of one time and source position, paged one or
    two at a time: every one listed once (until 2026-12-07 a page ending on one lost the
    others)."""
    source = MemoryDeadLetters()
    source.records = [
        dead_letter(1, at="2026-01-15T09:00:00.000Z"),
        *letters_of_one_event(["wh_b", "wh_c", "wh_a"]),
        dead_letter(8, at="2026-01-15T11:00:00.000Z"),
    ]
    control = control_service(MemoryRepository(), dead_letters=source)
    listed = await every_page(control, DeadLetterFilter(), limit)
    assert [letter["delivery_id"] for letter in listed] == [
        "dl_1",
        "dl_7_wh_a",
        "dl_7_wh_b",
        "dl_7_wh_c",
        "dl_8",
    ]


async def test_a_cursor_of_a_listing_before_the_ids_were_in_it_is_taken_as_then() -> None:
    """A cursor made before 2026-12-07 (time and source position) goes on after that source
    record's letters."""
    source = MemoryDeadLetters()
    source.records = [dead_letter(n) for n in range(4)]
    control = control_service(MemoryRepository(), dead_letters=source)
    old = encode_raw_cursor(["2026-01-15T10:00:00.000Z", "events", 0, 1])
    listed = await every_page(control, DeadLetterFilter(), 1, old)
    assert [letter["delivery_id"] for letter in listed] == ["dl_2", "dl_3"]


@pytest.mark.parametrize("field", ["partition", "offset"])
@pytest.mark.parametrize("flag", [True, False])
async def test_a_letter_with_a_boolean_source_position_does_not_stop_paging(
    field: str, flag: bool
) -> None:
    """A letter whose source ``partition`` or ``offset`` is ``true`` or ``false`` (written by
    something else than the bridge) sorts as one without it: a page ending on it has a cursor
    the next page takes (until 2026-12-07 that cursor held the boolean and was ``400``)."""
    source = MemoryDeadLetters()
    source.records = [dead_letter(n) for n in range(3)]
    source.records.append(dead_letter(3, at="2026-01-15T11:00:00.000Z"))
    source.records[1]["source"][field] = flag
    control = control_service(MemoryRepository(), dead_letters=source)
    listed = await every_page(control, DeadLetterFilter(), 1)
    assert [letter["delivery_id"] for letter in listed] == ["dl_1", "dl_0", "dl_2", "dl_3"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["wh_1", "wh_2", "wh_3"]), min_size=0, max_size=12),
    st.integers(0, 13),
    st.booleans(),
    st.sampled_from(["kept", "none kept", "owner away", "no index"]),
)
async def test_dead_letters_of_a_delivery_alone_read_its_webhooks_partition(
    owners: list[str], asked: int, replay: bool, log: str
) -> None:
    """A listing or replay naming a delivery and no webhook reads the partition of the
    delivery's webhook when the delivery log knows it (its key: ``webhook_id`` in the read's
    filter), and the whole topic when it does not (none of its attempts kept, an owner not
    answering, or a log without an index of deliveries): either way, exactly that delivery's
    letters."""
    source = ReadingDeadLetters()
    source.records = [dead_letter(n, webhook_id=w) for n, w in enumerate(owners)]
    delivery_id = f"dl_{asked}"

    class Activity(MemoryActivity):
        async def delivery(self, delivery_id: str) -> list[Attempt]:
            if log == "owner away":
                self.deliveries_asked.append(delivery_id)
                raise Problem("unavailable", "an owner does not answer")
            return await super().delivery(delivery_id)

    activity = Activity()
    activity.indexes_deliveries = log != "no index"
    owner = owners[asked] if asked < len(owners) else None
    if owner is not None and log != "none kept":
        activity.add(
            attempt(delivery_id, 1, webhook_id=owner), attempt(delivery_id, 2, webhook_id=owner)
        )
    control = control_service(MemoryRepository(), activity=activity, dead_letters=source)
    admin = Principal("admin", frozenset({"read", "write"}))
    where = DeadLetterFilter(delivery_id=delivery_id)
    if replay:
        report, _ = await control.replay_dead_letters(admin, where)
        read = source.replays[-1]
        assert report.replayed == ([delivery_id] if owner else [])
    else:
        page = await control.dead_letters(admin, where, limit=10, cursor=None)
        read = source.reads[-1]
        assert [letter["delivery_id"] for letter in page.items] == ([delivery_id] if owner else [])
    narrowed = owner is not None and log == "kept"
    assert read.webhook_id == (owner if narrowed else None)
    assert activity.deliveries_asked == ([] if log == "no index" else [delivery_id])
    assert dataclasses.replace(read, webhook_id=None) == where


async def test_a_dead_letter_listing_naming_its_webhook_does_not_ask_the_log() -> None:
    """With ``webhook_id`` given, the read is that partition already: the log is not asked."""
    activity = MemoryActivity()
    source = ReadingDeadLetters()
    control = control_service(MemoryRepository(), activity=activity, dead_letters=source)
    admin = Principal("admin", frozenset({"read", "write"}))
    where = DeadLetterFilter(webhook_id="wh_1", delivery_id="dl_0")
    await control.dead_letters(admin, where, limit=10, cursor=None)
    await control.replay_dead_letters(admin, where)
    assert activity.deliveries_asked == [] and source.reads == [where]


class Letter(dict[str, Any]):
    """A dead letter that counts how many of its kind are alive."""

    alive = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        Letter.alive += 1

    def __del__(self) -> None:
        Letter.alive -= 1


@settings(max_examples=20, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 20))
async def test_a_page_of_dead_letters_holds_a_page_not_the_topic(shuffled: Any, limit: int) -> None:
    """The source yields 3,000 letters in any order, making each as it is read: a page keeps
    at most ``limit + 2`` of them alive at any time, and is the first ``limit`` in order."""
    order = list(range(3000))
    shuffled.shuffle(order)
    most = 0

    class Streaming(MemoryDeadLetters):
        async def read(
            self, where: DeadLetterFilter, *, needed_until: Any = None
        ) -> AsyncGenerator[dict[str, Any], None]:
            nonlocal most
            base = Letter.alive
            for n in order:
                letter = Letter(dead_letter(n, at=f"2026-01-15T10:{n % 60:02d}:00.000Z"))
                yield letter
                del letter
                most = max(most, Letter.alive - base)

    control = control_service(MemoryRepository(), dead_letters=Streaming())
    admin = Principal("admin", frozenset({"read", "write"}))
    page = await control.dead_letters(admin, DeadLetterFilter(), limit=limit, cursor=None)
    expected = sorted(range(3000), key=lambda n: (n % 60, n))[:limit]
    assert [letter["source"]["offset"] for letter in page.items] == expected
    assert page.next_cursor is not None
    assert most <= limit + 2  # the page's next letter too, and the one being looked at


class PartitionedDeadLetters(MemoryDeadLetters):
    """Letters in partitions, each with its record timestamp, read a batch of 3 at a time per
    partition in turn and stopped as the Kafka read stops (``stream_topic``'s ``until_ms``):
    a partition is read up to its first record stamped after the needed time + STAMP_MARGIN."""

    def __init__(self, partitions: list[list[tuple[int, dict[str, Any]]]]) -> None:
        super().__init__([letter for part in partitions for _, letter in part])
        self.partitions = partitions
        self.taken = 0  # records the reads went through

    async def read(
        self, where: DeadLetterFilter, *, needed_until: Any = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        places = [0] * len(self.partitions)
        reading = set(range(len(self.partitions)))
        while reading:
            for n in sorted(reading):
                batch = self.partitions[n][places[n] : places[n] + 3]
                wanted = None if needed_until is None else needed_until()
                if wanted is not None:
                    limit_ms = int((wanted.timestamp() + STAMP_MARGIN) * 1000)
                    batch = batch[: stamped_by_ms([ms for ms, _ in batch], limit_ms)]
                    if len(batch) < len(self.partitions[n][places[n] : places[n] + 3]):
                        reading.discard(n)
                places[n] += 3
                if places[n] >= len(self.partitions[n]):
                    reading.discard(n)
                for _, letter in batch:
                    self.taken += 1
                    if where.matches(letter):
                        yield letter


def stamped_by_ms(stamps: list[int], limit_ms: int) -> int:
    """:func:`bridge.kafka.reading.stamped_by` over bare timestamps."""
    return next((n for n, ms in enumerate(stamps) if ms > limit_ms), len(stamps))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 240), st.integers(-299, 299)),
        min_size=0,
        max_size=40,
    ),
    st.integers(1, 5),
    st.sampled_from([None, "wh_1"]),
)
async def test_pages_of_dead_letters_read_up_to_their_last_letter_and_lose_none(
    made: list[tuple[int, int, int]], limit: int, webhook_id: str | None
) -> None:
    """Letters written over four hours to three partitions, each stamped up to STAMP_MARGIN
    away from its ``dead_lettered_at`` (and from the times of the letters after it): pages
    read only up to a margin past their last letter, and together are the whole listing."""
    base = datetime(2026, 1, 15, 10, 0, tzinfo=UTC).timestamp()
    partitions: list[list[tuple[int, dict[str, Any]]]] = [[], [], []]
    # Written in time order per partition; the letter's time is its write's, give or take
    # the margin (a clock apart): the stamp, the written time, is what grows.
    for n, (part, minute, skew) in enumerate(sorted(made, key=lambda m: m[1])):
        written = base + minute * 60
        at = datetime.fromtimestamp(written + skew, UTC)
        letter = dead_letter(n, webhook_id="wh_1" if n % 2 else "wh_2", at=format_timestamp(at))
        partitions[part].append((int(written * 1000), letter))
    source = PartitionedDeadLetters(partitions)
    control = control_service(MemoryRepository(), dead_letters=source)
    admin = Principal("admin", frozenset({"read", "write"}))
    where = DeadLetterFilter(webhook_id=webhook_id)
    paged: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page = await control.dead_letters(admin, where, limit=limit, cursor=cursor)
        paged += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert paged == oldest_first(source.records, where)


async def test_a_first_page_of_dead_letters_reads_the_head_of_each_partition() -> None:
    """10,000 letters a minute apart in three partitions: the first page of 10 reads the
    letters of its first minutes and the margin after them, not the topic."""
    base = datetime(2026, 1, 15, 10, 0, tzinfo=UTC).timestamp()
    partitions: list[list[tuple[int, dict[str, Any]]]] = [[], [], []]
    for n in range(10_000):
        written = base + n * 60
        at = format_timestamp(datetime.fromtimestamp(written, UTC))
        partitions[n % 3].append((int(written * 1000), dead_letter(n, at=at)))
    source = PartitionedDeadLetters(partitions)
    control = control_service(MemoryRepository(), dead_letters=source)
    admin = Principal("admin", frozenset({"read", "write"}))
    page = await control.dead_letters(admin, DeadLetterFilter(), limit=10, cursor=None)
    assert [letter["source"]["offset"] for letter in page.items] == list(range(10))
    # 11 letters and 5 minutes after the 11th, and the rest of each partition's batch.
    assert source.taken <= 11 + 5 + 3 * 3
    second = await control.dead_letters(
        admin, DeadLetterFilter(), limit=10, cursor=page.next_cursor
    )
    assert [letter["source"]["offset"] for letter in second.items] == list(range(10, 20))


async def test_a_recovery_since_in_the_future_is_a_400_even_with_an_until(api: Api) -> None:
    await api.create(id="wh_1")
    # The fakes' time is 2026-01-15T10:30Z: since is a day later.
    body = {"since": "2026-01-16T09:00:00Z", "until": "2026-01-17T09:00:00Z"}
    response = await api.client.post("/v1/webhooks/wh_1/recoveries", json=body, headers=auth())
    assert fields(await problem(response, 400)) == [("since", "range")]
    assert api.runner.ran == []


#: A cursor that decodes to 1,400 nested arrays: 1,868 characters, under the length a cursor
#: may have; json.loads raises RecursionError, not ValueError, for it.
_NESTED_CURSOR = base64.urlsafe_b64encode(b"[" * 1400).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "1" * 4301}, "limit"),  # int() refuses past 4,300 digits, with a ValueError
        ({"cursor": _NESTED_CURSOR}, "cursor"),
    ],
    ids=["limit_4301_digits", "nested_cursor"],
)
@pytest.mark.parametrize(
    "path",
    [
        "/v1/webhooks",
        "/v1/webhooks/wh_1/attempts",
        "/v1/webhooks/wh_1/recoveries",
        "/v1/dead-letters",
    ],
)
async def test_every_listing_refuses_hostile_paging_with_a_400(
    api: Api, path: str, query: dict[str, str], field: str
) -> None:
    """Until 2026-12-05 each of these was a 500 on every listing."""
    await api.create(id="wh_1")
    response = await api.client.get(path, params=query, headers=auth())
    assert [name for name, _ in fields(await problem(response, 400))] == [field]


async def test_a_recovery_until_the_last_moment_of_the_calendar_is_until_now(api: Api) -> None:
    """Its window is rounded up to a whole millisecond, and 9999-12-31T23:59:59.9999Z has none
    after it: a 500 until 2026-12-05, then a 400; an ``until`` past now is now (since
    2026-12-06), so these are recoveries until now."""
    await api.create(id="wh_1")
    for until in (
        "9999-12-31T23:59:59.9999Z",
        "9999-12-31T23:59:59.999999+00:00",
        "9999-12-31T23:59:59.999Z",
    ):
        response = await api.client.post(
            "/v1/webhooks/wh_1/recoveries",
            json={"since": "2026-01-15T09:00:00Z", "until": until},
            headers=auth(),
        )
        assert response.status == 202, await response.text()
        assert (await response.json())["until"] == "2026-01-15T10:30:00.000Z"
        location = response.headers["Location"]
        await eventually(lambda: _done(api, location))  # noqa: B023 (awaited here)


async def test_unknown_names_are_quoted_short_and_ten_at_most(api: Api) -> None:
    """A body key or query parameter of 60 KB is named by its first 100 characters; a query of
    a thousand unknown parameters names ten (until 2026-12-05 the key was quoted whole, twice,
    and every parameter named)."""
    long = "k" * 60_000
    body = await problem(
        await api.client.post(
            "/v1/webhooks", json={"url": "https://a.example/h", long: 1}, headers=auth()
        ),
        400,
    )
    assert ("k" * 100, "unknown_field") in fields(body)
    assert len(json.dumps(body)) < 2_000
    query = "&".join(f"p{n}=1" for n in range(1000))
    many = await problem(await api.client.get(f"/v1/webhooks?{query}", headers=auth()), 400)
    assert len(many["errors"]) == 10


@pytest.mark.parametrize("since", [1e300, -1.0, 253402300799.0, True])
def test_a_status_time_no_answer_could_hold_is_not_read(since: object) -> None:
    """A status record written by something else, its failing period begun at 1e300, made
    every stats answer of its webhook a 500 until 2026-12-05: such a time is not read."""
    raw = json.dumps({"state": "failing", "failing_since": since}).encode()
    status = EndpointStatus.parse(raw)
    assert status is not None and status.state == "failing" and status.failing_since is None
    kept = EndpointStatus.parse(json.dumps({"state": "failing", "failing_since": 1.7e9}).encode())
    assert kept is not None and kept.failing_since == 1.7e9


class StoppingDeadLetters(MemoryDeadLetters):
    """A replay that stops after each letter until the last, as one cut at its deadline."""

    def __init__(self, letters: list[dict[str, Any]]) -> None:
        super().__init__(records=letters)
        self.resumes: list[Any] = []
        self.deadlines: list[float | None] = []

    async def replay(
        self,
        where: DeadLetterFilter,
        *,
        webhooks: Any,
        resume: Any = None,
        deadline: float | None = None,
    ) -> ReplayReport:
        self.replays.append(where)
        self.resumes.append(resume)
        self.deadlines.append(deadline)
        at = (resume or {}).get(0, 0)
        until = where.until or datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
        report = ReplayReport([str(self.records[at]["delivery_id"])], until=until)
        report.positions = {0: at + 1}
        report.complete = at + 1 == len(self.records)
        return report


async def test_a_replay_cut_at_its_deadline_answers_a_cursor_that_goes_on(tokens: TokenSet) -> None:
    source = StoppingDeadLetters([dead_letter(n) for n in (1, 2, 3)])
    repository = MemoryRepository()
    control = control_service(repository, dead_letters=source)
    app = create_app(WebhookService(repository), control, tokens)
    async with TestClient(TestServer(app)) as client:
        body: dict[str, Any] = {"since": "2026-01-15T09:00:00Z"}
        replayed: list[str] = []
        for _ in range(3):
            response = await client.post("/v1/dead-letters/replay", json=body, headers=auth())
            assert response.status == 200, await response.text()
            answer = await response.json()
            replayed += answer["replayed"]
            if answer["complete"]:
                assert answer["next_cursor"] is None
                break
            body = {**body, "cursor": answer["next_cursor"]}
        assert replayed == ["dl_1", "dl_2", "dl_3"]
        assert source.resumes == [None, {0: 1}, {0: 2}]
        # Each goes on to the first one's until; each reads for half the request's time.
        assert [w.until for w in source.replays[1:]] == [
            datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
        ] * 2
        assert all(d is not None for d in source.deadlines)

        # A cursor given with another filter, or made up: 400 naming it, nothing replayed.
        for other in (
            {"cursor": body["cursor"]},
            {**body, "webhook_id": "wh_1"},
            {"cursor": "bm90IGEgY3Vyc29y"},
            {"cursor": encode_raw_cursor(["2026-01-15T10:30:00+00:00", "x", [0, -1]])},
        ):
            refused = await client.post("/v1/dead-letters/replay", json=other, headers=auth())
            assert fields(await problem(refused, 400)) == [("cursor", "invalid_cursor")]
        assert len(source.replays) == 3


@pytest.mark.parametrize(
    "positions",
    [[0], [0, -1], [0, 1.5], [0, True], [-1, 3], [0, 2**63], list(range(2002))],
)
def test_a_replay_cursor_names_partitions_and_offsets_or_is_refused(positions: list[Any]) -> None:
    where = DeadLetterFilter(webhook_id="wh_1")
    good = ReplayReport(until=datetime(2026, 1, 15, 10, 30, tzinfo=UTC))
    good.positions = {0: 4, 3: 9}
    cursor = encode_replay_cursor(good, where)
    assert decode_replay_cursor(cursor, where) == (good.until, {0: 4, 3: 9})
    bound = decode_raw_cursor(cursor, (str, str, list))[1]
    bad = encode_raw_cursor([good.until.isoformat(), bound, positions])
    with pytest.raises(Problem) as refused:
        decode_replay_cursor(bad, where)
    assert [(e.field, e.reason) for e in refused.value.errors] == [("cursor", "invalid_cursor")]


async def test_a_replay_reads_for_half_the_request_s_time_counted_from_its_start(
    tokens: TokenSet,
) -> None:
    """A body sent slowly takes from the replay's time: it still answers within the request's
    (until 2026-12-06 its reading began after the body, and could run past the timeout)."""
    seen: list[float] = []

    class Recording(MemoryDeadLetters):
        async def replay(self, where: DeadLetterFilter, **kwargs: Any) -> ReplayReport:
            seen.append(kwargs["deadline"] - asyncio.get_running_loop().time())
            return ReplayReport(until=datetime(2026, 1, 15, tzinfo=UTC))

    repository = MemoryRepository()
    control = control_service(repository, dead_letters=Recording())
    app = create_app(
        WebhookService(repository), control, tokens, config=ApiConfig(request_timeout=2.0)
    )
    server = TestServer(app)
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /v1/dead-letters/replay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + ADMIN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{"
        )
        await writer.drain()
        await asyncio.sleep(0.4)  # the rest of the body later (what is tested, not a wait)
        writer.write(b"}")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        assert answer.startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await server.close()
    [left] = seen
    assert left <= 2.0 * REPLAY_SHARE - 0.4 + 0.05


@pytest.mark.parametrize(
    ("last", "state"),
    [
        ({"outcome": "success", "status": 200, "next": None}, "delivered"),
        ({"next": "retry"}, "retrying"),
        ({"next": "dead_letter"}, "dead_lettered"),
        # 410 Gone, or failing too long: the webhook disabled and the delivery dead-lettered
        # (until 2026-12-06 shown dropped, and left out of a search for what to replay)
        ({"status": 410, "next": "disabled"}, "dead_lettered"),
        ({"outcome": "skipped", "status": None, "next": None}, "dropped"),
    ],
)
async def test_a_delivery_s_state_is_what_its_last_attempt_led_to(
    api: Api, last: dict[str, Any], state: str
) -> None:
    await api.create(id="wh_1")
    api.activity.add(attempt("dS", 1, at=NOW - 90))
    api.activity.add(attempt("dS", 2, at=NOW - 30, **last))
    shown = await (await api.client.get("/v1/deliveries/dS", headers=auth())).json()
    assert shown["state"] == state


async def test_a_delivery_named_with_its_webhook_leaves_out_attempts_past_the_log_s_age() -> None:
    """As every other path to a delivery does, until a sweep forgets them (until 2026-12-06
    ``?webhook_id=`` showed them, and the state they made)."""
    from bridge.api.recoveries import Recoveries
    from bridge.subscriptions.webhook import webhook_from_record
    from tests.support.builders import webhook_record

    activity = MemoryActivity()
    week = 7 * 86400
    activity.add(
        attempt("dA", 1, at=NOW - week + 5, outcome="success", status=200, next=None),
        attempt("dA", 2, at=NOW - 60),
    )
    repository = MemoryRepository({"wh_1": webhook_from_record(webhook_record(id="wh_1"))})
    control = ControlService(
        repository,
        activity,
        Recoveries(Runner(), clock=lambda: NOW),
        MemoryDeadLetters(),
        clock=lambda: NOW + 10,  # the first attempt is now past the log's age
    )
    admin = Principal("admin", frozenset({"read", "write"}))
    shown = await control.delivery(admin, "dA", webhook_id="wh_1")
    assert [a["attempt"] for a in shown["attempts"]] == [2] and shown["state"] == "retrying"


async def test_a_redelivery_not_naming_its_webhook_needs_the_read_scope(api: Api) -> None:
    """Finding the webhook reads the delivery logs: a token with ``write`` alone names it (with
    several workers it was a 503 to be tried again for ever until 2026-12-07)."""
    from tests.unit.api.conftest import WRITER

    await api.create(id="wh_1")
    api.activity.add(attempt("d1", 1))
    refused = await problem(
        await api.client.post("/v1/deliveries/d1/redeliver", headers=auth(WRITER)), 403
    )
    assert "?webhook_id=" in refused["detail"]
    named = await api.client.post(
        "/v1/deliveries/d1/redeliver?webhook_id=wh_1", headers=auth(WRITER)
    )
    assert named.status == 202, await named.text()


async def test_another_site_s_delivery_named_with_its_webhook_is_not_told_apart(api: Api) -> None:
    """A worker routing a redelivery names the webhook of the delivery it found: to a token of
    another site the answer is the one for a delivery no log keeps (until 2026-12-07 "no such
    webhook" told it the delivery id was one)."""
    await api.create(ADMIN, id="wh_other", site_id="site_2", user_id="user_2")
    await api.create(SITE_1, id="wh_mine", site_id="site_1", user_id="user_1")
    api.activity.add(attempt("d_other", 1, webhook_id="wh_other"))
    details = set()
    for path in (
        "/v1/deliveries/d_other/redeliver?webhook_id=wh_other",
        "/v1/deliveries/d_nothing/redeliver?webhook_id=wh_mine",
        "/v1/deliveries/d_nothing/redeliver",
    ):
        details.add(
            (await problem(await api.client.post(path, headers=auth(SITE_1)), 404))["detail"]
        )
    for path in ("/v1/deliveries/d_other?webhook_id=wh_other", "/v1/deliveries/d_nothing"):
        details.add(
            (await problem(await api.client.get(path, headers=auth(SITE_1)), 404))["detail"]
        )
    assert details == {"no attempt of this delivery is kept"}


async def test_a_range_a_float_cannot_tell_apart_is_a_400(api: Api) -> None:
    """A microsecond apart in year 9000: the datetimes differ, their floats do not (a 500 for a
    few days on 2026-12-07)."""
    await api.create(id="wh_1")
    path = (
        "/v1/webhooks/wh_1/attempts?since=9000-01-01T00:00:00.000000Z"
        "&until=9000-01-01T00:00:00.000001Z"
    )
    body = await problem(await api.client.get(path, headers=auth()), 400)
    assert body["errors"][0]["field"] == "until"


@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH, MAX_DATA_DEPTH + 1])
async def test_a_letter_of_data_as_deep_as_accepted_is_listed(api: Api, levels: int) -> None:
    """A page holds a letter's event's data at ``items[i].event.data``, the deepest JSON the
    bridge writes of it (``DATA_EMBEDDING``): the deepest data accepted is listed, and a letter
    one level deeper (written before 2026-12-07, when data of 255 levels was accepted) is left
    out of the pages, as another letter no answer can hold; the page was a 500."""
    inner: list[Any] = []
    for _ in range(levels - 2):
        inner = [inner]
    data = {"id": "post_1", "title": "T", "x": inner}
    event = Event("evt_1", "post.created", data, "2026-01-15T10:00:00Z", "s", "u")
    letter = dead_letter_record(
        reason="attempts_exhausted",
        detail="8 attempts",
        source=SourceRef("events", 0, 1),
        now=datetime(2026, 1, 15, 10, tzinfo=UTC),
        event=event,
        webhook_id="wh_1",
        delivery_id="dl_1",
    )
    assert letter["event"] is not None
    api.dead_letters.records = [letter, dead_letter(2)]
    page = await get_json(api, "/v1/dead-letters")
    listed = [d["delivery_id"] for d in page["items"]]
    if levels == MAX_DATA_DEPTH:
        assert listed == ["dl_1", "dl_2"]
        assert page["items"][0]["event"]["data"] == data
    else:
        assert listed == ["dl_2"]
