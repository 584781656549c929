"""bridge.admin.dead_letters.replay_dead_letters: which letters a replay writes to the first retry
tier, and for which webhook. The letters are given here as the topic would give them; what the
replay would write is captured, never sent."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.admin import dead_letters
from bridge.admin.dead_letters import (
    SKIP_REASONS,
    DeadLetterFilter,
    ReplayReport,
    replay_dead_letters,
)
from bridge.config import Settings
from bridge.contract.payload import delivery_id
from bridge.delivery.pending_retry import PendingRetry, parse_retry
from bridge.subscriptions.webhook import Webhook
from tests.support.fakes import RecordingProducer, positioned
from tests.support.jobs import SPEC_EVENT, spec_webhook

SETTINGS = Settings.load(env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1"})
#: When the webhook ``wh`` the letters are of was created, and when another one took its id
#: after it was deleted.
CREATED_AT = "2026-12-04T10:00:00.000Z"
RECREATED_AT = "2026-12-04T13:00:00.000Z"


def letter(name: str, at: str, **fields: Any) -> dict[str, Any]:
    """A dead letter of the webhook ``wh`` as the bridge writes it, without the
    ``webhook_created_at`` letters carry since 2026-12-04 (unless given): of the event
    ``evt_<name>``, its ``delivery_id`` the one the event and webhook ids make (unless given),
    which :func:`names` gives back as ``name``."""
    record = {
        "reason": "attempts_exhausted",
        "detail": "8 attempts; last: HTTP 500",
        "source": {"topic": "events", "partition": 0, "offset": 1},
        "event": {**SPEC_EVENT.envelope(), "id": f"evt_{name}"},
        "webhook_id": "wh",
        "attempts": [],
        "dead_lettered_at": at,
        **fields,
    }
    event, webhook_id = record["event"], record["webhook_id"]
    if "delivery_id" not in record:
        made = name
        if isinstance(webhook_id, str) and isinstance(event, dict):
            made = delivery_id(str(event.get("id")), webhook_id)
        record["delivery_id"] = made
        NAMES[made] = name
    return record


#: The name :func:`letter` was given for each delivery id it made.
NAMES: dict[str, str] = {}


def names(delivery_ids: list[str]) -> list[str]:
    """The names :func:`letter` was given for ``delivery_ids``."""
    return [NAMES.get(made, made) for made in delivery_ids]


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
    monkeypatch.setattr(dead_letters, "stream_positioned_letters", positioned(stream_dead_letters))
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
    assert names(report.replayed) == ["d_old"] and report.skipped == 0
    assert [retry.webhook_created_at for retry in written] == [CREATED_AT]
    report, written, _ = await replay(monkeypatch, [old], hook(None))  # created_at unknown
    assert names(report.replayed) == ["d_old"]
    assert [retry.webhook_created_at for retry in written] == [None]


async def test_a_letter_naming_its_webhooks_created_at_is_replayed_to_that_webhook_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker drops a retry made for another webhook of its id: the replay does not write
    one, and says why (until 2026-12-06 it wrote it and counted it as replayed)."""
    named = letter("d_named", "2026-12-04T11:00:00.000Z", webhook_created_at=CREATED_AT)
    report, written, asked = await replay(monkeypatch, [named], hook(RECREATED_AT))
    assert (report.replayed, report.skipped, written, asked) == ([], 1, [], ["wh"])
    assert report.skipped_by_reason["webhook_gone"] == 1
    report, written, _ = await replay(monkeypatch, [named], hook(CREATED_AT))
    assert names(report.replayed) == ["d_named"]
    assert [retry.webhook_created_at for retry in written] == [CREATED_AT]


