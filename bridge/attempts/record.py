"""An attempt record of the attempts topic, read back: parsed, checked, and shown to an API."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
import orjson

from bridge.contract.events import parse_time
from bridge.contract.jsoncanon import MAX_SAFE_INTEGER
from bridge.errors import InvalidRecord

__all__ = [
    "MAX_LENGTHS",
    "MAX_RECORD_BYTES",
    "MAX_RESPONSE_PREFIX",
    "OUTCOMES",
    "TRIGGERS",
    "Attempt",
    "status_class",
]

#: Text fields an attempt record must carry, and text fields it may leave null.
_TEXT = ("delivery_id", "webhook_id", "event_type", "at")
_OPTIONAL_TEXT = (
    "event_id",
    "error",
    "next",
    "next_at",
    "event_at",
    "webhook_created_at",
    "recovery_id",
    "endpoint",
)

#: The longest id an attempt record may carry (delivery, webhook, event, recovery): the
#: schemas' bound on webhook and event ids (``topics/schemas/webhook.json``, ``event.json``);
#: the bridge's delivery and recovery ids are UUIDs (36 characters).
_MAX_ID = 200
#: The longest name (``event_type``, ``error``, ``next``): the bridge writes words of its own
#: (``post.created``, ``http_status``, ``dead_letter``), none near this.
_MAX_NAME = 200
#: The longest time (``at``, ``next_at``, ``event_at``, ``webhook_created_at``): the bridge
#: writes 24 characters (``2024-01-15T10:30:00.250Z``), an event's timestamp at most 30, and
#: any ISO-8601 time parse_time reads fits.
_MAX_TIME = 64
#: The longest ``response_prefix``, in characters: ``attempt_response_prefix_bytes`` is at most
#: 1,024 (``bridge.config.MAX_ATTEMPT_RESPONSE_PREFIX``), and the writer's text is never longer in
#: UTF-8 than the bytes kept, so never more characters.
MAX_RESPONSE_PREFIX = 1024
#: The longest ``endpoint`` (``scheme://host:port``): a webhook URL's host is a name of at most
#: 253 characters (an internationalised one's ASCII form), an IPv4 address or a bracketed IPv6
#: one (``bridge.subscriptions.urls``), lower-cased.
_MAX_ENDPOINT = len("https://") + 253 + len(":65535")
#: What an ``endpoint`` is made of (the characters of those hosts): nothing JSON escapes.
_ENDPOINT = r"^https?://[0-9a-z_.\[\]:-]+\Z"
_ENDPOINT_MATCH = re.compile(_ENDPOINT).fullmatch
#: The most characters each text field may hold: what the bridge's writer can produce.
MAX_LENGTHS = {
    "delivery_id": _MAX_ID,
    "webhook_id": _MAX_ID,
    "event_id": _MAX_ID,
    "recovery_id": _MAX_ID,
    "event_type": _MAX_NAME,
    "error": _MAX_NAME,
    "next": _MAX_NAME,
    "at": _MAX_TIME,
    "next_at": _MAX_TIME,
    "event_at": _MAX_TIME,
    "webhook_created_at": _MAX_TIME,
    "response_prefix": MAX_RESPONSE_PREFIX,
    "endpoint": _MAX_ENDPOINT,
}
#: The largest record value read: larger ones are refused unread (``too_large``). A record with
#: every field at its bound, each character one JSON writes as ``\uXXXX`` (6 bytes; control
#: characters), takes under 16,000 bytes; the bridge's records take 300-600 bytes, plus
#: a kept response prefix.
MAX_RECORD_BYTES = 16 * 1024

#: The ``outcome`` values an attempt record may carry.
OUTCOMES = frozenset({"success", "failure", "skipped"})
#: The ``trigger`` values an attempt record may carry.
TRIGGERS = ("scheduled", "manual")


def status_class(status: int | None) -> str:
    """``2xx`` … ``5xx`` for a response, ``none`` when no response arrived (a filter value)."""
    if status is None:
        return "none"
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


#: Text fields: never empty, never longer than the bridge writes them (:data:`MAX_LENGTHS`).
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_ID)]
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_NAME)]
_Time = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_TIME)]
#: An integer JavaScript reads exactly: the API answers with what the log keeps.
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]


# A msgspec Struct rather than a dataclass: :meth:`Attempt.parse` decodes a record's bytes
# straight into one, checking every field as it goes (``parse`` 0.9-1.0 µs a record against
# 2.5 with orjson and the checks in Python; BENCHMARKS.md, "The delivery log in the delivering
# worker"), and ``gc=False`` keeps the cyclic collector from walking the attempts a delivery
# log holds (the fields are text and numbers: no cycle can go through one). msgspec skips a
# member it does not know unread (invalid UTF-8, a number past the double range), which the
# reader must refuse: a record with one is read the slow way. Nothing changes an attempt after
# :meth:`Attempt.parse` or :meth:`Attempt.of` made it, but the book, which shares its texts.
class Attempt(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """One delivery attempt as the deliverer recorded it (``topics/schemas/attempt.json``).

    Fields as the record names them; a record may leave out those with a default (records
    written before they were recorded)."""

    delivery_id: _Id
    webhook_id: _Id
    event_type: _Name
    #: 1 for the first attempt of a delivery.
    attempt: Annotated[int, msgspec.Meta(ge=1, le=MAX_SAFE_INTEGER)]
    #: ``success``, ``failure`` or ``skipped`` (no request was made).
    outcome: Literal["success", "failure", "skipped"]
    duration_seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]
    #: When the attempt started, as recorded (``2024-01-15T10:30:00.250Z``).
    at: _Time
    event_id: _Id | None = None
    status: Annotated[int, msgspec.Meta(ge=0, le=999)] | None = None
    #: Error class (``timeout``, ``http_status``, ``circuit_open`` ...), ``None`` on success.
    error: _Name | None = None
    #: What followed: ``retry``, ``dead_letter``, ``disabled``, or ``None``.
    next: _Name | None = None
    #: When the retry is due (as recorded), for ``next`` retry; ``None`` otherwise or in records
    #: written before it was recorded.
    next_at: _Time | None = None
    #: Bytes of the response body read, up to the cap on a response (see
    #: ``response_truncated``); ``None`` when no response arrived, or in records written before
    #: it was recorded.
    response_bytes: _Count | None = None
    #: True when the cap ended the body: ``response_bytes`` is what was read, not its length.
    response_truncated: bool = False
    #: The body's first bytes as text, only when the worker was told to keep them
    #: (``attempt_response_prefix_bytes``); receiver-controlled: escape before showing it.
    response_prefix: Annotated[str, msgspec.Meta(max_length=MAX_RESPONSE_PREFIX)] | None = None
    #: The event's own timestamp, as recorded (``None`` in records written before it was).
    event_at: _Time | None = None
    #: The ``created_at`` of the webhook the attempt was made for (``None`` in records written
    #: before it was recorded): which webhook of this id, when an id is used again.
    webhook_created_at: _Time | None = None
    #: ``manual`` for an attempt of a delivery an operator sent again (a redelivery, a
    #: recovery, a dead letter replayed) and of its retries, whose ``attempt`` counts from that
    #: sending (from 1 for a redelivery or recovery); ``scheduled`` for the event's own.
    trigger: Literal["scheduled", "manual"] = "scheduled"
    #: The recovery or redelivery that sent it (``/v1/recoveries/{id}``), for ``manual``.
    recovery_id: _Id | None = None
    #: ``scheme://host:port`` of the request (``None`` in a record ``skipped``, and in records
    #: written before 2026-12-07): what a starting worker's recent answers are judged by. Not
    #: kept in the delivery log (:class:`~bridge.attempts.book.ActivityBook` drops it).
    endpoint: Annotated[str, msgspec.Meta(max_length=_MAX_ENDPOINT, pattern=_ENDPOINT)] | None = (
        None
    )
    #: ``at`` in seconds since the epoch, for ordering and windows: not read from the record,
    #: always worked out from ``at``.
    at_seconds: float = 0.0

    @property
    def status_class(self) -> str:
        return status_class(self.status)

    @classmethod
    def parse(cls, value: bytes | None) -> Attempt:
        """The attempt in a record's value; :class:`InvalidRecord` (with a ``reason``) when the
        value is not an attempt record. Values are never quoted in the error."""
        if value is None:
            raise InvalidRecord("tombstone", "an attempt record has no value")
        if len(value) > MAX_RECORD_BYTES:
            # Not decoded: a record of megabytes is no attempt the bridge wrote (until
            # 2026-12-07 each was kept whole, ~500 KB of memory or 3 MB of disk a record).
            raise InvalidRecord(
                "too_large", f"an attempt record is at most {MAX_RECORD_BYTES} bytes"
            )
        # An API worker reads one record per delivery attempt: msgspec decodes and checks a
        # record a worker wrote in one pass. Anything it refuses is read again the slow way,
        # which alone decides what is refused and names why (msgspec names fields its own way).
        try:
            attempt = _decode(value)
        except (msgspec.MsgspecError, RecursionError):
            pass
        else:
            attempt.at_seconds = _seconds(attempt.at)
            return attempt
        # orjson refuses what msgspec refuses: invalid UTF-8, lone surrogates, NaN and numbers
        # beyond the double range; it reads an integer beyond 64 bits as a float, which no
        # integer field of an attempt record takes.
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidRecord("malformed_json", _reason(exc)) from None
        if not isinstance(record, dict):
            raise InvalidRecord("not_an_object", "an attempt record is a JSON object")
        return cls.of(record)

    @classmethod
    def of(cls, record: dict[str, Any]) -> Attempt:
        """The attempt in a decoded attempt record (see :meth:`parse`); :class:`InvalidRecord`
        naming the first field it cannot hold. Not on the delivery log's path (:meth:`parse`
        decodes a record with msgspec, against the same rules as the fields' annotations)."""
        _check(record)  # the fields below without a default are there
        get = record.get
        at = record["at"]
        return cls(
            delivery_id=record["delivery_id"],
            webhook_id=record["webhook_id"],
            event_type=record["event_type"],
            attempt=record["attempt"],
            outcome=record["outcome"],
            duration_seconds=float(record["duration_seconds"]),
            at=at,
            event_id=get("event_id"),
            status=get("status"),
            error=get("error"),
            next=get("next"),
            next_at=get("next_at"),
            response_bytes=get("response_bytes"),
            response_truncated=get("response_truncated", False),
            response_prefix=get("response_prefix"),
            event_at=get("event_at"),
            webhook_created_at=get("webhook_created_at"),
            trigger=get("trigger", "scheduled"),
            recovery_id=get("recovery_id"),
            endpoint=get("endpoint"),
            at_seconds=_seconds(at),
        )

    def as_dict(self) -> dict[str, Any]:
        """The attempt as the API shows it (``response_prefix`` only when recorded)."""
        shown: dict[str, Any] = {
            "delivery_id": self.delivery_id,
            "webhook_id": self.webhook_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "event_at": self.event_at,
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
            "webhook_created_at": self.webhook_created_at,
            "trigger": self.trigger,
            "recovery_id": self.recovery_id,
        }
        if self.response_prefix is not None:
            shown["response_prefix"] = self.response_prefix
        return shown


