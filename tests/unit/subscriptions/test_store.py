"""bridge.subscriptions.store and bridge.admin without a broker: what WebhookStore refuses before
writing, how it reads the subscriptions topic (records given here as they come from ``read_topic``),
and which dead letters ``replay_dead_letters`` cannot replay. Records it would write are captured,
never sent."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.admin import dead_letters
from bridge.admin.dead_letters import DeadLetterFilter, replay_dead_letters
from bridge.config import Settings
from bridge.contract.payload import delivery_id
from bridge.errors import InvalidSubscription
from bridge.subscriptions import changes, store
from bridge.subscriptions.secretbox import Keyring
from bridge.subscriptions.store import WebhookStore
from bridge.subscriptions.urls import InvalidUrl
from bridge.subscriptions.webhook import Webhook, parse_webhook, webhook_from_record
from tests.support.builders import SECRET, encode
from tests.support.builders import webhook_record as record
from tests.support.fakes import RecordingProducer, positioned

SETTINGS = Settings.load(env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1"})
UNUSABLE = ["http://127.0.0.1:99999/x", "http://xn--/", "ftp://hooks.example/", "https://a b/"]


class CapturingStore(WebhookStore):
    """A store whose writes are kept here instead of being sent."""

    def __init__(self, stored: dict[str, Webhook] | None = None) -> None:
        super().__init__(SETTINGS)
        self.stored = stored or {}
        self.sent: list[tuple[str, bytes | None]] = []

    async def _send(self, webhook_id: str, value: bytes | None) -> None:
        self.sent.append((webhook_id, value))

    async def load(self, *, reveal: bool = True) -> dict[str, Webhook]:
        return dict(self.stored)


def stored(url: str) -> Webhook:
    webhook = parse_webhook(b"hook", encode(record(url=url)))
    assert webhook is not None
    return webhook


# ------------------------------------------------------------------------- URL checks


@pytest.mark.parametrize("url", UNUSABLE)
async def test_create_refuses_an_unusable_url_before_writing(url: str) -> None:
    store = CapturingStore()
    with pytest.raises(InvalidUrl) as caught:
        await store.create(url=url, events=["*"], site_id="site_1", user_id="user_1")
    assert caught.value.reason == "invalid_url"
    assert store.sent == []


async def test_create_refuses_an_id_a_webhook_has() -> None:
    """``webhooks create --id`` of an existing webhook replaced it (its secret, its creation
    time) and said it had created it, until 2026-12-07; the API answers 409."""
    store = CapturingStore({"hook": stored("https://hooks.example/old")})
    with pytest.raises(InvalidSubscription) as caught:
        await store.create(
            url="https://hooks.example/new", events=["*"], site_id="s", webhook_id="hook"
        )
    assert caught.value.reason == "exists" and store.sent == []
    made = await store.create(
        url="https://hooks.example/new", events=["*"], site_id="s", webhook_id="other"
    )
    assert made.id == "other" and [webhook_id for webhook_id, _ in store.sent] == ["other"]


@pytest.mark.parametrize("url", UNUSABLE)
async def test_update_and_put_refuse_an_unusable_url(url: str) -> None:
    store = CapturingStore({"hook": stored("https://hooks.example/old")})
    with pytest.raises(InvalidUrl):
        await store.update("hook", url=url)
    with pytest.raises(InvalidUrl):
        await store.put(stored(url))
    assert store.sent == []


async def test_a_stored_unusable_url_does_not_block_other_changes() -> None:
    # Deactivating, renaming, rotating or disabling a webhook whose stored URL no one could use
    # still works; setting the URL is what is checked.
    store = CapturingStore({"hook": stored("http://xn--/")})
    await store.update("hook", active=False, name="renamed")
    await store.rotate_secret("hook", secret="new-secret")
    await store.disable(stored("http://xn--/"), "failing")
    fixed = await store.update("hook", url="https://hooks.example/new")
    assert fixed.url == "https://hooks.example/new"
    assert [webhook_id for webhook_id, _ in store.sent] == ["hook"] * 4


async def test_an_update_of_the_url_renames_a_webhook_named_after_it() -> None:
    """The CLI's ``webhooks update --url`` (WebhookStore.update): a webhook named after its old
    URL sent that name, query token and all, to the new endpoint (until 2026-12-07)."""
    old = "https://hooks.example/old?token=Old-token-secret"
    store = CapturingStore({"hook": webhook_from_record(record(url=old, name=old))})
    moved = await store.update("hook", url="https://hooks.example/new")
    assert moved.name == "https://hooks.example/new"
    assert b"Old-token-secret" not in (store.sent[0][1] or b"")


async def test_the_bridge_s_writes_keep_an_integer_beyond_2_53_as_read() -> None:
    """A producer's 64-bit id (``crm_id``) in a record: a disable, a rotation, a rename and a
    change of URL write it back, digits intact, secrets encrypted or not (until 2026-12-07 the
    record was refused as read, its webhook left out of matching; before, each of these writes
    failed with UnencodableValue)."""
    raw = encode(record())[:-1] + b', "crm_id": 1234567890123456789}'
    for keys in (None, "kid1:" + base64.b64encode(bytes(range(32))).decode()):
        webhook = parse_webhook(b"hook", raw)
        assert webhook is not None
        store = CapturingStore({"hook": webhook})
        if keys is not None:
            store._keyring = Keyring.from_setting(keys)
        await store.disable(webhook, "failing")
        await store.rotate_secret("hook", secret="new-secret")
        await store.update("hook", name="renamed")
        await store.update("hook", url="https://hooks.example/new")
        assert len(store.sent) == 4
        for _, value in store.sent:
            assert value is not None and b'"crm_id":1234567890123456789' in value
            again = parse_webhook(b"hook", value, store._keyring)
            assert again is not None and again.extra["crm_id"] == 1234567890123456789


# ----------------------------------------------------------------------- reading records


async def test_load_skips_invalid_records_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    records: list[tuple[bytes | None, bytes | None]] = [
        (b"hook", encode(record())),
        (b"gone", encode(record(id="gone"))),
        (b"gone", encode(record(id="gone", active="yes"))),  # its newest record is broken
        # A null key and an id with no UTF-8 form: once a UnicodeEncodeError out of load().
        (None, encode(record(id="\ud800"))),
        (b"\xffhook", encode(record())),
        (None, None),
        (b"hook2", encode(record(id="hook2", previous_secret={"v": SECRET}))),
        (b"hook3", encode(record(id="hook3", url="http://127.0.0.1:99999/x"))),  # kept
    ]

    async def read_topic(settings: Settings, topic: str) -> list[Any]:
        assert topic == SETTINGS.subscriptions_topic
        return records

    monkeypatch.setattr(store, "read_topic", read_topic)
    with caplog.at_level(logging.WARNING, logger=store.__name__):
        webhooks = await WebhookStore(SETTINGS).load()
    assert sorted(webhooks) == ["hook", "hook3"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 5
    assert any("null_key" in w for w in warnings)
    assert any("key_not_utf8" in w for w in warnings)
    assert any("of webhook 'gone'" in w and "schema_invalid" in w for w in warnings)
    assert not any(SECRET in w for w in warnings)
    assert all("\n" not in w and w.isprintable() for w in warnings)


async def test_load_without_revealing_reads_encrypted_webhooks_without_the_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``dlq replay`` judges the webhooks of its letters in a shell that need not hold the
    workers' ``secret_keys``: with ``reveal=False`` an encrypted secret is left as stored, and
    the webhook is there (as the workers, holding the keys, have it). With the secrets
    revealed and no keys, it is skipped as undecryptable."""
    keyring = Keyring.from_setting("kid1:" + base64.b64encode(bytes(range(32))).decode())
    sealed = keyring.encrypt(SECRET, aad=b"hook")
    records = [(b"hook", encode(record(secret=sealed, previous_secret=sealed)))]

    async def read_topic(settings: Settings, topic: str) -> list[Any]:
        return records

    monkeypatch.setattr(store, "read_topic", read_topic)
    assert await WebhookStore(SETTINGS).load() == {}
    judged = await WebhookStore(SETTINGS).load(reveal=False)
    assert judged["hook"].secret == judged["hook"].previous_secret == sealed
    assert SECRET not in repr(judged)
    assert judged["hook"].active and judged["hook"].site_id == "site_1"


