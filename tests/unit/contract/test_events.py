"""bridge.contract.events: parsing and validating the event envelope, building events,
timestamps."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.contract import jsoncanon
from bridge.contract.events import (
    DATA_EMBEDDING,
    MAX_DATA_DEPTH,
    Event,
    build_event,
    format_timestamp,
    parse_event,
    parse_time,
)
from bridge.contract.jsoncanon import MAX_SAFE_INTEGER
from bridge.contract.payload import EncodedEvent, build_body, delivery_id
from bridge.contract.schemas import EVENT_TYPES
from bridge.delivery.attempt_record import attempt_record
from bridge.delivery.dead_letters import dead_letter_record
from bridge.delivery.job import Job, SourceRef
from bridge.delivery.pending_retry import PendingRetry, parse_retry
from bridge.errors import InvalidEvent, InvalidRecord
from bridge.http.base import AttemptResult
from bridge.subscriptions.webhook import Webhook

#: The documentation's event types, in its order.
DOCUMENTED_TYPES = (
    "post.created",
    "post.published",
    "post.deleted",
    "site.created",
    "subscription.created",
    "subscription.cancelled",
    "test.event",
)

#: Valid data per type (topics/schemas/data/<type>.json).
VALID_DATA: dict[str, dict[str, Any]] = {
    "post.created": {
        "id": "post_123",
        "title": "My New Post",
        "slug": "my-new-post",
        "status": "draft",
        "url": "https://blog.example/my-new-post",
        "author_id": "user_456",
        "published_at": None,
    },
    "post.published": {
        "id": "post_123",
        "title": "My New Post",
        "published_at": "2024-01-15T10:30:00Z",
    },
    "post.deleted": {"id": "post_123", "title": "Gone", "deleted_at": "2024-01-15T10:30:00Z"},
    "site.created": {"id": "site_789", "name": "My Site", "url": "https://site.example"},
    "subscription.created": {
        "id": "sub_1",
        "email": "reader@example.com",
        "plan": "pro",
        "status": "active",
    },
    "subscription.cancelled": {"id": "sub_1", "status": "cancelled"},
    "test.event": {"webhook_id": "webhook_abc", "message": "Hello from the dashboard"},
}

#: Data missing a required field, per type.
MISSING_REQUIRED: list[tuple[str, dict[str, Any], str]] = [
    ("post.created", {"id": "post_1"}, "title"),
    ("post.created", {"title": "t"}, "id"),
    ("post.published", {"id": "post_1"}, "title"),
    ("post.deleted", {"title": "t"}, "id"),
    ("site.created", {"id": "site_1"}, "name"),
    ("subscription.created", {"email": "a@b.c"}, "id"),
    ("subscription.cancelled", {}, "id"),
    ("test.event", {"message": "hi"}, "webhook_id"),
]

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def envelope(event_type: str = "post.created", **changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": "evt_1",
        "type": event_type,
        "data": dict(VALID_DATA[event_type]),
        "timestamp": "2024-01-15T10:30:00Z",
        "site_id": "site_789",
        "user_id": "user_456",
    }
    value.update(changes)
    return value


def raw(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def rejected(data: bytes | None) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_event(data)
    assert isinstance(info.value, InvalidRecord)
    assert info.value.retriable is False
    return info.value


# ---------------------------------------------------------------------------- accepted


def test_event_types_are_the_documented_ones_in_order() -> None:
    assert EVENT_TYPES == DOCUMENTED_TYPES
    assert set(VALID_DATA) == set(DOCUMENTED_TYPES)


@pytest.mark.parametrize("event_type", DOCUMENTED_TYPES)
def test_parse_accepts_each_type(event_type: str) -> None:
    value = envelope(event_type)
    event = parse_event(raw(value))
    assert event == Event(
        id="evt_1",
        type=event_type,
        data=VALID_DATA[event_type],
        timestamp="2024-01-15T10:30:00Z",
        site_id="site_789",
        user_id="user_456",
    )
    assert event.envelope() == value
    assert event.key == b"site_789"


@pytest.mark.parametrize(
    "timestamp",
    ["2024-01-15T10:30:00Z", "2024-01-15T10:30:00.1Z", "2024-01-15T10:30:00.123Z"],
)
def test_parse_accepts_timestamps(timestamp: str) -> None:
    event = parse_event(raw(envelope(timestamp=timestamp)))
    assert event.timestamp == timestamp
    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at.utcoffset() == timedelta(0)


def test_occurred_at() -> None:
    event = parse_event(raw(envelope(timestamp="2024-01-15T10:30:00.250Z")))
    assert event.occurred_at == datetime(2024, 1, 15, 10, 30, 0, 250000, tzinfo=UTC)


def test_extra_data_fields_are_kept() -> None:
    value = envelope("post.deleted", data={"id": "p", "nested": {"k": [1, 2.5, None, True]}})
    assert parse_event(raw(value)).data == {"id": "p", "nested": {"k": [1, 2.5, None, True]}}


def test_to_bytes_round_trips() -> None:
    event = parse_event(raw(envelope("site.created")))
    assert parse_event(event.to_bytes()) == event


def test_largest_safe_integer_is_accepted() -> None:
    value = envelope(
        "post.deleted", data={"id": "p", "n": MAX_SAFE_INTEGER, "m": -MAX_SAFE_INTEGER}
    )
    assert parse_event(raw(value)).data["n"] == MAX_SAFE_INTEGER


def test_integer_text_that_is_exactly_a_double_is_accepted() -> None:
    # "9007199254740992" is how JavaScript prints 2**53: it reads back as that double.
    data = b'{"id":"p","n":9007199254740992}'
    record = (
        b'{"id":"e","type":"post.deleted","data":' + data + b',"timestamp":"2024-01-15T10:30:00Z",'
        b'"site_id":"s","user_id":"u"}'
    )
    assert parse_event(record).data["n"] == 2.0**53


# ---------------------------------------------------------------------------- rejected


@pytest.mark.parametrize(
    "data",
    [None, b"", b"{", b'{"id": "e",}', b"\xff\xfe{}", b"nul", b"{'id': 'e'}"],
)
def test_malformed_json(data: bytes | None) -> None:
    assert rejected(data).reason == "malformed_json"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_literals_in_a_record_are_malformed_json(literal: bytes) -> None:
    record = raw(envelope("post.deleted")).replace(b'"post_123"', b'"p", "n": ' + literal)
    assert rejected(record).reason == "malformed_json"


@pytest.mark.parametrize("data", [b"[]", b"[{}]", b"1", b'"post.created"', b"null", b"true"])
def test_not_an_object(data: bytes) -> None:
    error = rejected(data)
    assert error.reason == "not_an_object"


@pytest.mark.parametrize("event_type", ["post.updated", "POST.CREATED", "*", ""])
def test_unknown_event_type(event_type: str) -> None:
    error = rejected(raw(envelope(type=event_type)))
    assert error.reason == "unknown_event_type"
    assert repr(event_type) in error.detail


def test_unknown_event_type_detail_is_bounded() -> None:
    error = rejected(raw(envelope(type="x" * 10_000)))
    assert error.reason == "unknown_event_type"
    assert len(error.detail) < 200


@pytest.mark.parametrize("field", ["id", "type", "data", "timestamp", "site_id", "user_id"])
def test_missing_envelope_field(field: str) -> None:
    value = envelope()
    del value[field]
    error = rejected(raw(value))
    assert error.reason == "schema_invalid"
    assert repr(field) in error.detail


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("id", ""),
        ("id", 7),
        ("id", "e" * 201),
        ("type", 7),
        ("type", None),
        ("data", []),
        ("data", "text"),
        ("data", None),
        ("site_id", ""),
        ("site_id", None),
        ("user_id", 1),
    ],
)
def test_wrong_envelope_field(field: str, bad: Any) -> None:
    error = rejected(raw(envelope(**{field: bad})))
    assert error.reason == "schema_invalid"
    assert f"$.{field}" in error.detail


def test_unexpected_envelope_field() -> None:
    error = rejected(raw(envelope(webhook_secret="nope")))
    assert error.reason == "schema_invalid"
    assert "webhook_secret" in error.detail


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-01-15 10:30:00Z",
        "2024-01-15T10:30:00",
        "2024-01-15T10:30:00+00:00",
        "2024-01-15T10:30Z",
        "2024-01-15",
        "yesterday",
        "2024-02-30T10:30:00Z",
        "2024-13-01T10:30:00Z",
        "2024-01-15T25:30:00Z",
        "2024-01-15T10:61:00Z",
        1705314600,
    ],
)
def test_bad_timestamp(timestamp: Any) -> None:
    error = rejected(raw(envelope(timestamp=timestamp)))
    assert error.reason == "schema_invalid"
    assert "$.timestamp" in error.detail


@pytest.mark.parametrize(("event_type", "data", "field"), MISSING_REQUIRED)
def test_data_missing_required_field(event_type: str, data: dict[str, Any], field: str) -> None:
    error = rejected(raw(envelope(event_type, data=data)))
    assert error.reason == "schema_invalid"
    assert error.detail.startswith("$.data")
    assert repr(field) in error.detail


@pytest.mark.parametrize(
    ("event_type", "data", "where"),
    [
        ("post.created", {"id": "p", "title": 5}, "$.data.title"),
        ("post.created", {"id": "", "title": "t"}, "$.data.id"),
        ("post.published", {"id": "p", "title": "t", "published_at": 0}, "$.data.published_at"),
        ("site.created", {"id": "s", "name": ["x"]}, "$.data.name"),
        ("subscription.created", {"id": 1}, "$.data.id"),
        ("test.event", {"webhook_id": ""}, "$.data.webhook_id"),
    ],
)
def test_data_with_wrong_types(event_type: str, data: dict[str, Any], where: str) -> None:
    error = rejected(raw(envelope(event_type, data=data)))
    assert error.reason == "schema_invalid"
    assert where in error.detail


@pytest.mark.parametrize(
    "number", [b"9007199254740993", b"-9007199254740993", b"18014398509481985", b"10" * 20]
)
def test_unsafe_integer_in_data(number: bytes) -> None:
    record = raw(envelope("post.deleted")).replace(b'"post_123"', b'"p", "n": ' + number)
    assert rejected(record).reason == "unsafe_integer"


def test_unsafe_integer_nested_in_data() -> None:
    record = raw(envelope("post.deleted")).replace(
        b'"post_123"', b'"p", "a": [{"b": 9007199254740993}]'
    )
    error = rejected(record)
    assert error.reason == "unsafe_integer"
    assert "9007199254740993" not in error.detail


# ------------------------------------------------------------------------------ building


def test_build_event_defaults() -> None:
    before = datetime.now(UTC)
    event = build_event("post.created", VALID_DATA["post.created"], site_id="s", user_id="u")
    after = datetime.now(UTC)
    parsed_id = uuid.UUID(event.id)
    assert str(parsed_id) == event.id
    assert parsed_id.version == 4
    assert TS_RE.match(event.timestamp), event.timestamp
    # Millisecond precision: truncate the bounds the same way.
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= event.occurred_at
    assert event.occurred_at <= after
    assert (event.type, event.site_id, event.user_id) == ("post.created", "s", "u")


def test_build_event_ids_are_unique() -> None:
    ids = {build_event("post.deleted", {"id": "p"}, site_id="s", user_id="u").id for _ in range(50)}
    assert len(ids) == 50


def test_build_event_with_given_id_and_time() -> None:
    moment = datetime(2024, 1, 15, 10, 30, 0, 123999, tzinfo=UTC)
    event = build_event(
        "test.event",
        {"webhook_id": "w"},
        site_id="s",
        user_id="u",
        event_id="evt_fixed",
        timestamp=moment,
    )
    assert event.id == "evt_fixed"
    assert event.timestamp == "2024-01-15T10:30:00.123Z"
    assert parse_event(event.to_bytes()) == event


def test_build_event_copies_data() -> None:
    data = {"id": "p"}
    event = build_event("post.deleted", data, site_id="s", user_id="u")
    data["id"] = "changed"
    assert event.data == {"id": "p"}


def test_build_event_validates() -> None:
    with pytest.raises(InvalidEvent) as info:
        build_event("post.created", {"id": "p"}, site_id="s", user_id="u")
    assert info.value.reason == "schema_invalid"
    with pytest.raises(InvalidEvent) as info:
        build_event("post.edited", {"id": "p"}, site_id="s", user_id="u")
    assert info.value.reason == "unknown_event_type"
    with pytest.raises(InvalidEvent) as info:
        build_event("post.deleted", {"id": "p"}, site_id="", user_id="u")
    assert info.value.reason == "schema_invalid"


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_build_event_rejects_non_finite_numbers(number: float) -> None:
    with pytest.raises(InvalidEvent) as info:
        build_event("post.deleted", {"id": "p", "score": number}, site_id="s", user_id="u")
    assert info.value.reason == "non_finite_number"
    assert "score" in info.value.detail


def test_build_event_rejects_unsafe_integers() -> None:
    with pytest.raises(InvalidEvent) as info:
        build_event("post.deleted", {"id": "p", "n": 2**53}, site_id="s", user_id="u")
    assert info.value.reason == "unsafe_integer"


# ---------------------------------------------------------------------------- text

LONE_SURROGATES: list[tuple[str, Any, str]] = [
    ("id", "evt_\ud800", "$.id"),  # once: parsed, then no delivery id could be made
    ("site_id", "\udcff", "$.site_id"),
    ("user_id", "u\udfff", "$.user_id"),
    ("data", {"id": "p", "title": "t\ud83d"}, "$.data.title"),
    ("data", {"id": "p", "title": "t", "\ud800": 1}, '$.data["\\ud800"]'),
    ("data", {"id": "p", "title": "t", "tags": [{"x": "\udbff"}]}, "$.data.tags[0].x"),
]


@pytest.mark.parametrize(("field", "value", "where"), LONE_SURROGATES)
def test_lone_surrogates_are_refused_at_parse(field: str, value: Any, where: str) -> None:
    error = rejected(raw(envelope(**{field: value})))  # json.dumps escapes them: "\ud800"
    assert error.reason == "invalid_text"
    assert error.detail.endswith(f"at {where}")


@pytest.mark.parametrize(("field", "value", "where"), LONE_SURROGATES)
def test_build_event_refuses_lone_surrogates(field: str, value: Any, where: str) -> None:
    fields = envelope(**{field: value})
    with pytest.raises(InvalidEvent) as info:
        build_event(
            "post.created",
            fields["data"],
            site_id=fields["site_id"],
            user_id=fields["user_id"],
            event_id=fields["id"],
        )
    assert info.value.reason == "invalid_text"
    assert info.value.detail.endswith(f"at {where}")


def test_surrogate_pairs_and_escaped_backslashes_are_text() -> None:
    event = parse_event(
        b'{"id":"evt_\\\\ud800","type":"post.created","data":{"id":"p","title":"\\ud83d\\ude00"},'
        b'"timestamp":"2024-01-15T10:30:00Z","site_id":"s","user_id":"u"}'
    )
    assert event.id == "evt_\\ud800"
    assert event.data["title"] == "\U0001f600"


TEXT = st.text(st.characters(exclude_categories=()), max_size=6)  # lone surrogates included


@given(event_id=TEXT, site_id=TEXT, title=TEXT, key=TEXT)
def test_an_event_that_parses_can_be_delivered(
    event_id: str, site_id: str, title: str, key: str
) -> None:
    """Whatever text the record holds, parse_event either refuses it or gives an event whose
    record key, delivery id and delivery body can all be made."""
    data = {"id": "p", "title": title, key: [title]}
    record = raw(envelope(id=event_id or "e", site_id=site_id or "s", data=data))
    try:
        event = parse_event(record)
    except InvalidEvent as exc:
        assert exc.reason in ("invalid_text", "schema_invalid")
        return
    webhook = Webhook(
        id="w", name="n", url="https://hooks.example/", secret="s", events=frozenset("*"),
        site_id=event.site_id, user_id=None,
    )  # fmt: skip
    body = build_body(EncodedEvent.of(event), webhook)
    assert jsoncanon.loads(body)["event"]["data"]["title"] == title
    assert event.key.decode("utf-8") == event.site_id
    assert delivery_id(event.id, webhook.id)
    assert parse_event(event.to_bytes()) == event


# ---------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 1, 15, 10, 30, tzinfo=UTC), "2024-01-15T10:30:00.000Z"),
        (datetime(2024, 1, 15, 10, 30, 0, 999999, tzinfo=UTC), "2024-01-15T10:30:00.999Z"),
        (datetime(2024, 1, 15, 10, 30, 0, 1000, tzinfo=UTC), "2024-01-15T10:30:00.001Z"),
        (
            datetime(2024, 1, 15, 11, 30, 5, 42000, tzinfo=timezone(timedelta(hours=1))),
            "2024-01-15T10:30:05.042Z",
        ),
        (
            datetime(2024, 1, 14, 22, 0, tzinfo=timezone(timedelta(hours=-3))),
            "2024-01-15T01:00:00.000Z",
        ),
    ],
)
def test_format_timestamp(moment: datetime, text: str) -> None:
    assert format_timestamp(moment) == text


def test_format_timestamp_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2024, 1, 15, 10, 30))


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(0))]
        ),
    )
)
def test_format_timestamp_matches_the_strftime_form(moment: datetime) -> None:
    utc = moment.astimezone(UTC)
    expected = utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    if utc.year < 1000:  # strftime does not pad years on every platform
        expected = f"{utc.year:04d}" + expected[expected.index("-") :]
    assert format_timestamp(moment) == expected


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
        ),
    )
)
def test_parse_time_reads_any_time_with_an_offset_in_utc(moment: datetime) -> None:
    for text in (moment.isoformat(), format_timestamp(moment), format_timestamp(moment).lower()):
        parsed = parse_time(text)
        assert parsed.tzinfo is UTC
        assert abs(parsed - moment) < timedelta(milliseconds=1)


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-15T10:30:00",  # no offset: the machine's local time, if read
        "2024-01-15 10:30:00.000",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "yesterday",
        "",
        "2024-13-01T00:00:00Z",
        None,
        1705314600,
        b"2024-01-15T10:30:00Z",
    ],
)
def test_parse_time_refuses_anything_else_with_a_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        parse_time(value)


# -- how deep data may nest -----------------------------------------------------------------------


def nested_data(levels: int) -> dict[str, Any]:
    """``post.created`` data nested ``levels`` deep (the object itself is one level)."""
    inner: list[Any] = []
    for _ in range(levels - 2):
        inner = [inner]
    return {"id": "post_1", "title": "T", "x": inner}


def nested_event(levels: int) -> bytes:
    return raw(envelope("post.created", data=nested_data(levels)))


def test_data_as_deep_as_accepted_encodes_in_every_record_that_holds_it() -> None:
    """Each record the bridge writes of an accepted event encodes: the retry record, the dead
    letter, the delivery's body (and the attempt record, which holds no data). Until
    2026-12-07 data of 255 levels was accepted (jsoncanon's 256, for data alone): its retry
    record failed to encode and the event was never settled (its partition committed no
    further), and its dead letter went without the event. The page of ``/v1/dead-letters``
    listing such a letter, the deepest of them, is tested in tests/unit/api/test_control.py."""
    assert MAX_DATA_DEPTH == jsoncanon.MAX_DEPTH - DATA_EMBEDDING == 252
    event = parse_event(nested_event(MAX_DATA_DEPTH))
    webhook = Webhook(
        id="wh",
        name="n",
        url="https://hooks.example/",
        secret="s" * 24,
        events=frozenset({"*"}),
        site_id=event.site_id,
        user_id=event.user_id,
    )
    retry = PendingRetry("d", "wh", event, attempt=2, not_before=1.0, enqueued_at=1.0)
    assert parse_retry(retry.to_bytes()).event == event

    failure = AttemptResult(False, 500, "http_status", 0.1, "2024-01-15T10:30:01.000Z")
    letter = dead_letter_record(
        reason="attempts_exhausted",
        detail="8 attempts",
        source=SourceRef("events", 0, 7),
        now=datetime(2024, 1, 15, tzinfo=UTC),
        event=event,
        webhook_id="wh",
        delivery_id="d",
        attempts=[failure],
    )
    assert letter["event"] == event.envelope()
    assert jsoncanon.loads(jsoncanon.dumps(letter)) == letter
    # A replay of the letter reads its event again.
    assert parse_event(jsoncanon.dumps(letter["event"])) == event

    encoded = EncodedEvent.of(event)
    body = build_body(encoded, webhook)
    assert jsoncanon.dumps(jsoncanon.loads(body)) == body  # what JavaScript prints again
    job = Job(encoded, webhook, 1, SourceRef("events", 0, 7))
    attempt = attempt_record(job, failure, "failure", "retry", 2.0)
    assert all(not isinstance(v, dict | list) for v in attempt.values())
    jsoncanon.dumps(attempt)


@pytest.mark.parametrize("make", [parse_event, lambda record: build_event_of(record)])
def test_data_one_level_deeper_is_refused_as_too_deep(make: Any) -> None:
    make(nested_event(MAX_DATA_DEPTH))
    with pytest.raises(InvalidEvent) as info:
        make(nested_event(MAX_DATA_DEPTH + 1))
    assert info.value.reason == "too_deep"
    assert f"nesting deeper than {MAX_DATA_DEPTH}" in info.value.detail


def build_event_of(record: bytes) -> Event:
    """``build_event`` of the envelope ``record`` holds (as ``publish_event`` does)."""
    value = json.loads(record)
    return build_event(
        value["type"],
        value["data"],
        site_id=value["site_id"],
        user_id=value["user_id"],
        event_id=value["id"],
    )