_decode = msgspec.json.Decoder(Attempt).decode


def _seconds(at: str) -> float:
    """``at`` in seconds since the epoch; :class:`InvalidRecord` when it is not a time an
    attempt can have."""
    try:
        moment = parse_time(at)
    except ValueError:
        raise InvalidRecord("schema_invalid", "attempt record: at is not a time") from None
    if moment.year >= 9999:
        # No room after it: a redelivery reads its events until a second later, which
        # year 10000 does not hold (a 500 until 2026-12-05).
        raise InvalidRecord("schema_invalid", "attempt record: at is not a time")
    return moment.timestamp()


def _reason(exc: orjson.JSONDecodeError) -> str:
    """What orjson found wrong, where (its message never quotes the value)."""
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


def _check(record: dict[str, Any]) -> None:
    """Raise :class:`InvalidRecord` naming the first field of ``record`` that an attempt record
    cannot hold."""
    get = record.get
    for name in _TEXT:
        value = get(name)
        if not isinstance(value, str) or not value:
            raise InvalidRecord("schema_invalid", f"attempt record: {name} is not a string")
        _check_length(name, value)
    for name in _OPTIONAL_TEXT:
        value = get(name)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise InvalidRecord("schema_invalid", f"attempt record: {name} is not a string")
            _check_length(name, value)
    # Integers within JavaScript's safe range: the API answers with what the log keeps, and
    # cannot write a larger one (until 2026-12-05 a status of 2**62 made every page of that
    # webhook's log a 500).
    attempt = get("attempt")
    if (
        isinstance(attempt, bool)
        or not isinstance(attempt, int)
        or not 1 <= attempt <= MAX_SAFE_INTEGER
    ):
        raise InvalidRecord("schema_invalid", "attempt record: attempt is not a count")
    outcome = get("outcome")
    if not isinstance(outcome, str) or outcome not in OUTCOMES:  # a list is not hashable
        raise InvalidRecord("schema_invalid", "attempt record: unknown outcome")
    status = get("status")
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 999
    ):
        raise InvalidRecord("schema_invalid", "attempt record: status is not an HTTP status")
    duration = get("duration_seconds")
    if (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 <= duration <= MAX_SAFE_INTEGER
    ):
        raise InvalidRecord("schema_invalid", "attempt record: duration_seconds is not >= 0")
    response_bytes = get("response_bytes")
    if response_bytes is not None and (
        isinstance(response_bytes, bool)
        or not isinstance(response_bytes, int)
        or not 0 <= response_bytes <= MAX_SAFE_INTEGER
    ):
        raise InvalidRecord("schema_invalid", "attempt record: response_bytes is not a count")
    if not isinstance(get("response_truncated", False), bool):
        raise InvalidRecord("schema_invalid", "attempt record: response_truncated is not true")
    if get("trigger", "scheduled") not in TRIGGERS:  # a tuple: any JSON value compares
        raise InvalidRecord("schema_invalid", "attempt record: unknown trigger")
    endpoint = get("endpoint")
    if endpoint is not None and _ENDPOINT_MATCH(endpoint) is None:
        raise InvalidRecord("schema_invalid", "attempt record: endpoint is not scheme://host:port")
    prefix = get("response_prefix")
    if prefix is not None:
        if not isinstance(prefix, str):
            raise InvalidRecord("schema_invalid", "attempt record: response_prefix is not a string")
        _check_length("response_prefix", prefix)


def _check_length(name: str, value: str) -> None:
    """Refuse a text field longer than the bridge writes it (as the Struct's ``max_length``)."""
    limit = MAX_LENGTHS[name]
    if len(value) > limit:
        raise InvalidRecord(
            "schema_invalid", f"attempt record: {name} is longer than {limit} characters"
        )
