"""Records earlier versions of the bridge wrote, read by this one (docs/operations-helm.md,
"Upgrades"): compacted topics keep a webhook's, a status's and a recovery's newest record for
ever, and during a rolling upgrade old and new workers read each other's records. Each record
in compat/records.json was written by the writer of the commit it names (the first of
2026-11-27; those before each change of a record's format since), secrets replaced; a change
that stops this version reading one of them fails here."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.admin import dead_letters
from bridge.admin.recovery import Operation, RecoveryRequest
from bridge.attempts.record import Attempt
from bridge.contract import jsoncanon
from bridge.contract.events import parse_event
from bridge.contract.payload import EncodedEvent
from bridge.contract.schemas import is_valid
from bridge.delivery.attempt_record import attempt_record
from bridge.delivery.dead_letters import dead_letter_record
from bridge.delivery.endpoint_health import EndpointHealth, HealthChange
from bridge.delivery.job import Job, SourceRef
from bridge.delivery.pending_retry import PendingRetry, parse_retry
from bridge.http.base import AttemptResult
from bridge.kafka.outputs import _attempt_bytes
from bridge.subscriptions.changes import created_record, disabled_record, rotated_record
from bridge.subscriptions.webhook import Webhook, parse_webhook, webhook_from_record
from bridge.worker.disables import disable_verdict
from bridge.worker.recovery_view import recovery_record

RECORDS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "compat" / "records.json").read_text()
)
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp()


def _value(record: dict[str, Any]) -> bytes:
    return jsoncanon.dumps(record["value"])


def _webhook(written_by: str) -> Webhook:
    """The first webhook record the same commit wrote."""
    for record in RECORDS:
        if record["written_by"] == written_by and record["kind"] == "webhook":
            webhook = parse_webhook(record["key"].encode(), _value(record))
            assert webhook is not None
            return webhook
    raise AssertionError(f"no webhook written by {written_by}")


def test_every_kind_and_the_first_version_are_covered() -> None:
    kinds = {r["kind"] for r in RECORDS}
    assert kinds == {"webhook", "attempt", "retry", "deadletter", "status", "recovery"}
    assert any(r["written_by"].endswith("(2026-11-27)") for r in RECORDS)


@pytest.mark.parametrize(
    "record", RECORDS, ids=[f"{r['kind']}-{r['written_by'].split()[0]}-{i}" for i, r in
                            enumerate(RECORDS)]
)  # fmt: skip
def test_a_record_an_earlier_version_wrote_is_read(record: dict[str, Any]) -> None:
    kind, key, value = record["kind"], record["key"].encode(), _value(record)
    if kind == "webhook":
        webhook = parse_webhook(key, value)
        assert webhook is not None and webhook.id == record["key"]
        assert webhook.secret == record["value"]["secret"]
    elif kind == "attempt":
        attempt = Attempt.parse(value)
        assert attempt.delivery_id == record["value"]["delivery_id"]
        assert attempt.recovery_id == record["value"].get("recovery_id")
        assert attempt.trigger == record["value"].get("trigger", "scheduled")
    elif kind == "retry":
        retry = parse_retry(value)
        assert retry.attempt == record["value"]["attempt"]
        assert retry.recovery_id == record["value"].get("recovery_id")
        if "replay_id" in record["value"]:
            assert retry.replay_id == record["value"]["replay_id"]
        elif retry.replayed and retry.recovery_id is None:
            assert retry.replay_id is not None  # told by when it was written (bdb2a47)
    elif kind == "deadletter":
        # Replayable, as the CLI and the API replay it.
        assert dead_letters._replayed(record["value"], NOW) is not None
    elif kind == "status":
        assert is_valid("schemas/status.json", record["value"])
        webhook = _webhook(record["written_by"])
        verdict = disable_verdict(webhook, record["value"])
        if record["value"]["state"] == "failing":
            # No disable; a failure within a day of its latest goes on with its period.
            assert verdict is None
            latest = record["value"].get("last_failure_at") or record["value"]["failing_since"]
            health = EndpointHealth(30 * 86400.0, {record["key"]: record["value"]}.get)
            change = health.on_failure(record["key"], latest + 7200.0)
            assert change is not None
            assert change.failing_since == record["value"]["failing_since"]
        elif isinstance(record["value"].get("applied_at"), str):
            assert verdict is None  # applied: never again
        elif "webhook_updated_at" not in record["value"]:
            # Written before 2026-12-04: the deciding worker turned the webhook off itself,
            # so one on now was turned on since, and stays on.
            assert verdict == "changed"
        else:
            assert verdict in {"written", "changed"}
    else:
        assert kind == "recovery"
        read = recovery_record(key, value)
        assert read is not None
        operation = Operation.from_record(read, _webhook(record["written_by"]))
        assert operation.state == record["value"]["state"]


def _written_now() -> dict[str, list[dict[str, Any]]]:
    """One record of each kind, as this version's writers write them (every optional field
    set where a writer sets one)."""
    event = parse_event(
        json.dumps(
            {
                "id": "evt_1",
                "type": "post.created",
                "data": {"id": "p1", "title": "t"},
                "timestamp": "2026-12-06T10:00:00.000Z",
                "site_id": "site_1",
                "user_id": "user_1",
            }
        ).encode()
    )
    made = created_record(
        webhook_id="wh_1",
        url="https://example.com/hook",
        events=["post.created"],
        site_id="site_1",
        user_id="user_1",
        rate_limit=5.0,
        standard=True,
        now=datetime(2026, 12, 6, tzinfo=UTC),
    )
    webhook = webhook_from_record(made)
    rotated = rotated_record(webhook, now=datetime(2026, 12, 6, 1, tzinfo=UTC), overlap=60.0)
    disabled = disabled_record(webhook, "gone", datetime(2026, 12, 6, 2, tzinfo=UTC))
    job = Job(EncodedEvent.of(event), webhook, 2, SourceRef("postion.events", 0, 5, b"site_1"))
    results = [
        AttemptResult(False, 503, "http_status", 0.25, "2026-12-06T10:00:01.000Z", retry_after=9.0),
        AttemptResult(
            True,
            200,
            None,
            1.0,
            "2026-12-06T10:00:02.000Z",
            response_bytes=70_000,
            response_truncated=True,
            response_prefix=b"ok",
        ),
    ]
    # An operator's sending (a recovery): its attempts are manual and name the recovery.
    recovered = dataclasses.replace(job, replayed=True, recovery_id="rec_1")
    attempts = [
        jsoncanon.loads(_attempt_bytes(attempt_record(job, results[0], "failure", "retry", 1.5))),
        jsoncanon.loads(_attempt_bytes(attempt_record(job, results[1], "success", None, None))),
        jsoncanon.loads(_attempt_bytes(attempt_record(recovered, results[1], "success", None))),
    ]
    retry = PendingRetry(
        delivery_id=job.delivery_id,
        webhook_id="wh_1",
        event=event,
        attempt=3,
        not_before=1796551200.0,
        enqueued_at=1796551100.0,
        history=tuple(r.as_record() for r in results),
        replayed=True,
        webhook_created_at=webhook.created_at,
    )
    # A dead letter's replay (its id, and the attempts made before it) and a recovery's retry.
    replay = dataclasses.replace(
        retry, replay_id="5f0c6a52-replay", replayed_after=2, webhook_created_at=None
    )
    recovery_retry = dataclasses.replace(retry, recovery_id="rec_1")
    letter = dead_letter_record(
        reason="attempts_exhausted",
        detail="8 attempts; last: HTTP 503",
        source=SourceRef("postion.webhooks.retry.7", 1, 9, b"wh_1"),
        now=datetime(2026, 12, 6, 10, tzinfo=UTC),
        event=event,
        webhook_id="wh_1",
        delivery_id=job.delivery_id,
        attempts=results,
        webhook_created_at=webhook.created_at,
    )
    change = HealthChange(
        "wh_1",
        "disabled",
        1796550000.0,
        "gone",
        webhook.created_at,
        webhook.updated_at,
        "2026-12-06T10:00:06.000Z",
    )
    # A failing period, with its latest failure (published at most hourly).
    failing = HealthChange(
        "wh_1",
        "failing",
        1796540000.0,
        None,
        webhook.created_at,
        webhook.updated_at,
        last_failure_at=1796549000.0,
    )
    request = RecoveryRequest(
        webhook, datetime(2026, 12, 6, 9, tzinfo=UTC), datetime(2026, 12, 6, 10, tzinfo=UTC)
    )
    operation = Operation(request, id="rec_1")
    return {
        "webhook": [made, rotated, disabled],
        "attempt": attempts,
        "retry": [jsoncanon.loads(r.to_bytes()) for r in (retry, replay, recovery_retry)],
        "deadletter": [letter],
        "status": [
            change.to_record("2026-12-06T10:00:05.000Z"),
            failing.to_record("2026-12-06T10:00:04.000Z"),
        ],
        "recovery": [operation.to_record(updated_at=1796551200.0)],
    }


def test_every_field_this_version_writes_is_in_a_record_read_here() -> None:
    """A writer that adds a field makes a format the records above do not hold: add a record
    the new writer wrote to compat/records.json (written_by: its commit and date), so that the
    versions after it are held to reading it."""
    kept: dict[str, set[str]] = {}
    for record in RECORDS:
        kept.setdefault(record["kind"], set()).update(record["value"])
    for kind, records in _written_now().items():
        for record in records:
            new = set(record) - kept[kind]
            assert not new, f"{kind} records now have {sorted(new)}: add one to records.json"
