"""bridge.delivery.attempt_record: what an attempt record says of the response, and that no
response can make the record larger than its bound (hostile bodies generated)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.attempts.record import Attempt
from bridge.config import MAX_ATTEMPT_RESPONSE_PREFIX
from bridge.contract import jsoncanon
from bridge.contract.schemas import schema_errors
from bridge.delivery.attempt_record import attempt_record
from bridge.http.base import AttemptResult
from bridge.http.http1 import MAX_RESPONSE
from tests.support.jobs import SPEC_EVENT, outgoing, spec_webhook

JOB = outgoing(SPEC_EVENT, spec_webhook("https://example.test/hook", "whsec_x")).job
AT = "2024-01-15T10:30:00.250Z"


def result(
    *,
    status: int | None = 200,
    size: int | None = 2,
    truncated: bool = False,
    prefix: bytes | None = None,
) -> AttemptResult:
    return AttemptResult(
        status == 200,
        status,
        None if status == 200 else ("timeout" if status is None else "http_status"),
        0.25,
        AT,
        response_bytes=size,
        response_truncated=truncated,
        response_prefix=prefix,
    )


def test_only_the_size_by_default() -> None:
    record = attempt_record(JOB, result(), "success", None)
    assert record["response_bytes"] == 2
    assert "response_truncated" not in record
    assert "response_prefix" not in record
    assert schema_errors("attempt", record) == []


def test_the_webhooks_created_at_is_recorded_when_it_has_one() -> None:
    from types import MappingProxyType

    created = "2024-01-15T09:00:00.000Z"
    webhook = spec_webhook(
        "https://example.test/hook", "whsec_x", extra=MappingProxyType({"created_at": created})
    )
    record = attempt_record(outgoing(SPEC_EVENT, webhook).job, result(), "success", None)
    assert record["webhook_created_at"] == created
    assert Attempt.of(record).webhook_created_at == created
    assert schema_errors("attempt", record) == []
    assert "webhook_created_at" not in attempt_record(JOB, result(), "success", None)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://Example.TEST/hook?token=t", "https://example.test:443"),
        ("http://[::FFFF:127.0.0.1]:8080/a", "http://[::ffff:7f00:1]:8080"),
        ("https://bücher.example/x", "https://xn--bcher-kva.example:443"),
    ],
)
def test_an_attempt_names_its_endpoint_never_its_path_or_query(url: str, endpoint: str) -> None:
    """What a starting worker takes an answer for (bridge.delivery.recent_answers): scheme,
    host and port as the limits key them; a skipped attempt made no request and names none."""
    job = outgoing(SPEC_EVENT, spec_webhook(url, "whsec_x")).job
    failed = result(status=503)
    for outcome, step in (("success", None), ("failure", "retry")):
        record = attempt_record(job, result() if step is None else failed, outcome, step, None)
        assert record["endpoint"] == endpoint
        assert Attempt.parse(jsoncanon.dumps(record)).endpoint == endpoint
        assert schema_errors("attempt", record) == []
        assert record["endpoint"].count("/") == 2 and "?" not in record["endpoint"]
    skipped = AttemptResult(False, None, "circuit_open", 0.0, AT)
    assert "endpoint" not in attempt_record(job, skipped, "skipped", "retry", 30.0)


def test_no_response_has_no_size() -> None:
    record = attempt_record(JOB, result(status=None, size=None), "failure", "retry", 1.0)
    assert record["response_bytes"] is None
    assert schema_errors("attempt", record) == []


def test_a_cut_body_says_so() -> None:
    record = attempt_record(JOB, result(size=65000, truncated=True), "success", None)
    assert (record["response_bytes"], record["response_truncated"]) == (65000, True)
    assert schema_errors("attempt", record) == []


@pytest.mark.parametrize(
    ("kept", "text"),
    [
        (b"", ""),
        (b"ok", "ok"),
        (b"caf\xc3\xa9", "caf\u00e9"),
        # A character cut by the prefix's end is left out, not replaced.
        (b"caf\xc3", "caf"),
        # Invalid bytes become U+FFFD, as long as the text fits the bytes kept.
        (b"a\xffbcdef", "a\ufffdbcd"),
        (b"\xff\xfe", ""),
        # Control characters are kept: the CLI escapes them when it shows the text.
        (b"\x00\x1b[2J", "\x00\x1b[2J"),
    ],
)
def test_the_prefix_as_text(kept: bytes, text: str) -> None:
    record = attempt_record(JOB, result(prefix=kept), "success", None)
    assert record["response_prefix"] == text
    assert len(text.encode("utf-8")) <= len(kept)
    assert schema_errors("attempt", record) == []
    assert Attempt.of(record).response_prefix == text


def _size(record: dict[str, object]) -> int:
    return len(jsoncanon.dumps_flat(record))


#: The largest record without a prefix: the largest count, cut.
_WITHOUT_PREFIX = _size(
    attempt_record(JOB, result(size=MAX_RESPONSE, truncated=True, prefix=b""), "success", None)
)


@given(
    body=st.one_of(
        st.binary(max_size=3 * MAX_ATTEMPT_RESPONSE_PREFIX),
        # Runs of what costs most once escaped or replaced.
        st.lists(
            st.sampled_from(
                [b"\x00", b"\x1b", b"\x7f", b"\xff", b"\xc3", b'"', b"\\", b"\xe2\x80"]
            ),
            max_size=2 * MAX_ATTEMPT_RESPONSE_PREFIX,
        ).map(b"".join),
    ),
    kept=st.sampled_from([0, 1, 3, 64, MAX_ATTEMPT_RESPONSE_PREFIX]),
    status=st.sampled_from([200, 500, 204]),
)
def test_no_body_makes_the_record_larger_than_the_bound(
    body: bytes, kept: int, status: int
) -> None:
    """Whatever the body (NULs, escapes, invalid UTF-8), what the sender keeps of it (the first
    ``kept`` bytes) makes a record at most 6 bytes of JSON per byte kept (``\\u0000``) larger
    than the largest record without it; the text is never more UTF-8 than the bytes kept."""
    prefix = body[:kept] if kept else None
    size = min(len(body), MAX_RESPONSE)
    attempt = result(status=status, size=size, truncated=len(body) > size, prefix=prefix)
    record = attempt_record(JOB, attempt, "success" if status == 200 else "failure", None)
    assert schema_errors("attempt", record) == []
    if prefix is None:
        assert "response_prefix" not in record
    else:
        assert len(record["response_prefix"].encode("utf-8")) <= len(prefix) <= kept
    assert _size(record) <= _WITHOUT_PREFIX + 6 * kept
    # And it reads back as written.
    read = Attempt.parse(jsoncanon.dumps_flat(record))
    assert (read.response_bytes, read.response_prefix) == (size, record.get("response_prefix"))


def test_the_prefix_is_in_no_retry_or_dead_letter_history() -> None:
    """Retries and dead letters carry each attempt's as_record(): the size at most, never
    the body."""
    shown = result(prefix=b"personal data").as_record()
    assert "personal data" not in repr(shown)
    assert not any(key.startswith("response") for key in shown)
    assert "personal data" not in repr(result(prefix=b"personal data"))