async def test_letters_of_a_turned_off_webhook_or_one_no_longer_getting_the_event_are_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker would drop them when due: until 2026-12-06 a replay wrote them and counted
    them as replayed, and nothing was sent. Each webhook is asked for once."""
    letters = [
        letter(f"d{n}", "2026-12-04T11:00:00.000Z", webhook_created_at=CREATED_AT) for n in range(3)
    ]
    for current, reason in [
        (dataclasses.replace(hook(CREATED_AT), active=False), "webhook_off"),
        (
            dataclasses.replace(
                hook(CREATED_AT), active=False, extra={"disabled_reason": "endpoint_gone"}
            ),
            "webhook_off",
        ),
        (dataclasses.replace(hook(CREATED_AT), site_id="another_site"), "not_receiving"),
        (
            dataclasses.replace(hook(CREATED_AT), events=frozenset({"post.deleted"})),
            "not_receiving",
        ),
    ]:
        report, written, asked = await replay(monkeypatch, letters, current)
        assert (report.replayed, written, asked) == ([], [], ["wh"])
        assert report.skipped == 3
        assert report.skipped_by_reason == {**dict.fromkeys(SKIP_REASONS, 0), reason: 3}


async def test_every_skip_is_counted_by_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    first = letter("d1", "2026-12-04T14:00:00.000Z", webhook_created_at=CREATED_AT)
    letters = [
        first,
        {**first, "dead_lettered_at": "2026-12-04T15:00:00.000Z"},  # already replayed
        letter("d2", "2026-12-04T14:00:00.000Z", webhook_id="gone"),  # no webhook
        letter("d3", "2026-12-04T14:00:00.000Z", event={"id": "x"}),  # unreadable
        letter("d4", "2026-12-04T14:00:00.000Z", webhook_id="off"),  # turned off
        letter("d5", "2026-12-04T14:00:00.000Z", delivery_id="d5"),  # not the id it is sent with
    ]
    off = dataclasses.replace(hook(None), id="off", active=False)
    report, written, asked = await replay(monkeypatch, letters, hook(CREATED_AT), off)
    assert names(report.replayed) == ["d1"] and names([r.delivery_id for r in written]) == ["d1"]
    assert report.skipped == 5 and asked == ["wh", "gone", "off"]
    assert report.skipped_by_reason == {
        "unreadable": 1,
        "webhook_gone": 1,
        "webhook_off": 1,
        "not_receiving": 0,
        "already_replayed": 1,
        "wrong_delivery_id": 1,
    }


async def test_a_letter_whose_delivery_id_is_not_its_events_and_webhooks_is_not_replayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker sends a retry with the id its event id and webhook id make, whatever the
    record says: a letter naming another id (written by something else than the bridge) is
    skipped as ``wrong_delivery_id``. Until 2026-12-07 it was reported under the id it named,
    not the one sent, and one naming a real delivery's id, read first, made that delivery's
    letter skip as ``already_replayed``."""
    real = letter("d1", "2026-12-04T14:00:00.000Z", webhook_created_at=CREATED_AT)
    claiming = letter(
        "d2",
        "2026-12-04T13:00:00.000Z",
        webhook_created_at=CREATED_AT,
        delivery_id=real["delivery_id"],
    )
    made_up = letter("d3", "2026-12-04T13:30:00.000Z", delivery_id="d3")
    report, written, _ = await replay(monkeypatch, [claiming, made_up, real], hook(CREATED_AT))
    assert names(report.replayed) == ["d1"]
    assert [(r.delivery_id, r.event.id) for r in written] == [(real["delivery_id"], "evt_d1")]
    assert report.skipped == 2
    assert report.skipped_by_reason == {**dict.fromkeys(SKIP_REASONS, 0), "wrong_delivery_id": 2}


WEBHOOK_STATES = st.builds(
    lambda created, active, site, events: dataclasses.replace(
        hook(created), active=active, site_id=site, events=frozenset(events)
    ),
    st.sampled_from([None, CREATED_AT, RECREATED_AT]),
    st.booleans(),
    st.sampled_from([SPEC_EVENT.site_id, "another_site"]),
    st.sampled_from([["*"], [SPEC_EVENT.type], ["post.deleted"]]),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    current=st.none() | WEBHOOK_STATES,
    named=st.sampled_from([None, CREATED_AT, RECREATED_AT]),
    written_at=st.sampled_from(["2026-12-04T11:00:00.000Z", "2026-12-04T14:00:00.000Z"]),
)
async def test_a_replayed_letter_is_one_the_worker_sends_and_a_skipped_one_is_not(
    monkeypatch: pytest.MonkeyPatch, current: Webhook | None, named: str | None, written_at: str
) -> None:
    """What a replay writes, the worker sends when it is due (the same webhook, active and
    getting the event); what it skips for its webhook, the worker would not send, or it is
    a letter naming no ``created_at`` written before its id's webhook now was created."""
    fields = {} if named is None else {"webhook_created_at": named}
    report, written, _ = await replay(
        monkeypatch, [letter("d1", written_at, **fields)], *([current] if current else [])
    )
    if written:
        [retry] = written
        assert current is not None and names(report.replayed) == ["d1"]
        assert current.active and current.is_incarnation(retry.webhook_created_at)
        assert current.receives(retry.event)
        assert retry.webhook_created_at == (named if named is not None else current.created_at)
        return
    [reason] = [r for r, n in report.skipped_by_reason.items() if n]
    assert report.skipped == 1 and reason in ("webhook_gone", "webhook_off", "not_receiving")
    created_after = (
        current is not None
        and named is None
        and current.created_at is not None
        and current.created_at > written_at
    )
    would_send = (
        current is not None
        and current.active
        and current.is_incarnation(named)
        and current.receives(SPEC_EVENT)
    )
    assert created_after or not would_send


