"""bridge.delivery.dead_letters: every dead letter fits a produce request; large records go by
reference."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.contract import jsoncanon
from bridge.contract.events import Event, build_event
from bridge.delivery.dead_letters import (
    MAX_EVENT_BYTES,
    MAX_RAW_BYTES,
    PREFIX_CHARS,
    SourceRef,
    dead_letter_record,
    internal_error,
)
from bridge.delivery.job import MAX_SOURCE_KEY_BYTES

SOURCE = SourceRef("postion.events", 2, 14, b"site_1")
NOW = datetime(2026, 12, 3, tzinfo=UTC)
#: aiokafka's default max_request_size, which the dead letters' producer uses.
PRODUCE_LIMIT = 1024 * 1024


def letter(**kwargs: Any) -> dict[str, Any]:
    return dead_letter_record(reason="r", detail="d", source=SOURCE, now=NOW, **kwargs)


def event_with_title(size: int) -> Event:
    return build_event(
        "post.created", site_id="site_1", user_id="user_1", data={"id": "p", "title": "x" * size}
    )


def test_a_small_event_is_kept_whole() -> None:
    record = letter(event=event_with_title(10))
    assert record["event"]["data"]["title"] == "x" * 10
    assert "omitted" not in record


def test_an_event_too_large_to_copy_is_dead_lettered_by_reference() -> None:
    event = event_with_title(2 * 1024 * 1024)
    record = letter(event=event, webhook_id="w", delivery_id="d")
    content = jsoncanon.dumps(event.envelope())
    assert record["event"] is None and record["raw"] is None
    assert record["omitted"] == {
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "prefix": content[:PREFIX_CHARS].decode(),
    }
    assert record["source"] == {
        "topic": "postion.events",
        "partition": 2,
        "offset": 14,
        "key": "site_1",
    }
    assert len(jsoncanon.dumps(record)) < 16 * 1024


@settings(max_examples=30, deadline=None)
@given(
    raw=st.one_of(
        st.binary(max_size=256),
        st.integers(0, 3 * 1024 * 1024).map(lambda n: b"\x00\xff\n\x1f" * (n // 4)),
        st.integers(0, 3 * 1024 * 1024).map(lambda n: ('"\\ud800' * (n // 7)).encode()),
    ),
    detail=st.text(max_size=5000),
)
def test_every_dead_letter_of_a_raw_record_fits_a_produce_request(raw: bytes, detail: str) -> None:
    record = dead_letter_record(
        reason="malformed_json", detail=detail, source=SOURCE, now=NOW, raw=raw
    )
    encoded = jsoncanon.dumps(record)
    assert len(encoded) < PRODUCE_LIMIT // 2
    if len(raw) <= MAX_RAW_BYTES:
        assert record["raw"] == raw.decode("utf-8", "replace")
    else:
        assert record["raw"] is None
        assert record["omitted"]["size"] == len(raw)
        assert record["omitted"]["sha256"] == hashlib.sha256(raw).hexdigest()
        assert len(record["omitted"]["prefix"]) <= PREFIX_CHARS


@settings(max_examples=15, deadline=None)
@given(size=st.integers(0, 2 * MAX_EVENT_BYTES))
def test_every_dead_letter_of_an_event_fits_a_produce_request(size: int) -> None:
    record = letter(event=event_with_title(size))
    assert len(jsoncanon.dumps(record)) < PRODUCE_LIMIT


def test_internal_error_names_the_class_never_the_message() -> None:
    reason, detail = internal_error(ValueError("the secret is hunter2"), "matching")
    assert (reason, detail) == ("internal_error", "matching: ValueError")


def test_a_huge_source_key_is_named_by_its_size_and_digest() -> None:
    """A record's key of more than MAX_SOURCE_KEY_BYTES: the dead letter names it by size and
    SHA-256 (so that it fits in a produce request) and is keyed by that SHA-256."""
    key = b"\x01" * (MAX_SOURCE_KEY_BYTES + 1)
    source = SourceRef("events", 0, 7, key)
    shown = source.as_record()
    assert shown["key"] is None
    assert shown["key_omitted"] == {"size": len(key), "sha256": hashlib.sha256(key).hexdigest()}
    assert source.bounded_key == hashlib.sha256(key).hexdigest().encode()
    small = SourceRef("events", 0, 7, b"k" * MAX_SOURCE_KEY_BYTES)
    assert small.as_record()["key"] == "k" * MAX_SOURCE_KEY_BYTES
    assert "key_omitted" not in small.as_record() and small.bounded_key == small.key