# ------------------------------------------------------------------------------- replay


async def test_replay_skips_dead_letters_whose_event_the_bridge_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = {
        "id": "evt_\ud800",  # no delivery id could be made of it
        "type": "post.created",
        "data": {"id": "p", "title": "t"},
        "timestamp": "2024-01-15T10:30:00Z",
        "site_id": "s",
        "user_id": "u",
    }
    letters = [
        {"webhook_id": "hook", "delivery_id": "d1", "event": event},
        {"webhook_id": "hook", "delivery_id": "d2", "event": {**event, "id": "e", "data": {}}},
        {"webhook_id": None, "delivery_id": None, "event": None},
    ]

    async def stream_dead_letters(settings: Settings, where: DeadLetterFilter, **_: Any) -> Any:
        for letter in letters:
            yield letter

    monkeypatch.setattr(dead_letters, "stream_positioned_letters", positioned(stream_dead_letters))
    report = await replay_dead_letters(  # nothing to write
        SETTINGS, DeadLetterFilter(), webhooks=current(stored("https://hooks.example/"))
    )
    assert report.replayed == [] and report.skipped == 3


def current(*webhooks: Webhook) -> Callable[[str], Awaitable[Webhook | None]]:
    """The lookup of the current webhook by id a replay is given: ``webhooks``."""
    by_id = {webhook.id: webhook for webhook in webhooks}

    async def get(webhook_id: str) -> Webhook | None:
        return by_id.get(webhook_id)

    return get


