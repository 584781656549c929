"""bridge.admin.dead_letters.replay_dead_letters: which letters a replay writes to the first retry
tier, and for which webhook. The letters are given here as the topic would give them; what the
replay would write is captured, never sent."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bridge.admin import dead_letters
from bridge.admin.dead_letters import DeadLetterFilter, ReplayReport, replay_dead_letters
from bridge.config import Settings
from bridge.delivery.pending_retry import PendingRetry, parse_retry
from bridge.subscriptions.webhook import Webhook
from tests.support.fakes import RecordingProducer
from tests.support.jobs import SPEC_EVENT, spec_webhook

SETTINGS = Settings.load(env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1"})
#: When the webhook ``wh`` the letters are of was created, and when another one took its id
#: after it was deleted.
CREATED_AT = "2026-12-04T10:00:00.000Z"
RECREATED_AT = "2026-12-04T13:00:00.000Z"


def letter(delivery: str, at: str, **fields: Any) -> dict[str, Any]:
    """A dead letter of the webhook ``wh`` as the bridge writes it, without the
    ``webhook_created_at`` letters carry since 2026-12-04 (unless given)."""
    return {
        "reason": "attempts_exhausted",
        "detail": "8 attempts; last: HTTP 500",
        "source": {"topic": "events", "partition": 0, "offset": 1},
        "event": SPEC_EVENT.envelope(),
        "webhook_id": "wh",
        "delivery_id": delivery,
        "attempts": [],
        "dead_lettered_at": at,
        **fields,
    }


def hook(created_at: str | None) -> Webhook:
    extra = {} if created_at is None else {"created_at": created_at}
    return spec_webhook("https://hooks.example/wh", "s" * 32, id="wh", extra=extra)


async def replay(
    monkeypatch: pytest.MonkeyPatch, letters: list[dict[str, Any]], *current: Webhook
) -> tuple[ReplayReport, list[PendingRetry], list[str]]:
    """Replay ``letters`` with ``current`` the webhooks now: the report, the retries written
    and the webhook ids looked up."""

    async def stream_dead_letters(settings: Settings, where: DeadLetterFilter, **_: Any) -> Any:
        for record in letters:
            yield record

    asked: list[str] = []
    by_id = {webhook.id: webhook for webhook in current}

    async def webhooks(webhook_id: str) -> Webhook | None:
        asked.append(webhook_id)
        return by_id.get(webhook_id)

    lookup: Callable[[str], Awaitable[Webhook | None]] = webhooks
    producer = RecordingProducer()
    monkeypatch.setattr(dead_letters, "stream_dead_letters", stream_dead_letters)
    monkeypatch.setattr(dead_letters, "AIOKafkaProducer", producer)
    report = await replay_dead_letters(SETTINGS, DeadLetterFilter(), webhooks=lookup)
    return report, [parse_retry(value) for value in producer.values], asked


async def test_a_letter_without_its_webhooks_created_at_is_replayed_only_to_that_webhook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A letter written before letters named their webhook's ``created_at`` is judged by the
    webhook of its id now: none, or one created after the letter was written (a deleted
    webhook's id taken again, perhaps by another site), and it is not replayed; else it is
    replayed naming that webhook's ``created_at``, so that the worker's check is exact. Until
    2026-12-06 it was replayed naming none, which the worker takes for the current webhook:
    a deleted webhook's event was signed with, and sent to, the new webhook."""
    old = letter("d_old", "2026-12-04T11:00:00.000Z")
    report, written, _ = await replay(monkeypatch, [old], hook(RECREATED_AT))
    assert (report.replayed, report.skipped, written) == ([], 1, [])
    report, written, _ = await replay(monkeypatch, [old])  # no webhook of its id now
    assert (report.replayed, report.skipped, written) == ([], 1, [])

    report, written, _ = await replay(monkeypatch, [old], hook(CREATED_AT))
    assert report.replayed == ["d_old"] and report.skipped == 0
    assert [retry.webhook_created_at for retry in written] == [CREATED_AT]
    report, written, _ = await replay(monkeypatch, [old], hook(None))  # created_at unknown
    assert report.replayed == ["d_old"]
    assert [retry.webhook_created_at for retry in written] == [None]


async def test_a_letter_naming_its_webhooks_created_at_is_left_to_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker drops a retry made for another webhook of its id: such a letter is written
    as it names it, and no webhook is looked up for it."""
    named = letter("d_named", "2026-12-04T11:00:00.000Z", webhook_created_at=CREATED_AT)
    report, written, asked = await replay(monkeypatch, [named], hook(RECREATED_AT))
    assert report.replayed == ["d_named"] and asked == []
    assert [retry.webhook_created_at for retry in written] == [CREATED_AT]


async def test_a_replay_writes_each_delivery_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery replayed before and dead-lettered again has two letters: one replay writes it
    once (its first letter read), the further letters counted as skipped. Until 2026-12-06
    each letter was written, so every replay of a failing endpoint doubled its deliveries."""
    first = letter("d1", "2026-12-04T14:00:00.000Z", webhook_created_at=RECREATED_AT)
    again = {**first, "dead_lettered_at": "2026-12-04T15:00:00.000Z"}
    other = letter("d2", "2026-12-04T14:30:00.000Z")
    report, written, _ = await replay(monkeypatch, [first, other, again], hook(RECREATED_AT))
    assert report.replayed == ["d1", "d2"] and report.skipped == 1
    assert [retry.delivery_id for retry in written] == ["d1", "d2"]


async def test_a_replay_remembers_a_bounded_number_of_deliveries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``REPLAY_REMEMBERED`` delivery ids, a later letter of a delivery not remembered
    is written again: the replay's memory stays bounded, whatever the topic holds."""
    monkeypatch.setattr(dead_letters, "REPLAY_REMEMBERED", 1)
    d1 = letter("d1", "2026-12-04T14:00:00.000Z")
    d2 = letter("d2", "2026-12-04T14:00:00.000Z")
    report, _, _ = await replay(monkeypatch, [d1, d2, d1, d2], hook(RECREATED_AT))
    assert report.replayed == ["d1", "d2", "d2"] and report.skipped == 1


@pytest.mark.parametrize("webhook_id", [123, True, ["wh"], {"id": "wh"}, ""])
async def test_a_letter_naming_no_webhook_id_string_is_not_replayed(
    monkeypatch: pytest.MonkeyPatch, webhook_id: Any
) -> None:
    """Until 2026-12-06 a letter naming ``123`` or ``["wh"]`` was replayed to the webhook
    ``"123"`` or ``"['wh']"``."""
    odd = letter("d1", "2026-12-04T14:00:00.000Z", webhook_id=webhook_id)
    assert dead_letters._replayed(odd, 1.0) is None
    named = dataclasses.replace(hook(None), id=str(webhook_id))
    report, written, _ = await replay(monkeypatch, [odd], named)
    assert (report.replayed, report.skipped, written) == ([], 1, [])
