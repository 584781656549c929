"""bridge.admin.dead_letters.DeadLetterFilter: which dead letters a listing or a replay takes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.admin.dead_letters import DeadLetterFilter, _replayed, of_webhook_created
from bridge.contract.schemas import schema_errors
from bridge.delivery.pending_retry import parse_retry
from tests.support.jobs import SPEC_EVENT

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def letter(at: Any, **fields: Any) -> dict[str, Any]:
    return {"webhook_id": "wh", "delivery_id": "d", "dead_lettered_at": at, **fields}


def test_a_time_range_takes_the_letters_within_it_at_any_offset() -> None:
    where = DeadLetterFilter(since=T0, until=T0 + timedelta(hours=1))
    assert where.matches(letter("2026-12-04T12:00:00.000Z"))
    assert where.matches(letter("2026-12-04T14:30:00+02:00"))  # 12:30 UTC
    assert where.matches(letter("2026-12-04T13:00:00.000Z"))
    assert not where.matches(letter("2026-12-04T11:59:59.999Z"))
    assert not where.matches(letter("2026-12-04T13:00:00.001Z"))
    assert not DeadLetterFilter(webhook_id="other").matches(letter("2026-12-04T12:00:00Z"))


@pytest.mark.parametrize(
    "at", [None, 5, "", "not a time", "2026-12-04T12:30:00", ["2026-12-04T12:30:00Z"], {}]
)
def test_a_letter_without_a_readable_time_is_outside_every_range(at: Any) -> None:
    """The dead-letters topic takes whatever is written to it: a letter whose time is missing,
    not a time, or without an offset is in no time range (it used to be listed by any range
    when missing, and to fail the whole listing when not a time or without an offset)."""
    for where in (
        DeadLetterFilter(since=T0),
        DeadLetterFilter(until=T0 + timedelta(days=1)),
        DeadLetterFilter(since=T0, until=T0 + timedelta(days=1)),
    ):
        assert not where.matches(letter(at))
    assert DeadLetterFilter().matches(letter(at))  # no range: every letter


CREATED = "2026-12-04T12:00:00.000Z"


def test_a_letter_is_of_the_webhook_it_names_or_else_by_its_time() -> None:
    """A letter naming the ``created_at`` of its webhook is that webhook's, whatever its time;
    one without (written before letters named it) is the webhook's from its creation on; one
    without a readable time is no one's."""
    assert of_webhook_created(letter("2026-12-04T11:00:00Z", webhook_created_at=CREATED), CREATED)
    other = letter("2026-12-04T13:00:00Z", webhook_created_at="2026-12-04T11:00:00.000Z")
    assert not of_webhook_created(other, CREATED)
    assert of_webhook_created(letter("2026-12-04T12:00:00.000Z"), CREATED)
    assert of_webhook_created(letter("2026-12-04T14:00:00+02:00"), CREATED)
    assert not of_webhook_created(letter("2026-12-04T11:59:59.999Z"), CREATED)
    assert not of_webhook_created(letter("not a time"), CREATED)
    where = DeadLetterFilter(webhook_id="wh", webhook_created_at=CREATED)
    assert where.matches(letter("2026-12-04T12:30:00Z"))
    assert not where.matches(other)


def test_a_replayed_letter_names_the_webhook_it_was_made_for() -> None:
    made = letter(CREATED, event=SPEC_EVENT.envelope(), webhook_created_at=CREATED)
    replayed = _replayed(made, 1.0)
    assert replayed is not None and replayed.webhook_created_at == CREATED
    for odd in (None, 5):
        made["webhook_created_at"] = odd
        replayed = _replayed(made, 1.0)
        assert replayed is not None and replayed.webhook_created_at is None


def test_a_replayed_letter_counts_its_deferrals_afresh() -> None:
    """A letter of a long outage holds many deferrals: its replay's are counted after them
    (until 2026-12-07 they were counted with them, and each deferral spent an attempt)."""
    busy = {"at": CREATED, "status": None, "error": "circuit_open", "duration_seconds": 0.0}
    failed = {**busy, "status": 503, "error": "http_status"}
    attempts = [busy, failed] * 12 + [failed]
    made = letter(CREATED, event=SPEC_EVENT.envelope(), attempts=attempts)
    replayed = _replayed(made, 1.0)
    assert replayed is not None and replayed.replayed_after == len(attempts)
    assert parse_retry(replayed.to_bytes()) == replayed
    assert schema_errors("retry", replayed.to_record()) == []


@pytest.mark.parametrize(
    "odd",
    [
        {"delivery_id": None},
        {"delivery_id": ""},
        {"delivery_id": 5},
        {"attempts": "abc"},
        {"attempts": [1]},
        {"attempts": [{"error": ["circuit_open"]}]},
        {"attempts": [{"status": 2**62}]},  # no retry record could carry it
        {"attempts": [{"error": "e" * 300_000}]},
    ],
)
def test_a_letter_that_is_no_retry_is_not_replayed(odd: dict[str, Any]) -> None:
    """Written by something else than the bridge, a letter may lack what a retry needs: it is
    passed over, where until 2026-12-05 it failed the whole replay (KeyError, ValueError,
    TypeError), and every replay matching it for the topic's 30 days."""
    made = letter(CREATED, event=SPEC_EVENT.envelope(), delivery_id="d_1", attempts=[])
    replayed = _replayed(made, 1.0)
    assert replayed is not None and replayed.to_bytes()
    assert _replayed({**made, **odd}, 1.0) is None
