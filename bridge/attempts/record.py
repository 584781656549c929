"""An attempt record of the attempts topic, read back: parsed, checked, and shown to an API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bridge.contract import jsoncanon
from bridge.errors import InvalidRecord

__all__ = ["OUTCOMES", "Attempt", "status_class"]

#: Text fields an attempt record must carry, and text fields it may leave null.
_TEXT = ("delivery_id", "webhook_id", "event_type", "at")
_OPTIONAL_TEXT = ("event_id", "error", "next", "next_at")

#: The ``outcome`` values an attempt record may carry.
OUTCOMES = frozenset({"success", "failure", "skipped"})


def status_class(status: int | None) -> str:
    """``2xx`` … ``5xx`` for a response, ``none`` when no response arrived (a filter value)."""
    if status is None:
        return "none"
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt as the deliverer recorded it (``topics/schemas/attempt.json``)."""

    delivery_id: str
    webhook_id: str
    event_id: str | None
    event_type: str
    #: 1 for the first attempt of a delivery.
    attempt: int
    #: ``success``, ``failure`` or ``skipped`` (no request was made).
    outcome: str
    status: int | None
    #: Error class (``timeout``, ``http_status``, ``circuit_open`` ...), ``None`` on success.
    error: str | None
    duration_seconds: float
    #: When the attempt started, as recorded (``2024-01-15T10:30:00.250Z``).
    at: str
    #: The same moment in seconds since the epoch, for ordering and windows.
    at_seconds: float
    #: What followed: ``retry``, ``dead_letter``, ``disabled``, or ``None``.
    next: str | None
    #: When the retry is due (as recorded), for ``next`` retry; ``None`` otherwise or in records
    #: written before it was recorded.
    next_at: str | None = None
    #: Bytes of the response body read, up to the cap on a response (see
    #: ``response_truncated``); ``None`` when no response arrived, or in records written before
    #: it was recorded.
    response_bytes: int | None = None
    #: True when the cap ended the body: ``response_bytes`` is what was read, not its length.
    response_truncated: bool = False
    #: The body's first bytes as text, only when the worker was told to keep them
    #: (``attempt_response_prefix_bytes``); receiver-controlled: escape before showing it.
    response_prefix: str | None = None

    @property
    def status_class(self) -> str:
        return status_class(self.status)

    @classmethod
    def parse(cls, value: bytes | None) -> Attempt:
        """The attempt in a record's value; :class:`InvalidRecord` (with a ``reason``) when the
        value is not an attempt record. Values are never quoted in the error."""
        if value is None:
            raise InvalidRecord("tombstone", "an attempt record has no value")
        record = jsoncanon.loads(value)
        if not isinstance(record, dict):
            raise InvalidRecord("not_an_object", "an attempt record is a JSON object")
        return cls.of(record)

    @classmethod
    def of(cls, record: dict[str, Any]) -> Attempt:
        """The attempt in a decoded attempt record (see :meth:`parse`)."""
        # Read for every attempt record a worker's delivery log takes: checked in loops over
        # the names rather than a helper call per field.
        get = record.get
        texts: tuple[Any, ...] = (
            get("delivery_id"),
            get("webhook_id"),
            get("event_type"),
            get("at"),
        )
        for name, value in zip(_TEXT, texts, strict=True):
            if not isinstance(value, str) or not value:
                raise InvalidRecord("schema_invalid", f"attempt record: {name} is not a string")
        optional = (get("event_id"), get("error"), get("next"), get("next_at"))
        for name, value in zip(_OPTIONAL_TEXT, optional, strict=True):
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidRecord("schema_invalid", f"attempt record: {name} is not a string")
        delivery_id, webhook_id, event_type, at = texts
        event_id, error, next_step, next_at = optional
        attempt = record.get("attempt")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise InvalidRecord("schema_invalid", "attempt record: attempt is not a count")
        outcome = record.get("outcome")
        if outcome not in OUTCOMES:
            raise InvalidRecord("schema_invalid", "attempt record: unknown outcome")
        status = record.get("status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise InvalidRecord("schema_invalid", "attempt record: status is not an integer")
        duration = record.get("duration_seconds")
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
            raise InvalidRecord("schema_invalid", "attempt record: duration_seconds is not >= 0")
        try:
            moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRecord("schema_invalid", "attempt record: at is not a time") from None
        if moment.tzinfo is None:
            raise InvalidRecord("schema_invalid", "attempt record: at has no time zone")
        response_bytes = record.get("response_bytes")
        if response_bytes is not None and (
            isinstance(response_bytes, bool)
            or not isinstance(response_bytes, int)
            or response_bytes < 0
        ):
            raise InvalidRecord("schema_invalid", "attempt record: response_bytes is not a count")
        truncated = record.get("response_truncated", False)
        if not isinstance(truncated, bool):
            raise InvalidRecord("schema_invalid", "attempt record: response_truncated is not true")
        prefix = record.get("response_prefix")
        if prefix is not None and not isinstance(prefix, str):
            raise InvalidRecord("schema_invalid", "attempt record: response_prefix is not a string")
        return cls(
            delivery_id=delivery_id,
            webhook_id=webhook_id,
            event_id=event_id,
            event_type=event_type,
            attempt=attempt,
            outcome=str(outcome),
            status=status,
            error=error,
            duration_seconds=float(duration),
            at=at,
            at_seconds=moment.timestamp(),
            next=next_step,
            next_at=next_at,
            response_bytes=response_bytes,
            response_truncated=truncated,
            response_prefix=prefix,
        )

    def as_dict(self) -> dict[str, Any]:
        """The attempt as the API shows it (``response_prefix`` only when recorded)."""
        shown: dict[str, Any] = {
            "delivery_id": self.delivery_id,
            "webhook_id": self.webhook_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "status": self.status,
            "status_class": self.status_class,
            "error": self.error,
            "duration_seconds": self.duration_seconds,
            "at": self.at,
            "next": self.next,
            "next_at": self.next_at,
            "response_bytes": self.response_bytes,
            "response_truncated": self.response_truncated,
        }
        if self.response_prefix is not None:
            shown["response_prefix"] = self.response_prefix
        return shown
