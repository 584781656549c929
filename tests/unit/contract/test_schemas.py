"""bridge.contract.schemas: the compiled validator accepts exactly what jsonschema accepts.

Events and subscriptions are checked by fastjsonschema first and worded by jsonschema only when
rejected; if the two disagreed, an invalid record could pass, or a valid one be dead-lettered
with no error to show. Hypothesis builds instances near each schema (its own property names,
values of every JSON type, strings near the patterns) and compares the verdicts.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators

from bridge.contract.resources import load_json
from bridge.contract.schemas import EVENT_TYPES, event_data_errors, is_valid, schema_errors

SCHEMAS = ["schemas/event.json", "schemas/webhook.json"] + [
    f"schemas/data/{t}.json" for t in EVENT_TYPES
]

NEAR_STRINGS = st.sampled_from(
    [
        "",
        "x",
        "\x00",
        "a\x00b",
        "ok\n",
        "2024-01-15T10:30:00Z",
        "2024-01-15T10:30:00.123Z",
        "2024-01-15T10:30:00.1234567891Z",
        "2024-01-15T10:30:00+00:00",
        "2024-01-15T10:30:00Z\n",
        "https://example.com/hook",
        "http://127.0.0.1:8080/x",
        "https://exa mple.com",
        "ftp://example.com",
        "*",
        "post.created",
        "test.event",
        "post.unknown",
        "x" * 201,
        "y" * 2049,
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    NEAR_STRINGS,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """``pattern`` as JSON Schema means it (ECMA-262): ``$`` matches only at the very end,
    where Python's ``re`` also matches before a final newline."""
    if isinstance(instance, str) and not re.search(
        re.sub(r"(?<!\\)\$$", r"\\Z", pattern), instance
    ):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


#: The reference: jsonschema, with ECMA-262 ``$`` in patterns.
_Reference = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


@cache
def _reference(path: str) -> Any:
    return _Reference(load_json(path))


def _names(path: str) -> list[str]:
    schema = load_json(path)
    return sorted(schema.get("properties", {})) + ["extra"]


def _value_for(name: str) -> st.SearchStrategy[Any]:
    if name == "events":
        return st.lists(st.one_of(NEAR_STRINGS, SCALARS), max_size=3)
    if name == "data":
        return st.dictionaries(st.sampled_from(["id", "title", "plan", "email", "x"]), SCALARS)
    return st.one_of(NEAR_STRINGS, SCALARS, JSON)


