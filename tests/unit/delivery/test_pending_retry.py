"""bridge.delivery.pending_retry: the pending-retry record, its round trip and its validation."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from bridge.contract.schemas import schema_errors
from bridge.delivery.pending_retry import PendingRetry, parse_retry
from bridge.errors import InvalidRecord
from tests.support.jobs import SPEC_EVENT

EVENT = dataclasses.replace(SPEC_EVENT, type="post.created")
HISTORY = (
    {
        "at": "2024-01-15T10:30:01.000Z",
        "status": 500,
        "error": "http_status",
        "duration_seconds": 0.1,
    },
    {
        "at": "2024-01-15T10:30:06.000Z",
        "status": None,
        "error": "timeout",
        "duration_seconds": 30.0,
    },
)
PENDING = PendingRetry(
    delivery_id="d7d3f0a2-0000-5000-8000-000000000001",
    webhook_id="webhook_abc",
    event=EVENT,
    attempt=3,
    not_before=1_705_314_906.5,
    enqueued_at=1_705_314_606.25,
    history=HISTORY,
    replayed=True,
    replay_id="5f0c6a52-replay",
)


def valid_record(**changes: Any) -> dict[str, Any]:
    record = PENDING.to_record()
    record.update(changes)
    return record


def encode(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def test_round_trip() -> None:
    assert parse_retry(PENDING.to_bytes()) == PENDING


def test_a_replay_written_without_its_id_is_told_by_when_it_was_written() -> None:
    """A dead letter's replay written by a version before replays had ids: two replays of one
    letter are two sendings (see the pipeline's job key), a copy of one the same."""
    earlier = PENDING.to_record()
    del earlier["replay_id"]
    first = parse_retry(encode(earlier))
    assert first.replay_id is not None
    assert parse_retry(encode(earlier)).replay_id == first.replay_id
    again = parse_retry(encode({**earlier, "enqueued_at": PENDING.enqueued_at + 60}))
    assert again.replay_id not in (None, first.replay_id)
    # An operator's redelivery or recovery (its recovery_id) and a retry of the event's own
    # (not replayed) get none.
    assert parse_retry(encode({**earlier, "recovery_id": "rec_1"})).replay_id is None
    assert parse_retry(encode({**earlier, "replayed": False})).replay_id is None


def test_round_trip_of_the_defaults() -> None:
    pending = PendingRetry("d", "w", EVENT, attempt=2, not_before=10.0, enqueued_at=5.0)
    parsed = parse_retry(pending.to_bytes())
    assert parsed == pending
    assert parsed.history == ()
    assert parsed.replayed is False


def test_record_shape() -> None:
    record = PENDING.to_record()
    assert record == {
        "delivery_id": PENDING.delivery_id,
        "webhook_id": "webhook_abc",
        "event": EVENT.envelope(),
        "attempt": 3,
        "not_before": 1_705_314_906.5,
        "enqueued_at": 1_705_314_606.25,
        "attempts": [dict(a) for a in HISTORY],
        "replayed": True,
        "replay_id": "5f0c6a52-replay",
    }
    assert schema_errors("retry", record) == []
    assert json.loads(PENDING.to_bytes()) == record


def test_optional_fields_default() -> None:
    record = valid_record()
    for key in ("enqueued_at", "attempts", "replayed"):
        del record[key]
    parsed = parse_retry(encode(record))
    assert parsed.enqueued_at == parsed.not_before == 1_705_314_906.5
    assert parsed.history == ()
    assert parsed.replayed is False


def test_the_webhooks_created_at_goes_round_and_is_in_the_schema() -> None:
    marked = dataclasses.replace(PENDING, webhook_created_at="2026-01-15T09:00:00.000Z")
    record = marked.to_record()
    assert record["webhook_created_at"] == "2026-01-15T09:00:00.000Z"
    assert schema_errors("retry", record) == []
    assert parse_retry(marked.to_bytes()) == marked
    assert "webhook_created_at" not in PENDING.to_record()
    assert parse_retry(PENDING.to_bytes()).webhook_created_at is None


def test_integer_not_before_is_a_number() -> None:
    assert parse_retry(encode(valid_record(not_before=1_705_314_906))).not_before == 1_705_314_906.0


def bad_event(**changes: Any) -> dict[str, Any]:
    return {**EVENT.envelope(), **changes}


def without(key: str) -> dict[str, Any]:
    record = valid_record()
    del record[key]
    return record


INVALID: dict[str, bytes | None] = {
    "no value": None,
    "empty": b"",
    "not json": b"{not json",
    "truncated": PENDING.to_bytes()[:-1],
    "not utf-8": PENDING.to_bytes().replace(b"webhook_abc", b"webhook_\xff"),
    "array": b"[1, 2]",
    "string": b'"retry"',
    "null": b"null",
    "number": b"3",
    **{
        f"missing {key}": encode(without(key))
        for key in PENDING.to_record()
        if key not in {"enqueued_at", "attempts", "replayed", "replay_id"}
    },
    "attempt true": encode(valid_record(attempt=True)),
    "attempt 0": encode(valid_record(attempt=0)),
    "attempt negative": encode(valid_record(attempt=-3)),
    "attempt string": encode(valid_record(attempt="3")),
    "attempt float": encode(valid_record(attempt=2.5)),
    "attempt null": encode(valid_record(attempt=None)),
    "not_before string": encode(valid_record(not_before="soon")),
    "not_before null": encode(valid_record(not_before=None)),
    "not_before array": encode(valid_record(not_before=[1])),
    "not_before object": encode(valid_record(not_before={})),
    "not_before true": encode(valid_record(not_before=True)),
    "enqueued_at string": encode(valid_record(enqueued_at="yesterday")),
    "enqueued_at null": encode(valid_record(enqueued_at=None)),
    "enqueued_at array": encode(valid_record(enqueued_at=[1])),
    "enqueued_at false": encode(valid_record(enqueued_at=False)),
    "replayed string": encode(valid_record(replayed="no")),
    "replayed number": encode(valid_record(replayed=1)),
    "replayed null": encode(valid_record(replayed=None)),
    "webhook_created_at number": encode(valid_record(webhook_created_at=5)),
    "webhook_created_at object": encode(valid_record(webhook_created_at={})),
    "attempts object": encode(valid_record(attempts={"a": 1})),
    "attempts string": encode(valid_record(attempts="none")),
    "attempts of numbers": encode(valid_record(attempts=[1])),
    "attempts of strings": encode(valid_record(attempts=[*HISTORY, "timeout"])),
    # Written again with the next retry and into a dead letter: what could not be, is refused.
    "attempts unsafe integer": encode(valid_record(attempts=[{"status": 2**53 + 1}])),
    "attempts too deep": b'{"delivery_id": "d", "webhook_id": "w", "attempt": 2, '
    + b'"not_before": 1, "event": '
    + encode(EVENT.envelope())
    + b', "attempts": [{"x": '
    + b"[" * 300
    + b"]" * 300
    + b"}]}",
    "attempts too large": encode(valid_record(attempts=[{"error": "e" * 300_000}])),
    "event string": encode(valid_record(event="evt_1")),
    "event null": encode(valid_record(event=None)),
    "event empty": encode(valid_record(event={})),
    "event unknown type": encode(valid_record(event=bad_event(type="post.exploded"))),
    "event bad timestamp": encode(valid_record(event=bad_event(timestamp="yesterday"))),
    "event missing id": encode(
        valid_record(event={k: v for k, v in EVENT.envelope().items() if k != "id"})
    ),
    "event bad data": encode(valid_record(event=bad_event(data={"id": 5}))),
    # Lone surrogates (escaped by json.dumps): no record key or delivery id could be made.
    "webhook_id lone surrogate": encode(valid_record(webhook_id="webhook_\ud800")),
    "delivery_id lone surrogate": encode(valid_record(delivery_id="\udcff")),
    "event id lone surrogate": encode(valid_record(event=bad_event(id="evt_\ud800"))),
    "event data lone surrogate": encode(
        valid_record(event=bad_event(data={"id": "p", "title": "\udfff"}))
    ),
    "attempts lone surrogate": encode(valid_record(attempts=[{"error": "\ud800"}])),
    # Read by the deliverer (a deferred attempt counts the deferrals): a list there was a
    # TypeError, dead-lettered as the bridge's own error, until 2026-12-05.
    "attempts error a list": encode(valid_record(attempts=[{"error": ["circuit_open"]}])),
    "attempts error a number": encode(valid_record(attempts=[{"error": 5}])),
}


@pytest.mark.parametrize("raw", list(INVALID.values()), ids=list(INVALID))
def test_invalid_records(raw: bytes | None) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_retry(raw)
    assert info.value.reason == "invalid_retry_record"
    assert info.value.detail


def test_missing_field_is_named() -> None:
    with pytest.raises(InvalidRecord, match="webhook_id"):
        parse_retry(encode(without("webhook_id")))