class SentRetries(RecordingProducer):
    """A producer stand-in that also keeps, with each write, how many letters had been read
    when it was made."""

    def __init__(self, read: list[int]) -> None:
        super().__init__()
        self.read = read
        self.writes: list[tuple[int, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes) -> asyncio.Future[None]:
        self.writes.append((self.read[0], key, value))
        return await super().send(topic, value, key=key)


@pytest.mark.parametrize("until", [None, datetime(2026, 12, 4, 11, 0, tzinfo=UTC)])
async def test_a_replay_writes_as_it_reads_the_letters_up_to_when_it_began(
    monkeypatch: pytest.MonkeyPatch, until: datetime | None
) -> None:
    """1,200 letters: each is written to the first retry tier as it is read, not after the
    last one is; the letters read are those dead-lettered up to when the replay began (or
    ``until``, when earlier): one it dead-letters again is not taken again."""
    event = {
        "id": "e",
        "type": "post.created",
        "data": {"id": "p", "title": "t"},
        "timestamp": "2026-12-04T10:00:00Z",
        "site_id": "site_1",  # the webhook's: a letter it still gets
        "user_id": "user_1",
    }
    read = [0]
    asked: list[DeadLetterFilter] = []

    async def stream_dead_letters(settings: Settings, where: DeadLetterFilter, **_: Any) -> Any:
        asked.append(where)
        for n in range(1200):
            read[0] += 1
            sent_as = delivery_id(f"e{n}", "hook")
            yield {"webhook_id": "hook", "delivery_id": sent_as, "event": {**event, "id": f"e{n}"}}

    producer = SentRetries(read)
    monkeypatch.setattr(dead_letters, "stream_positioned_letters", positioned(stream_dead_letters))
    monkeypatch.setattr(dead_letters, "AIOKafkaProducer", producer)
    began = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    report = await replay_dead_letters(
        SETTINGS,
        DeadLetterFilter(webhook_id="hook", until=until),
        webhooks=current(stored("https://hooks.example/")),
        clock=began.timestamp,
    )
    made = [delivery_id(f"e{n}", "hook") for n in range(1200)]
    assert report.replayed == made and report.skipped == 0
    assert [n for n, _, _ in producer.writes] == list(range(1, 1201))
    assert {key for _, key, _ in producer.writes} == {b"hook"}
    assert [where.until for where in asked] == [until or began]
    assert asked[0].webhook_id == "hook"


def test_invalid_url_is_an_invalid_subscription() -> None:
    # Callers that catch InvalidSubscription (the CLI, the platform's services) catch it too.
    assert issubclass(InvalidUrl, InvalidSubscription)


async def test_write_takes_a_stored_unusable_url_and_put_does_not() -> None:
    # The API judges URLs itself (with the deployment's policy) and writes with ``write``.
    store = CapturingStore()
    await store.write(stored("http://xn--/"))
    with pytest.raises(InvalidUrl):
        await store.put(stored("http://xn--/"))
    assert [webhook_id for webhook_id, _ in store.sent] == ["hook"]


# ------------------------------------------------------------------ change records

NOW = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)


def test_created_record_names_the_webhook_after_its_url_and_generates_the_secret() -> None:
    record = changes.created_record(
        webhook_id="wh", url="https://h.example/x", events=("*",), now=NOW, site_id="s"
    )
    assert record["name"] == "https://h.example/x" and len(record["secret"]) == 64
    assert record["created_at"] == record["updated_at"] == "2026-01-15T10:30:00.000Z"
    assert "rate_limit" not in record and "standard_webhooks" not in record
    standard = changes.created_record(
        webhook_id="wh", url="https://h.example/x", events=["*"], now=NOW, standard=True
    )
    assert standard["secret"].startswith("whsec_") and standard["standard_webhooks"] is True


