"""Platform events: parsing and validating the envelope, and building new events."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from bridge.contract import jsoncanon
from bridge.contract.schemas import EVENT_TYPES, event_data_errors, schema_errors
from bridge.errors import InvalidEvent, InvalidRecord

__all__ = [
    "DATA_EMBEDDING",
    "MAX_DATA_DEPTH",
    "Event",
    "parse_event",
    "build_event",
    "format_epoch",
    "format_timestamp",
    "parse_time",
]


#: How many levels above its own an event's ``data`` sits in the deepest JSON the bridge writes
#: of it: ``items[i].event.data`` in a page of ``/v1/dead-letters``. (A retry record and a dead
#: letter hold it at ``event.data``, and so does a delivery's body; the attempt record does not
#: hold it.)
DATA_EMBEDDING = 4
#: Levels an event's ``data`` may nest (the object itself is one): what its deepest embedding
#: leaves of :data:`jsoncanon.MAX_DEPTH <bridge.contract.jsoncanon.MAX_DEPTH>`. Deeper data is
#: refused as the event is read (``too_deep``): it was delivered, but its retry record, its dead
#: letter or a page listing that letter failed to encode, and the event was never settled.
MAX_DATA_DEPTH = jsoncanon.MAX_DEPTH - DATA_EMBEDDING


@dataclass(frozen=True)
class Event:
    """One platform event, validated."""

    #: Unique per event; with a webhook id it determines the delivery id.
    id: str
    #: One of :data:`bridge.contract.schemas.EVENT_TYPES`.
    type: str
    #: Event-specific data, as published (validated against its type's schema).
    data: Mapping[str, Any]
    #: ISO-8601 UTC with a ``Z`` suffix.
    timestamp: str
    site_id: str
    user_id: str
    #: ``data`` as JavaScript would print it, computed once when the event was validated.
    data_json: bytes = field(default=b"", repr=False, compare=False)

    def envelope(self) -> dict[str, Any]:
        """The record value published on the events topic."""
        return {
            "id": self.id,
            "type": self.type,
            "data": self.data,
            "timestamp": self.timestamp,
            "site_id": self.site_id,
            "user_id": self.user_id,
        }

    def to_bytes(self) -> bytes:
        return jsoncanon.dumps(self.envelope())

    @property
    def key(self) -> bytes:
        """The record key: the site id, so one site's events stay in order on one partition."""
        return self.site_id.encode("utf-8")

    @property
    def occurred_at(self) -> datetime:
        return _parse_timestamp(self.timestamp)


@lru_cache(maxsize=4096)
def _parse_timestamp(timestamp: str) -> datetime:
    # Read for every delivery of an event (its latency); events of a moment share a timestamp.
    return parse_time(timestamp)


def parse_time(text: object) -> datetime:
    """An ISO-8601 time with its offset (``Z``, ``z`` or ``+hh:mm``), in UTC.

    ``ValueError`` for anything else: not a string, not a time, a time without an offset (which
    would be read as the machine's local time), or one that leaves the calendar in UTC. Every
    time the bridge reads (records, query parameters, settings) goes through here.
    """
    if not isinstance(text, str):
        raise ValueError(f"not a time: a {type(text).__name__}")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("a time without an offset")
    if moment.tzinfo is UTC:
        return moment
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("a time out of range in UTC") from None


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with ``Z``, millisecond precision (``2024-01-15T10:30:00.123Z``)."""
    if moment.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    # isoformat truncates to milliseconds and ends in "+00:00"; twice as fast as strftime.
    return utc.isoformat(timespec="milliseconds")[:-6] + "Z"


def format_epoch(seconds: float) -> str:
    """:func:`format_timestamp` of a time in seconds since the epoch."""
    return format_timestamp(datetime.fromtimestamp(seconds, UTC))


def _from_mapping(value: Any) -> Event:
    if not isinstance(value, dict):
        raise InvalidEvent(
            "not_an_object", f"event must be a JSON object, got {type(value).__name__}"
        )
    event_type = value.get("type")
    if isinstance(event_type, str) and event_type not in EVENT_TYPES:
        raise InvalidEvent("unknown_event_type", f"unknown event type {event_type[:100]!r}")
    errors = schema_errors("event", value)
    if errors:
        raise InvalidEvent("schema_invalid", "; ".join(errors))
    data_errors = event_data_errors(value["type"], value["data"])
    if data_errors:
        raise InvalidEvent("schema_invalid", "; ".join(data_errors))
    try:
        parse_time(value["timestamp"])
    except ValueError:
        raise InvalidEvent("schema_invalid", "$.timestamp: not a valid date-time") from None
    # Fail here, once per event, rather than once per delivery: data that JavaScript receivers
    # could not reproduce byte for byte can never be verified by them, nor can the bridge write
    # the records that hold data nested too deep for them (MAX_DATA_DEPTH).
    try:
        data_json = jsoncanon.dumps(value["data"], max_depth=MAX_DATA_DEPTH)
    except InvalidRecord as exc:
        raise InvalidEvent(exc.reason, exc.detail) from None
    return Event(
        id=value["id"],
        type=value["type"],
        data=value["data"],
        timestamp=value["timestamp"],
        site_id=value["site_id"],
        user_id=value["user_id"],
        data_json=data_json,
    )


def parse_event(raw: bytes | None) -> Event:
    """Parse and validate an events-topic record value; raise :class:`InvalidEvent` if bad."""
    if raw is None:
        raise InvalidEvent("malformed_json", "record has no value")
    try:
        value = jsoncanon.loads(raw)
    except InvalidRecord as exc:
        raise InvalidEvent(exc.reason, exc.detail) from None
    return _from_mapping(value)


def build_event(
    event_type: str,
    data: Mapping[str, Any],
    *,
    site_id: str,
    user_id: str,
    event_id: str | None = None,
    timestamp: datetime | None = None,
) -> Event:
    """A new, validated event; the id defaults to a random UUID and the time to now."""
    moment = timestamp if timestamp is not None else datetime.now(UTC)
    envelope = {
        "id": event_id if event_id is not None else str(uuid.uuid4()),
        "type": event_type,
        "data": dict(data),
        "timestamp": format_timestamp(moment),
        "site_id": site_id,
        "user_id": user_id,
    }
    try:
        # What parse_event's loads refuses, refused before publishing (a command-line argument
        # that is not UTF-8 arrives with lone surrogates, for one).
        jsoncanon.check_text(envelope)
    except InvalidRecord as exc:
        raise InvalidEvent(exc.reason, exc.detail) from None
    return _from_mapping(envelope)
