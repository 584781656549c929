"""The topic reads a worker's /v1 makes without the delivery log (KafkaActivitySource), on the
real broker: a webhook's log, one delivery and a status are read a batch at a time, keep only
what the answer needs, and pay the worker's scan share for every record they parse."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bridge.admin.loop_share import STRETCH_RECORDS
from bridge.api.kafka_sources import KafkaActivitySource
from bridge.attempts import record as record_module
from bridge.config import Settings
from bridge.contract.events import format_timestamp
from tests.support.records import RawWriter
from tests.support.shares import CountedShare

pytestmark = pytest.mark.integration

BASE = datetime(2026, 1, 15, 10, 0, tzinfo=UTC).timestamp()


def attempt(n: int, webhook_id: str) -> bytes:
    return json.dumps(
        {
            "delivery_id": f"d_{n // 2}",
            "webhook_id": webhook_id,
            "event_id": f"evt_{n // 2}",
            "event_type": "post.created",
            "attempt": 1 + n % 2,
            "outcome": "failure" if n % 2 == 0 else "success",
            "status": 500 if n % 2 == 0 else 200,
            "error": "http_status" if n % 2 == 0 else None,
            "duration_seconds": 0.01,
            "at": format_timestamp(datetime.fromtimestamp(BASE + n, UTC)),
            "next": "retry" if n % 2 == 0 else None,
        }
    ).encode()


async def test_reads_without_the_log_pay_for_every_record_and_keep_what_they_answer(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """600 attempt records of one webhook and 200 of another on its partition, and junk: the
    log keeps ``delivery_log_max_attempts`` (50) of them, a delivery its two attempts, and
    every record parsed is paid for in stretches of at most STRETCH_RECORDS (the share's
    clock counts the records parsed, a second each, and its sleeps)."""
    settings = settings.replace(delivery_log_max_attempts=50)
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        partition = None
        for n in range(800):
            webhook_id = "wh_a" if n < 600 else "wh_b"
            partition, _ = await writer.write(
                settings.attempts_topic,
                attempt(n, webhook_id),
                key=b"wh_a",  # (wh_b's records on wh_a's partition: skipped by their id)
            )
        await writer.write(settings.attempts_topic, b"{junk", key=b"wh_a", partition=partition)
        await writer.write(
            settings.status_topic,
            b'{"webhook_id": "wh_a", "state": "healthy", "updated_at": "2026-01-15T10:00:00.000Z"}',
            key=b"wh_a",
        )
    finally:
        await writer.stop()
    share = CountedShare(0.5)
    parsed = 0
    real_parse = record_module.Attempt.parse.__func__  # type: ignore[attr-defined]

    def counting(cls: type, value: bytes | None) -> object:
        nonlocal parsed
        parsed += 1
        share.work()
        return real_parse(cls, value)

    monkeypatch.setattr(record_module.Attempt, "parse", classmethod(counting))
    source = KafkaActivitySource(
        settings,
        clock=lambda: BASE + 900,
        share=share,
    )
    activity = await source.activity("wh_a")
    kept = activity.log.attempts()
    assert len(kept) == 50 and {a.webhook_id for a in kept} == {"wh_a"}
    assert parsed == 801 and sum(share.stretches) == pytest.approx(801)
    assert max(share.stretches) <= STRETCH_RECORDS
    assert share.now == pytest.approx(2 * 801)  # each record's second, and its second's sleep
    found = await source.delivery("d_7")
    assert [(a.attempt, a.outcome) for a in found] == [(1, "failure"), (2, "success")]
    status = await source.status("wh_a")
    assert status is not None and status.state == "healthy"