async def test_a_replay_writes_each_delivery_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery replayed before and dead-lettered again has two letters: one replay writes it
    once (its first letter read), the further letters counted as skipped. Until 2026-12-06
    each letter was written, so every replay of a failing endpoint doubled its deliveries."""
    first = letter("d1", "2026-12-04T14:00:00.000Z", webhook_created_at=RECREATED_AT)
    again = {**first, "dead_lettered_at": "2026-12-04T15:00:00.000Z"}
    other = letter("d2", "2026-12-04T14:30:00.000Z")
    report, written, _ = await replay(monkeypatch, [first, other, again], hook(RECREATED_AT))
    assert names(report.replayed) == ["d1", "d2"] and report.skipped == 1
    assert names([retry.delivery_id for retry in written]) == ["d1", "d2"]


async def test_a_replay_remembers_a_bounded_number_of_deliveries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``REPLAY_REMEMBERED`` delivery ids, a later letter of a delivery not remembered
    is written again: the replay's memory stays bounded, whatever the topic holds."""
    monkeypatch.setattr(dead_letters, "REPLAY_REMEMBERED", 1)
    d1 = letter("d1", "2026-12-04T14:00:00.000Z")
    d2 = letter("d2", "2026-12-04T14:00:00.000Z")
    report, _, _ = await replay(monkeypatch, [d1, d2, d1, d2], hook(RECREATED_AT))
    assert names(report.replayed) == ["d1", "d2", "d2"] and report.skipped == 1


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


# ------------------------------------------------------------------ stopped and resumed


class Reading:
    """The dead-letter topic as a replay reads it: ``letters`` in partitions 0 and 1 (even
    and odd), whose reading waits for ever (a broker slow to answer, a topic of letters that
    do not match) before the letter of index ``stall``, when given."""

    def __init__(self, letters: list[dict[str, Any]], stall: int | None = None) -> None:
        self.letters = letters
        self.stall = stall
        self.started: list[Any] = []

    async def __call__(
        self, settings: Settings, where: DeadLetterFilter, *, start_offsets: Any = None, **_: Any
    ) -> Any:
        self.started.append(dict(start_offsets or {}))
        for index, record in enumerate(self.letters):
            partition, offset = index % 2, index // 2
            if offset < (start_offsets or {}).get(partition, 0):
                continue
            if index == self.stall:
                await asyncio.Event().wait()
            yield partition, offset, record


async def replay_read(
    monkeypatch: pytest.MonkeyPatch,
    reading: Reading,
    *,
    deadline: float | None = None,
    resume: dict[int, int] | None = None,
    until: datetime | None = None,
) -> tuple[ReplayReport, list[str]]:
    producer = RecordingProducer()
    monkeypatch.setattr(dead_letters, "stream_positioned_letters", reading)
    monkeypatch.setattr(dead_letters, "AIOKafkaProducer", producer)
    report = await replay_dead_letters(
        SETTINGS,
        DeadLetterFilter(until=until),
        webhooks=current_webhooks(hook(CREATED_AT)),
        resume=resume,
        deadline=deadline,
    )
    return report, names([parse_retry(value).delivery_id for value in producer.values])


def current_webhooks(*webhooks: Webhook) -> Callable[[str], Awaitable[Webhook | None]]:
    by_id = {webhook.id: webhook for webhook in webhooks}

    async def get(webhook_id: str) -> Webhook | None:
        return by_id.get(webhook_id)

    return get