@st.composite
def near(draw: st.DrawFn, path: str) -> Any:
    """Mostly objects with the schema's own keys (some missing, some of the wrong type)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    keys = draw(st.lists(st.sampled_from(_names(path)), unique=True))
    return {key: draw(_value_for(key)) for key in keys}


@pytest.mark.parametrize("path", SCHEMAS)
@given(data=st.data())
def test_compiled_validator_agrees_with_jsonschema(path: str, data: st.DataObject) -> None:
    instance = data.draw(near(path))
    expected = not any(True for _ in _reference(path).iter_errors(instance))
    assert is_valid(path, instance) is expected


@pytest.mark.parametrize("path", SCHEMAS)
@given(data=st.data())
def test_agrees_on_the_schema_s_valid_examples_mutated(path: str, data: st.DataObject) -> None:
    """Start from a valid instance and change one key, so the valid side is well covered."""
    valid: dict[str, Any] = {
        "schemas/event.json": {
            "id": "e1",
            "type": "post.created",
            "data": {"id": "p1", "title": "T"},
            "timestamp": "2024-01-15T10:30:00Z",
            "site_id": "s1",
            "user_id": "u1",
        },
        "schemas/webhook.json": {
            "id": "w1",
            "name": "n",
            "url": "https://example.com/hook",
            "secret": "whsec_x",
            "events": ["*"],
            "active": True,
            "site_id": "s1",
        },
    }.get(path, {"id": "x1", "title": "T", "plan": "pro", "email": "a@b.c", "name": "n"})
    key = data.draw(st.sampled_from(_names(path)))
    instance = dict(valid)
    if data.draw(st.booleans()):
        instance[key] = data.draw(_value_for(key))
    else:
        instance.pop(key, None)
    expected = not any(True for _ in _reference(path).iter_errors(instance))
    assert is_valid(path, instance) is expected


def test_errors_still_worded_with_paths() -> None:
    errors = schema_errors("event", {"id": "", "type": "post.created"})
    assert errors and all(e.startswith("$") for e in errors)
    assert any("$.id" in e for e in errors)
    assert event_data_errors("post.created", {"id": 5}) == [
        "$.data: 'title' is a required property",
        "$.data.id: expected string, got integer",
    ]


def test_valid_instances_have_no_errors() -> None:
    assert (
        schema_errors(
            "event",
            {
                "id": "e1",
                "type": "test.event",
                "data": {},
                "timestamp": "2024-01-15T10:30:00.5Z",
                "site_id": "s",
                "user_id": "u",
            },
        )
        == []
    )


#: A valid event envelope.
AN_EVENT = {
    "id": "e1",
    "type": "post.created",
    "data": {},
    "timestamp": "2024-01-15T10:30:00Z",
    "site_id": "s",
    "user_id": "u",
}


def test_a_retry_record_s_event_is_checked_as_an_event() -> None:
    """retry.json's ``event`` is a ``$ref`` to event.json: both validators resolve it (they
    raised on any retry record before 2026-12-06) and hold the event to all of its rules."""
    event = dict(AN_EVENT)
    record = {
        "delivery_id": "d",
        "webhook_id": "w",
        "event": event,
        "attempt": 2,
        "not_before": 1.5,
        "attempts": [],
    }
    assert schema_errors("retry", record) == [] and is_valid("schemas/retry.json", record)
    bad = {**record, "event": {**event, "site_id": "", "extra": 1}}
    assert not is_valid("schemas/retry.json", bad)
    assert schema_errors("retry", bad) == [
        "$.event: not allowed here: $.event.extra",
        "$.event.site_id: shorter than 1 characters",
    ]


@pytest.mark.parametrize("timestamp", ["2024-01-15T10:30:00Z\n", "2024-01-15T10:30:00.5Z\n"])
def test_a_trailing_newline_is_no_timestamp_and_the_error_says_where(timestamp: str) -> None:
    # Python's re (and so jsonschema) lets "$" match before a final newline; JSON Schema's
    # ECMA-262 patterns do not. The compiled validator decides, and the error still names the
    # field although jsonschema finds nothing wrong.
    event = {
        "id": "e1",
        "type": "post.created",
        "data": {"id": "p1", "title": "T"},
        "timestamp": timestamp,
        "site_id": "s1",
        "user_id": "u1",
    }
    assert not any(
        True for _ in Draft202012Validator(load_json("schemas/event.json")).iter_errors(event)
    )
    assert not is_valid("schemas/event.json", event)
    assert schema_errors("event", event) == ["$.timestamp: fails the 'pattern' rule"]


# ------------------------------------------------------------------------- redaction

#: Schemas whose error messages reach logs, dead letters or a command's output.
WORDED = ["event", "webhook", "deadletter", "attempt", "status"] + [
    f"data/{t}" for t in EVENT_TYPES
]
CANARY = "cAn4ry-5ecret-"
#: Values that carry the canary in every JSON shape, as a secret may arrive.
CANARY_VALUES = st.recursive(
    st.one_of(
        st.text(max_size=6).map(lambda t: CANARY + t),
        st.sampled_from([CANARY, f"enc:v1:{CANARY}:AAAA", f"whsec_{CANARY}", f"x y {CANARY}"]),
    ),
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3)
        | st.dictionaries(st.sampled_from(["v", "value", "enc", "kid"]), inner, min_size=1)
    ),
    max_leaves=4,
)


@st.composite
def instances_with_a_canary(draw: st.DrawFn, path: str) -> Any:
    names = _names(path) + ["secret_encrypted", "auth", "token"]
    keys = draw(st.lists(st.sampled_from(names), unique=True, min_size=1))
    if draw(st.integers(0, 9)) == 0:
        return draw(CANARY_VALUES)  # not even an object
    return {key: draw(st.one_of(CANARY_VALUES, SCALARS)) for key in keys}


@pytest.mark.parametrize("schema", WORDED)
@given(data=st.data())
def test_error_messages_name_paths_and_types_never_values(schema: str, data: st.DataObject) -> None:
    instance = data.draw(instances_with_a_canary(f"schemas/{schema}.json"))
    if schema.startswith("data/"):
        errors = event_data_errors(schema[len("data/") :], instance)
    else:
        errors = schema_errors(schema, instance)
    for message in errors:
        assert CANARY not in message
        assert message.startswith("$") and message.isprintable()


def test_a_secret_in_an_object_is_described_by_its_type() -> None:
    errors = schema_errors("webhook", {"previous_secret": {"v": CANARY}})
    assert "$.previous_secret: expected string or null, got object" in errors
    assert not any(CANARY in e for e in errors)


def test_keywords_beside_a_ref_apply_as_well_as_the_referenced_schema() -> None:
    from bridge.contract import schemas

    node = {"$ref": "event.json", "required": ["extra_field"], "description": "d"}
    inlined = schemas._inlined("schemas/retry.json", node)
    validator = schemas.Validator(inlined)
    assert not validator.is_valid({"extra_field": 1})  # event.json's rules still hold
    assert validator.is_valid(AN_EVENT) is False  # and the keyword beside it too
    alone = schemas._inlined("schemas/retry.json", {"$ref": "event.json"})
    assert alone["title"] == "Platform event envelope" and "$id" not in alone


@pytest.mark.parametrize("field", ["failing_since", "last_failure_at"])
@pytest.mark.parametrize("value", [2**53 + 1, 1e300, -1])
def test_a_status_time_no_record_could_hold_again_is_invalid(field: str, value: float) -> None:
    """A status's times are written again (a disable marked applied): one past year 9999, or an
    integer no JSON reader keeps, was valid and its write failed every second for ever (until
    2026-12-07)."""
    record = {"webhook_id": "w", "state": "failing", "updated_at": "x", field: value}
    assert not is_valid("schemas/status.json", record)
    assert is_valid("schemas/status.json", {**record, field: 1_700_000_000.5})
