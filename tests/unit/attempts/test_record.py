"""bridge.attempts.record: the response fields of an attempt record read back, strictly, and
records written before them still read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.attempts.record import Attempt
from bridge.errors import InvalidRecord
from tests.unit.attempts.test_attempts import record

#: Receiver-written text: never quoted in an error.
HOSTILE = "\x1b]0;pwned\x07 Jane Roe"


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
        "status_class": "2xx",
    }
    assert Attempt.of(parsed.as_dict()) == parsed


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