def many(count: int) -> list[dict[str, Any]]:
    return [
        letter(f"d{n}", "2026-12-04T11:00:00.000Z", webhook_created_at=CREATED_AT)
        for n in range(count)
    ]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    count=st.integers(0, 12), stall=st.integers(0, 13), second_stall=st.none() | st.integers(0, 13)
)
async def test_a_replay_stopped_at_its_deadline_and_resumed_writes_every_letter_once(
    monkeypatch: pytest.MonkeyPatch, count: int, stall: int, second_stall: int | None
) -> None:
    """A replay whose reading stalls is stopped at its deadline, having written every letter
    read before (acknowledged); resumed from where it got to, as often as it stops, the
    replays together write each letter once. Until 2026-12-06 a replay through ``/v1`` cut at
    the request's timeout was answered 503 with some letters written, and the same request
    sent again wrote them twice."""
    letters = many(count)
    loop = asyncio.get_running_loop()
    written: list[str] = []
    resume: dict[int, int] | None = None
    until = None
    stalls = [stall, second_stall]
    # Rounds until one completes: a stall stops one; so may a loaded machine, where 50 ms pass
    # before the reading began or ended (a round of the CI's failed so on 2026-12-07), and the
    # next round goes on from where that one got to, as a client would.
    for _ in range(50):
        point = stalls[0] if stalls else None
        reading = Reading(letters, stall=point)
        report, wrote = await replay_read(
            monkeypatch, reading, deadline=loop.time() + 0.05, resume=resume, until=until
        )
        written += wrote
        assert names(report.replayed) == wrote  # each acknowledged before the answer
        assert reading.started in ([], [resume or {}])
        if reading.started and stalls:
            stalls.pop(0)
        if until is None:
            assert report.until is not None
            until = report.until
        assert report.until == until
        if report.complete:
            break
        resume = dict(report.positions)
    else:
        raise AssertionError("no round completed")
    assert sorted(written, key=lambda d: int(d[1:])) == [f"d{n}" for n in range(count)]


async def test_the_reading_s_own_timeout_is_not_taken_for_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def failing(settings: Settings, where: DeadLetterFilter, **_: Any) -> Any:
        yield 0, 0, many(1)[0]
        raise TimeoutError("no records from the dead-letter topic within 30s")

    producer = RecordingProducer()
    monkeypatch.setattr(dead_letters, "stream_positioned_letters", failing)
    monkeypatch.setattr(dead_letters, "AIOKafkaProducer", producer)
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError, match="no records"):
        await replay_dead_letters(
            SETTINGS,
            DeadLetterFilter(),
            webhooks=current_webhooks(hook(CREATED_AT)),
            deadline=loop.time() + 60,
        )


async def test_a_replay_stopped_in_a_stretch_of_letters_it_does_not_take_goes_on_past_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Letters of another webhook (or that the filter leaves out) move a replay's positions as
    they are read, by the stretch: until 2026-12-06 only letters it took did, and a stretch
    longer to read than the deadline stopped every replay resumed at the same place, for ever."""
    from bridge.kafka.reading import Positioned

    other = json.dumps(letter("x", "2026-12-04T11:00:00.000Z", webhook_id="other")).encode()
    mine = json.dumps(
        letter("d_last", "2026-12-04T11:00:00.000Z", webhook_created_at=CREATED_AT)
    ).encode()
    stall_at = [700]

    async def stream_positioned(settings: Settings, topic: str, **kwargs: Any) -> Any:
        start = (kwargs.get("start_offsets") or {}).get(0, 0)
        for first in range(start, 1001, 250):  # batches of 250: 1000 others, then mine
            batch = []
            for offset in range(first, min(first + 250, 1001)):
                if offset == stall_at[0]:
                    if batch:
                        yield batch
                    await asyncio.Event().wait()  # a read that outlasts the deadline
                # Keyed by their webhooks' ids, as the bridge writes them (one partition).
                key, value = (b"wh", mine) if offset == 1000 else (b"other", other)
                batch.append(Positioned(0, offset, key, value))
            yield batch

    producer = RecordingProducer()
    monkeypatch.setattr(dead_letters, "stream_positioned", stream_positioned)
    monkeypatch.setattr(dead_letters, "AIOKafkaProducer", producer)
    loop = asyncio.get_running_loop()
    where = DeadLetterFilter(webhook_id="wh")
    lookup = current_webhooks(hook(CREATED_AT))
    report = await replay_dead_letters(
        SETTINGS, where, webhooks=lookup, deadline=loop.time() + 0.05
    )
    assert not report.complete and names(report.replayed) == []
    # Read past every whole stretch before the stall, taken or not.
    assert 640 <= report.positions[0] <= 700
    stall_at[0] = -1
    resumed = await replay_dead_letters(
        SETTINGS,
        dataclasses.replace(where, until=report.until),
        webhooks=lookup,
        resume=report.positions,
        deadline=loop.time() + 5,
    )
    assert resumed.complete and names(resumed.replayed) == ["d_last"]
    assert resumed.positions == {0: 1001}
