"""bridge.kafka.outputs: the cached partitioner picks exactly the partitions aiokafka's default
does; writes are counted; attempt records reach their batches as written."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from types import MappingProxyType
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from bridge.attempts.record import Attempt
from bridge.config import Settings
from bridge.contract.schemas import schema_errors
from bridge.delivery.attempt_record import attempt_record
from bridge.http.base import AttemptResult
from bridge.kafka.outputs import CachedPartitioner, KafkaOutputs, _attempt_bytes
from bridge.metrics import Metrics
from bridge.subscriptions.webhook import Webhook
from tests.support.jobs import SPEC_EVENT, outgoing, spec_webhook
from tests.support.metrics import sample


@given(
    keys=st.lists(st.binary(max_size=40), min_size=1, max_size=20),
    count=st.integers(1, 64),
)
def test_same_partition_as_the_default_partitioner(keys: list[bytes], count: int) -> None:
    cached = CachedPartitioner(max_keys=8)
    reference = DefaultPartitioner()
    partitions = list(range(count))
    for key in keys + keys:  # the second round comes from the cache (or after a clear)
        assert cached(key, partitions, partitions) == reference(key, partitions, partitions)


def test_known_values_of_the_java_client() -> None:
    """Utils.murmur2 values from Kafka's own UtilsTest, as the Java producer partitions them."""
    java = {b"21": -973932308, b"foobar": -790332482, b"abc": 479470107}
    partitions = list(range(7))
    for key, signed in java.items():
        assert CachedPartitioner()(key, partitions, partitions) == (signed & 0x7FFFFFFF) % 7


def test_no_key_goes_to_an_available_partition() -> None:
    assert CachedPartitioner()(None, [0, 1, 2], [2]) == 2


def test_the_cache_is_bounded() -> None:
    cached = CachedPartitioner(max_keys=4)
    for n in range(10):
        cached(str(n).encode(), [0, 1], [0, 1])
    assert len(cached._hashes) <= 4


