"""bridge.attempts.record: the response fields of an attempt record read back, strictly, and
records written before them still read."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.attempts.record import Attempt
from bridge.errors import InvalidRecord
from tests.unit.attempts.test_attempts import record

#: Receiver-written text: never quoted in an error.
HOSTILE = "\x1b]0;pwned\x07 Jane Roe"


def test_the_event_time_reads_back_and_an_older_record_has_none() -> None:
    written = record(event_at="2024-01-15T10:29:59.000Z")
    parsed = Attempt.parse(json.dumps(written).encode())
    assert (
        parsed.event_at == written["event_at"]
        and parsed.as_dict()["event_at"] == written["event_at"]
    )
    assert Attempt.of(parsed.as_dict()) == parsed
    assert Attempt.of(record()).event_at is None
    for bad in ("", 5, ["2024-01-15T10:29:59.000Z"]):
        with pytest.raises(InvalidRecord, match="event_at is not a string"):
            Attempt.of(record(event_at=bad))


def test_the_webhooks_created_at_reads_back_and_an_older_record_has_none() -> None:
    written = record(webhook_created_at="2024-01-15T09:00:00.000Z")
    parsed = Attempt.parse(json.dumps(written).encode())
    assert (
        parsed.webhook_created_at
        == parsed.as_dict()["webhook_created_at"]
        == ("2024-01-15T09:00:00.000Z")
    )
    assert Attempt.of(parsed.as_dict()) == parsed
    assert Attempt.of(record()).webhook_created_at is None
    for bad in ("", 5, {"at": "2024-01-15T09:00:00.000Z"}):
        with pytest.raises(InvalidRecord, match="webhook_created_at is not a string"):
            Attempt.of(record(webhook_created_at=bad))


def test_an_older_record_has_no_response_fields() -> None:
    parsed = Attempt.of(record())
    assert (parsed.response_bytes, parsed.response_truncated, parsed.response_prefix) == (
        None,
        False,
        None,
    )
    shown = parsed.as_dict()
    assert (shown["response_bytes"], shown["response_truncated"]) == (None, False)
    assert "response_prefix" not in shown


def test_the_response_fields_read_back_as_written() -> None:
    written = record(response_bytes=65000, response_truncated=True, response_prefix=HOSTILE)
    parsed = Attempt.parse(json.dumps(written).encode())
    assert parsed.response_bytes == 65000
    assert parsed.response_truncated is True
    assert parsed.response_prefix == HOSTILE
    assert parsed.as_dict() | {"status_class": "2xx"} == {
        **written,
        "next_at": None,
        "event_at": None,
        "webhook_created_at": None,
        "trigger": "scheduled",
        "recovery_id": None,
        "status_class": "2xx",
    }
    assert Attempt.of(parsed.as_dict()) == parsed


def test_the_trigger_reads_back_as_written_and_scheduled_without_one() -> None:
    """Attempts of a delivery an operator sent again are recorded ``manual``; the event's own
    leave the field out (and records written before it did)."""
    assert Attempt.parse(json.dumps(record()).encode()).trigger == "scheduled"
    manual = Attempt.parse(json.dumps(record(trigger="manual", recovery_id="rec-1")).encode())
    assert manual.trigger == "manual" and manual.as_dict()["trigger"] == "manual"
    assert manual.recovery_id == "rec-1" and manual.as_dict()["recovery_id"] == "rec-1"
    assert Attempt.of(manual.as_dict()) == manual


def test_the_size_alone() -> None:
    parsed = Attempt.of(record(response_bytes=0))
    assert (parsed.response_bytes, parsed.response_prefix) == (0, None)
    assert Attempt.of(record(response_bytes=None)).response_bytes is None


@pytest.mark.parametrize(
    "changes",
    [
        {"response_bytes": -1},
        {"response_bytes": True},
        {"response_bytes": 2.5},
        {"response_bytes": "12"},
        {"response_truncated": "yes"},
        {"response_truncated": 1},
        {"response_prefix": 12},
        {"response_prefix": [HOSTILE]},
        {"response_prefix": {"x": HOSTILE}},
    ],
)
def test_a_response_field_of_the_wrong_type_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecord) as caught:
        Attempt.parse(json.dumps(record(**changes)).encode())
    assert caught.value.reason == "schema_invalid"
    assert "response_" in str(caught.value)
    assert "pwned" not in str(caught.value) and "12" not in str(caught.value)


# -- the quick check and the field-by-field one agree ---------------------------------------------

_FIELDS = (
    "delivery_id",
    "webhook_id",
    "event_id",
    "event_type",
    "attempt",
    "outcome",
    "status",
    "error",
    "duration_seconds",
    "at",
    "next",
    "next_at",
    "event_at",
    "response_bytes",
    "response_truncated",
    "trigger",
    "recovery_id",
    "response_prefix",
    "endpoint",
)

_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=1200),
    st.sampled_from([2**53 - 1, 2**53, 2**62]),  # past JavaScript's safe integers
    st.sampled_from([1e300, 9007199254740992.0]),
    st.floats(min_value=-1.0, max_value=1e6, allow_nan=False),
    st.sampled_from(
        [
            "",
            "x",
            "success",
            "failure",
            "skipped",
            "manual",
            "scheduled",
            "2024-01-15T10:30:00.250Z",
            # at and past each bound on a text field (times 64, ids and names 200, prefix 1024)
            "x" * 64,
            "x" * 65,
            "x" * 200,
            "x" * 201,
            "x" * 1024,
            "x" * 1025,
            # an endpoint: scheme://host:port of at most 267 characters, lower-cased
            "https://hooks.example:443",
            "http://[::1]:8080",
            "https://Hooks.example:443",
            "https://hooks.example:443\n",
            "https://hooks.example:443/path",
            "ftp://hooks.example:21",
            "https://" + "h" * 253 + ":65535",
            "https://" + "h" * 254 + ":65535",
        ]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


def _reference_problem(fields: dict[str, Any]) -> str | None:
    """What a record's fields are refused for, checked one by one in the order the schema
    lists them (what :meth:`Attempt.of` must say), or ``None``."""
    longest = {"at": 64, "next_at": 64, "event_at": 64, "event_type": 200, "error": 200}
    longest |= {"next": 200, "response_prefix": 1024, "endpoint": 267}
    for name in ("delivery_id", "webhook_id", "event_type", "at"):
        value = fields.get(name)
        if not isinstance(value, str) or not value:
            return f"attempt record: {name} is not a string"
        if len(value) > longest.get(name, 200):
            return f"attempt record: {name} is longer than {longest.get(name, 200)} characters"
    for name in ("event_id", "error", "next", "next_at", "event_at", "recovery_id", "endpoint"):
        value = fields.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            return f"attempt record: {name} is not a string"
        if value is not None and len(value) > longest.get(name, 200):
            return f"attempt record: {name} is longer than {longest.get(name, 200)} characters"
    safe = 2**53 - 1
    attempt = fields.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= safe:
        return "attempt record: attempt is not a count"
    if fields.get("outcome") not in ("success", "failure", "skipped"):
        return "attempt record: unknown outcome"
    status = fields.get("status")
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 999
    ):
        return "attempt record: status is not an HTTP status"
    duration = fields.get("duration_seconds")
    if (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 <= duration <= safe
    ):
        return "attempt record: duration_seconds is not >= 0"
    size = fields.get("response_bytes")
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= safe
    ):
        return "attempt record: response_bytes is not a count"
    if not isinstance(fields.get("response_truncated", False), bool):
        return "attempt record: response_truncated is not true"
    if fields.get("trigger", "scheduled") not in ("scheduled", "manual"):
        return "attempt record: unknown trigger"
    endpoint = fields.get("endpoint")
    if endpoint is not None and not re.fullmatch(r"https?://[0-9a-z_.\[\]:-]+", endpoint):
        return "attempt record: endpoint is not scheme://host:port"
    prefix = fields.get("response_prefix")
    if prefix is not None and not isinstance(prefix, str):
        return "attempt record: response_prefix is not a string"
    if prefix is not None and len(prefix) > 1024:
        return "attempt record: response_prefix is longer than 1024 characters"
    if not fields["at"].endswith("Z"):
        return "attempt record: at is not a time"
    return None


@settings(max_examples=400, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(_FIELDS), _ANY_VALUE, max_size=4),
    dropped=st.sets(st.sampled_from(_FIELDS), max_size=2),
)
def test_any_record_is_taken_or_refused_as_the_field_by_field_check_says(
    changes: dict[str, Any], dropped: set[str]
) -> None:
    fields = {k: v for k, v in {**record(), **changes}.items() if k not in dropped}
    problem = _reference_problem(fields)
    if problem is None:
        parsed = Attempt.of(fields)
        assert parsed.delivery_id == fields["delivery_id"]
        assert parsed.attempt == fields["attempt"]
        assert parsed.duration_seconds == float(fields["duration_seconds"])
        assert type(parsed.duration_seconds) is float
        assert parsed.response_truncated is fields.get("response_truncated", False)
        # and the same through the record's bytes
        assert Attempt.parse(json.dumps(fields).encode()) == parsed
    else:
        with pytest.raises(InvalidRecord) as refused:
            Attempt.of(fields)
        assert (refused.value.reason, refused.value.detail) == ("schema_invalid", problem)
        # msgspec's quick decoding refuses it too, and the field-by-field reading names why
        with pytest.raises(InvalidRecord) as refused:
            Attempt.parse(json.dumps(fields).encode())
        assert (refused.value.reason, refused.value.detail) == ("schema_invalid", problem)


@pytest.mark.parametrize(
    "value",
    [
        # msgspec refuses a field the bridge does not read: the field-by-field reading takes it
        b'{"at_seconds": "soon", %s}',
        # a key given twice: the last one, either way
        b'{"status": 500, %s, "status": 200}',
    ],
)
def test_what_the_quick_decoding_refuses_is_read_field_by_field(value: bytes) -> None:
    fields = json.dumps(record(status=200))[1:-1].encode()
    parsed = Attempt.parse(value.replace(b"%s", fields))
    assert parsed == Attempt.of(record(status=200))
    assert parsed.at_seconds == Attempt.of(record()).at_seconds > 0


@pytest.mark.parametrize(
    "member",
    [
        b'"x": "\xff"',
        b'"x": 1e999',
        b'"x": ' + b"9" * 400,
        b'"\xff": 1',
        b'"x": {"a": [1e999]}',
        b'"x": "\xed\xa0\x80"',  # a surrogate encoded in UTF-8
        b'"x": "\xc0\xaf"',  # overlong
    ],
)
def test_a_member_the_bridge_does_not_read_must_still_be_json(member: bytes) -> None:
    """msgspec skips members it does not know unread: such a record is read the slow way,
    which refuses what is no JSON text anywhere in it (taken until a review found it)."""
    fields = json.dumps(record())[1:-1].encode()
    with pytest.raises(InvalidRecord) as refused:
        Attempt.parse(b"{" + fields + b", " + member + b"}")
    assert refused.value.reason == "malformed_json"
    # and a bad time with it is refused for the bad JSON, first
    bad_at = json.dumps(record(at="nope"))[1:-1].encode()
    with pytest.raises(InvalidRecord) as refused:
        Attempt.parse(b"{" + bad_at + b", " + member + b"}")
    assert refused.value.reason == "malformed_json"


def test_a_record_nested_too_deep_is_refused_not_raised() -> None:
    """msgspec raises ``RecursionError`` past its depth: not an :class:`InvalidRecord`, it
    would have skipped the record as a bug."""
    fields = json.dumps(record())[1:-1].encode()
    with pytest.raises(InvalidRecord) as refused:
        Attempt.parse(b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b", " + fields + b"}")
    assert refused.value.reason == "malformed_json"


def test_an_attempt_is_not_walked_by_the_cyclic_collector() -> None:
    """A worker's delivery log holds up to a million: text and numbers only, no cycle."""
    import gc

    parsed = Attempt.parse(json.dumps(record(response_prefix=HOSTILE)).encode())
    assert not gc.is_tracked(parsed) and not gc.is_tracked(Attempt.of(record()))


@pytest.mark.parametrize("at", ["9999-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z"])
def test_an_attempt_in_year_9999_is_not_an_attempt(at: str) -> None:
    """No room after it: a redelivery reads the events until a second past its first attempt,
    which year 10000 does not hold (a 500 until 2026-12-05)."""
    with pytest.raises(InvalidRecord) as refused:
        Attempt.of({**record(), "at": at})
    assert refused.value.detail == "attempt record: at is not a time"
    assert Attempt.of({**record(), "at": "9998-12-31T23:59:59.999Z"}).at_seconds > 0
