"""Pending retries: the record that waits in a retry topic until its attempt is due."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from bridge.contract import jsoncanon
from bridge.contract.events import Event, parse_event
from bridge.errors import InvalidEvent, InvalidRecord

__all__ = ["MAX_HISTORY_BYTES", "PendingRetry", "parse_retry", "read_history"]


@dataclass(frozen=True)
class PendingRetry:
    """A delivery to attempt again once ``not_before`` has passed."""

    delivery_id: str
    webhook_id: str
    event: Event
    #: Number of the attempt to make (the first attempt was 1).
    attempt: int
    #: Unix time before which the attempt is not made.
    not_before: float
    #: Unix time when the record was written.
    enqueued_at: float
    #: Every attempt so far (``AttemptResult.as_record()``), oldest first.
    history: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    #: True for a delivery an operator sent again (dead-letter replay, recovery).
    replayed: bool = False
    #: The ``created_at`` of the webhook it was made for (``None`` in a record written before
    #: retries named it): dropped when the webhook of this id is now another one.
    webhook_created_at: str | None = None
    #: The recovery or redelivery that sent it (``/v1/recoveries/{id}``), and its retries.
    recovery_id: str | None = None
    #: How many of ``history`` were made before the delivery was last replayed from the
    #: dead-letter topic: only the deferrals after them count (``deliverer.MAX_DEFERRALS``).
    replayed_after: int = 0
    #: The replay of a dead letter that sent it (one id each time a letter is replayed), kept
    #: by its retries: two replays of one letter are two sendings, not copies of one.
    replay_id: str | None = None

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "delivery_id": self.delivery_id,
            "webhook_id": self.webhook_id,
            "event": self.event.envelope(),
            "attempt": self.attempt,
            "not_before": self.not_before,
            "enqueued_at": self.enqueued_at,
            "attempts": [dict(a) for a in self.history],
            "replayed": self.replayed,
        }
        # Left out when unknown, as records written before they were named leave them.
        if self.webhook_created_at is not None:
            record["webhook_created_at"] = self.webhook_created_at
        if self.recovery_id is not None:
            record["recovery_id"] = self.recovery_id
        if self.replayed_after:
            record["replayed_after"] = self.replayed_after
        if self.replay_id is not None:
            record["replay_id"] = self.replay_id
        return record

    def to_bytes(self) -> bytes:
        return jsoncanon.dumps(self.to_record())


#: Bytes a retry record's attempts may take (encoded): a delivery's attempts, with their
#: deferrals, take a few KiB; this leaves room in a produce request for the rest of its record.
MAX_HISTORY_BYTES = 256 * 1024


def _optional_id(value: Mapping[str, Any], name: str) -> str | None:
    """The record's ``name``: absent, or a non-empty string."""
    found = value.get(name)
    if found is not None and (not isinstance(found, str) or not found):
        raise InvalidRecord("invalid_retry_record", f"$.{name} must be a string")
    return found


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_retry(raw: bytes | None) -> PendingRetry:
    """Parse a retry-topic record; raises :class:`InvalidRecord` (``invalid_retry_record``)."""
    try:
        value = jsoncanon.loads(raw if raw is not None else b"")
        if not isinstance(value, dict):
            raise InvalidRecord("invalid_retry_record", "not a JSON object")
        event = parse_event(jsoncanon.dumps(value["event"]))
        attempt = value["attempt"]
        not_before = value["not_before"]
        if (
            not isinstance(attempt, int)
            or isinstance(attempt, bool)
            or not 1 <= attempt <= jsoncanon.MAX_SAFE_INTEGER
        ):
            # Written again (the next retry, the attempt's record): one no JSON reader keeps
            # exactly failed to encode there, a bridge error, until 2026-12-07.
            raise InvalidRecord(
                "invalid_retry_record", "$.attempt must be an integer from 1 to 2**53 - 1"
            )
        for name in ("delivery_id", "webhook_id"):
            if not isinstance(value[name], str) or not value[name]:
                raise InvalidRecord("invalid_retry_record", f"$.{name} must be a string")
        if not _is_number(not_before):
            raise InvalidRecord("invalid_retry_record", "$.not_before must be a number")
        enqueued_at = value.get("enqueued_at", not_before)
        if not _is_number(enqueued_at):
            raise InvalidRecord("invalid_retry_record", "$.enqueued_at must be a number")
        history = read_history(value.get("attempts", []))
        created = value.get("webhook_created_at")
        if created is not None and not isinstance(created, str):
            raise InvalidRecord("invalid_retry_record", "$.webhook_created_at must be a string")
        recovery = _optional_id(value, "recovery_id")
        replay = _optional_id(value, "replay_id")
        replayed_after = value.get("replayed_after", 0)
        if (
            not isinstance(replayed_after, int)
            or isinstance(replayed_after, bool)
            or not 0 <= replayed_after <= len(history)
        ):
            raise InvalidRecord(
                "invalid_retry_record",
                "$.replayed_after must be an integer from 0 to the number of attempts",
            )
        replayed = value.get("replayed", False)
        if not isinstance(replayed, bool):
            # (until 2026-12-07 read by its truth: "no" made the attempts "manual")
            raise InvalidRecord("invalid_retry_record", "$.replayed must be true or false")
        if replayed and replay is None and recovery is None:
            # A dead letter's replay written by a version before replays had ids (or its
            # retry): told apart by when it was written, as that version told them, so that
            # two replays of one letter are two sendings (during a rolling upgrade, the second
            # replay by an earlier version's command was taken here for the first's copy and
            # settled without a request: the delivery never reached the receiver). Its copies
            # share the time; its retries written here keep the id.
            replay = f"written-{float(enqueued_at)!r}"
        return PendingRetry(
            delivery_id=str(value["delivery_id"]),
            webhook_id=str(value["webhook_id"]),
            event=event,
            attempt=attempt,
            not_before=float(not_before),
            enqueued_at=float(enqueued_at),
            history=history,
            replayed=replayed,
            webhook_created_at=created,
            recovery_id=recovery,
            replayed_after=replayed_after,
            replay_id=replay,
        )
    except KeyError as exc:
        raise InvalidRecord("invalid_retry_record", f"missing {exc.args[0]!r}") from None
    except InvalidEvent as exc:
        raise InvalidRecord("invalid_retry_record", f"event: {exc.detail}") from None
    except InvalidRecord as exc:
        if exc.reason == "invalid_retry_record":
            raise
        raise InvalidRecord("invalid_retry_record", exc.detail) from None


def read_history(value: object) -> tuple[dict[str, Any], ...]:
    """A delivery's earlier attempts as a retry record carries them (``attempts``), from a
    retry record or a dead letter being replayed; :class:`InvalidRecord`
    (``invalid_retry_record``) for what no retry record could carry."""
    if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
        raise InvalidRecord("invalid_retry_record", "$.attempts must be an array of objects")
    # What the deliverer reads of them (a list there was a TypeError when the attempt was
    # deferred, until 2026-12-05: dead-lettered as the bridge's own error).
    if not all(isinstance(a.get("error"), str | None) for a in value):
        raise InvalidRecord("invalid_retry_record", "$.attempts[].error must be a string")
    # Written again with the next retry and into a dead letter: it must encode, and fit.
    try:
        encoded = jsoncanon.dumps(value)
    except InvalidRecord as exc:
        raise InvalidRecord("invalid_retry_record", f"$.attempts: {exc.detail}") from None
    if len(encoded) > MAX_HISTORY_BYTES:
        raise InvalidRecord(
            "invalid_retry_record", f"$.attempts: more than {MAX_HISTORY_BYTES} bytes"
        )
    return tuple(value)