class _Store:
    """What KafkaOutputs uses of a WebhookStore, failing when told to."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[str] = []

    async def put_status(self, record: dict) -> None:
        self.calls.append("status")
        if self.error is not None:
            raise self.error

    async def disable(self, webhook: object, reason: str) -> None:
        self.calls.append(f"disable:{reason}")
        if self.error is not None:
            raise self.error


async def test_status_and_disable_writes_are_counted_by_outcome() -> None:
    registry = CollectorRegistry()
    store = _Store()
    webhook = spec_webhook("https://example.test/hook", "whsec_x")
    outputs = KafkaOutputs(Settings(), store, lambda _: webhook, Metrics(registry))  # type: ignore[arg-type]
    await outputs.status(b"wh", {"webhook_id": "wh"})
    await outputs.disable(webhook, "gone")
    store.error = RuntimeError("broker unreachable")
    with pytest.raises(RuntimeError, match="broker unreachable"):
        await outputs.status(b"wh", {"webhook_id": "wh"})
    assert store.calls == ["status", "disable:gone", "status"]

    writes = "webhook_bridge_output_writes_total"
    assert sample(registry, writes, output="status", outcome="acknowledged") == 1
    assert sample(registry, writes, output="status", outcome="failed") == 1
    assert sample(registry, writes, output="disable", outcome="acknowledged") == 1
    duration = "webhook_bridge_output_write_duration_seconds_count"
    assert sample(registry, duration, output="status") == 2
    assert sample(registry, duration, output="disable") == 1


def _made(created_at: str, **changes: object) -> Webhook:
    return spec_webhook(
        "https://example.test/hook",
        "whsec_x",
        extra=MappingProxyType({"created_at": created_at}),
        **changes,
    )


@pytest.mark.parametrize("owned", [False, True])
async def test_a_status_for_a_webhook_gone_from_the_table_is_left_to_its_owner_or_dropped(
    owned: bool,
) -> None:
    """A delivery in flight at its webhook's delete settles after the delete's status
    tombstone. With owners, the owner deletes the status it publishes; without, nothing
    would, and it is not published."""
    store = _Store()
    webhook = spec_webhook("https://example.test/hook", "whsec_x")
    table: dict[str, Webhook] = {"wh": webhook}
    outputs = KafkaOutputs(
        Settings(),
        store,  # type: ignore[arg-type]
        table.get,
        Metrics(CollectorRegistry()),
        owned=lambda _: owned,
    )
    await outputs.status(b"wh", {"webhook_id": "wh", "state": "failing"})
    del table["wh"]
    await outputs.status(b"wh", {"webhook_id": "wh", "state": "failing"})
    assert store.calls == ["status", "status"] if owned else ["status"]


@pytest.mark.parametrize(
    ("now", "owned", "written", "applied"),
    [
        ("same", False, True, True),
        (None, False, False, False),  # deleted meanwhile: not brought back as a disabled one
        # turned off meanwhile (by another worker's disable): off here, so applied, and the
        # status marked (until 2026-12-06 left unmarked, read disabled for ever after)
        ("inactive", False, False, True),
        ("other", False, False, False),  # its id taken by another: not that one's endpoint
        ("same", True, False, False),  # its owner writes it, from the status record
    ],
)
async def test_a_disable_is_written_here_only_for_the_same_webhook_without_an_owner(
    now: str | None, owned: bool, written: bool, applied: bool
) -> None:
    made = _made("2024-01-15T09:00:00.000Z")
    current = {
        None: None,
        "same": made,
        "inactive": _made("2024-01-15T09:00:00.000Z", active=False),
        "other": _made("2024-01-15T11:00:00.000Z"),
    }[now]
    store = _Store()
    registry = CollectorRegistry()
    outputs = KafkaOutputs(
        Settings(),
        store,  # type: ignore[arg-type]
        lambda _: current,
        Metrics(registry),
        owned=lambda _: owned,
    )
    assert await outputs.disable(made, "gone") == applied
    assert store.calls == (["disable:gone"] if written else [])
    # Counted when written alone (until 2026-12-07 every decision was, written or not).
    disabled = sample(registry, "webhook_bridge_webhooks_disabled_total", reason="gone")
    assert disabled == (1 if written else 0)


class _Batches:
    """What KafkaOutputs uses of PartitionBatches: the attempt records it is handed."""

    def __init__(self) -> None:
        self.added: list[tuple[bytes, bytes]] = []

    def add(self, key: bytes, value: bytes) -> asyncio.Future[Any]:
        self.added.append((key, value))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_an_attempt_record_is_written_with_its_response_fields() -> None:
    """The response's size and kept prefix reach the topic as written (control characters and
    NULs escaped by the JSON encoder), and read back into the same Attempt."""
    outputs = KafkaOutputs(Settings(), _Store(), lambda _: None)  # type: ignore[arg-type]
    batches = _Batches()
    outputs._attempts = batches  # type: ignore[assignment]
    job = outgoing(SPEC_EVENT, spec_webhook("https://example.test/hook", "whsec_x")).job
    answer = AttemptResult(
        False,
        500,
        "http_status",
        0.25,
        "2024-01-15T10:30:00.250Z",
        response_bytes=65000,
        response_truncated=True,
        response_prefix=b'{"error":"\x00\x1b[2J\xff"}',
    )
    for result in (answer, dataclasses.replace(answer, response_prefix=None)):
        record = attempt_record(job, result, "failure", "dead_letter")
        await (await outputs.attempt(b"webhook_abc", record))
    (key, value), (_, plain) = batches.added
    assert key == b"webhook_abc"
    assert b"\x00" not in value and b"\x1b" not in value
    # The invalid byte became U+FFFD (3 bytes): the text is cut to the 18 bytes kept.
    text = '{"error":"\x00\x1b[2J\ufffd'
    written = json.loads(value)
    assert written == {**attempt_record(job, answer, "failure", "dead_letter")}
    assert written["response_prefix"] == text
    assert schema_errors("attempt", written) == []
    read = Attempt.parse(value)
    assert (read.response_bytes, read.response_truncated) == (65000, True)
    assert read.response_prefix == text
    # Without a kept prefix (the default), the size only.
    assert "response_prefix" not in json.loads(plain)
    assert Attempt.parse(plain).response_prefix is None


@given(
    status=st.none() | st.integers(100, 999),
    duration=st.floats(0, 30.0),
    prefix=st.none() | st.binary(max_size=64),
    size=st.none() | st.integers(0, 2**20),
)
def test_any_attempt_record_reads_back_as_it_was_built(
    status: int | None, duration: float, prefix: bytes | None, size: int | None
) -> None:
    """orjson writes the attempt record: what the deliverer built, read back by json and by the
    delivery log's reader alike, and valid against the topic's schema."""
    job = outgoing(SPEC_EVENT, spec_webhook("https://example.test/hook", "whsec_x")).job
    result = AttemptResult(
        status == 200,
        status,
        None if status == 200 else "http_status",
        duration,
        "2024-01-15T10:30:00.250Z",
        response_bytes=size,
        response_prefix=prefix,
    )
    record = attempt_record(job, result, "success" if status == 200 else "failure", None)
    value = _attempt_bytes(record)
    assert json.loads(value) == record
    assert schema_errors("attempt", json.loads(value)) == []
    read = Attempt.parse(value)
    assert read == Attempt.of(record)
    assert (read.status, read.duration_seconds, read.response_bytes) == (
        status,
        record["duration_seconds"],
        size,
    )
    assert read.response_prefix == record.get("response_prefix")


def test_what_orjson_refuses_is_written_as_the_canonical_encoder_does() -> None:
    """A lone surrogate (no UTF-8 form) is escaped as V8 does; an integer past 2**53 is refused
    with the canonical encoder's reason, not written as a number JavaScript reads rounded."""
    from bridge.errors import UnencodableValue

    assert _attempt_bytes({"error": "\ud800"}) == b'{"error":"\\ud800"}'
    with pytest.raises(UnencodableValue) as refused:
        _attempt_bytes({"response_bytes": 2**53})
    assert refused.value.reason == "unsafe_integer"
    assert _attempt_bytes({"response_bytes": 2**53 - 1}) == b'{"response_bytes":9007199254740991}'


def test_what_orjson_would_write_differently_goes_to_the_canonical_encoder() -> None:
    """orjson writes NaN as null and 200.0 as a float, which the reader refuses (the record
    lost from the log), and encodes dates and enums: the canonical encoder refuses them, or
    writes an integral float as JavaScript does, as the writer did before orjson."""
    import enum
    from datetime import UTC, datetime

    from bridge.errors import UnencodableValue

    class Kind(enum.Enum):
        A = 1

    for value in (math.nan, math.inf, Kind.A, datetime(2024, 1, 1, tzinfo=UTC)):
        with pytest.raises(UnencodableValue):
            _attempt_bytes({"duration_seconds": value})
    assert _attempt_bytes({"status": 200.0}) == b'{"status":200}'
    job = outgoing(SPEC_EVENT, spec_webhook("https://example.test/hook", "whsec_x")).job
    skipped = AttemptResult(False, None, "circuit_open", 0.0, "2024-01-15T10:30:00.250Z")
    written = _attempt_bytes(attempt_record(job, skipped, "skipped", "retry"))
    assert b'"duration_seconds":0,' in written and Attempt.parse(written).duration_seconds == 0.0