def test_updated_record_enables_clears_the_reason_and_removes_a_null_rate_limit() -> None:
    current = webhook_from_record(record(active=False, disabled_reason="gone", rate_limit=5.0))
    changed = changes.updated_record(current, {"active": True, "rate_limit": None}, NOW)
    assert changed["active"] is True and "disabled_reason" not in changed
    assert "rate_limit" not in changed
    with pytest.raises(InvalidSubscription) as caught:
        changes.updated_record(current, {"standard_webhooks": True}, NOW)
    assert caught.value.reason == "secret_not_whsec"


#: Standard Webhooks secrets (an overlap is taken of such a webhook only).
WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()
WHSEC_NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()


@pytest.mark.parametrize("overlap", [changes.MAX_OVERLAP_SECONDS + 1, 99999999 * 86400.0, -1.0])
def test_rotated_record_refuses_an_overlap_past_thirty_days(overlap: float) -> None:
    """As the API's schema does; ``rotate-secret --overlap 99999999d`` was a traceback until
    2026-12-07."""
    current = webhook_from_record(record(standard_webhooks=True, secret=WHSEC))
    with pytest.raises(InvalidSubscription) as caught:
        changes.rotated_record(current, now=NOW, overlap=overlap)
    assert caught.value.reason == "overlap_too_long"
    rotated = changes.rotated_record(current, now=NOW, overlap=changes.MAX_OVERLAP_SECONDS)
    assert rotated["previous_secret"] == current.secret


def test_rotated_record_keeps_the_previous_secret_only_with_an_overlap() -> None:
    current = webhook_from_record(
        record(disabled_reason="failing", standard_webhooks=True, secret=WHSEC)
    )
    overlapping = changes.rotated_record(current, now=NOW, secret=WHSEC_NEW, overlap=60)
    assert overlapping["previous_secret"] == WHSEC
    assert overlapping["previous_secret_expires_at"] == "2026-01-15T10:31:00.000Z"
    # Disabled by the bridge it stays, until its owner turns it on.
    assert overlapping["disabled_reason"] == "failing"
    again = changes.rotated_record(webhook_from_record(overlapping), now=NOW)
    assert "previous_secret" not in again and again["secret"] not in (WHSEC_NEW, WHSEC)


async def test_the_store_writes_no_rate_limit_below_the_lowest() -> None:
    """Its create, its update, and a Webhook a caller built and handed to put or write: until
    2026-12-07 each wrote any positive rate, and the webhook's deliveries after its first were
    dead-lettered."""
    store = CapturingStore({"hook": webhook_from_record(record())})
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: store.create(url="https://hooks.example/h", events=["*"], site_id="s",
                             rate_limit=1e-6),
        lambda: store.update("hook", rate_limit=1e-320),
        lambda: store.put(Webhook(**{**vars_of(store.stored["hook"]), "rate_limit": 1e-6})),
        lambda: store.write(Webhook(**{**vars_of(store.stored["hook"]), "rate_limit": 0.001})),
    ]  # fmt: skip
    for attempt in attempts:
        with pytest.raises(InvalidSubscription) as caught:
            await attempt()
        assert caught.value.reason == "rate_limit_too_low"
    assert store.sent == []
    await store.update("hook", rate_limit=changes.MIN_RATE_LIMIT)
    [(_, value)] = store.sent
    assert value is not None and json.loads(value)["rate_limit"] == 0.01


def vars_of(webhook: Webhook) -> dict[str, Any]:
    return {name: getattr(webhook, name) for name in Webhook.__dataclass_fields__}


async def test_the_store_refuses_an_overlap_no_header_would_carry() -> None:
    store = CapturingStore({"hook": webhook_from_record(record())})
    with pytest.raises(InvalidSubscription) as caught:
        await store.rotate_secret("hook", overlap=60)
    assert caught.value.reason == "overlap_needs_standard_webhooks" and store.sent == []
    rotated = await store.rotate_secret("hook")
    assert rotated.previous_secret is None and len(store.sent) == 1


async def test_the_store_and_the_api_build_the_same_records() -> None:
    # One implementation: what WebhookStore writes for a change is what the functions build.
    store = CapturingStore({"hook": webhook_from_record(record())})
    await store.update("hook", name="renamed", rate_limit=None)
    [(_, value)] = store.sent
    assert value is not None
    written = json.loads(value)
    built = changes.updated_record(
        store.stored["hook"], {"name": "renamed", "rate_limit": None}, NOW
    )
    assert {k: v for k, v in written.items() if k != "updated_at"} == {
        k: v for k, v in built.items() if k != "updated_at"
    }
