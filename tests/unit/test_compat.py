"""Records earlier versions of the bridge wrote, read by this one (docs/operations-helm.md,
"Upgrades"): compacted topics keep a webhook's, a status's and a recovery's newest record for
ever, and during a rolling upgrade old and new workers read each other's records. Each record
in compat/records.json was written by the writer of the commit it names (the first of
2026-11-27; those before each change of a record's format since), secrets replaced; a change
that stops this version reading one of them fails here."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.admin import dead_letters
from bridge.admin.recovery import Operation
from bridge.attempts.record import Attempt
from bridge.contract import jsoncanon
from bridge.contract.schemas import is_valid
from bridge.delivery.pending_retry import parse_retry
from bridge.subscriptions.webhook import Webhook, parse_webhook
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
    elif kind == "retry":
        retry = parse_retry(value)
        assert retry.attempt == record["value"]["attempt"]
    elif kind == "deadletter":
        # Replayable, as the CLI and the API replay it.
        assert dead_letters._replayed(record["value"], NOW) is not None
    elif kind == "status":
        assert is_valid("schemas/status.json", record["value"])
        webhook = _webhook(record["written_by"])
        verdict = disable_verdict(webhook, record["value"])
        if isinstance(record["value"].get("applied_at"), str):
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
