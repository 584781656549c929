"""Managing the bridge's Kafka state: applying topics, webhook records, and publishing events.

This is the Python API that the CLI is a thin layer over, and that the platform's own services
can use. Every function takes :class:`~bridge.config.Settings` (for the broker and topic names).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bridge.config import Settings
from bridge.contract import jsoncanon, standard_webhooks
from bridge.contract.events import Event, build_event, format_timestamp
from bridge.errors import InvalidRecord, InvalidSubscription, TopicDrift
from bridge.kafka.clients import client_kwargs, keyring
from bridge.kafka.topics import Drift, TopicSpec, declared_topics, find_drift
from bridge.subscriptions.urls import WebhookUrl
from bridge.subscriptions.webhook import Webhook, parse_webhook, webhook_from_record, webhook_key

__all__ = [
    "TopicReport",
    "apply_topics",
    "new_secret",
    "WebhookStore",
    "publish_event",
    "publish_events",
]

log = logging.getLogger(__name__)

#: 32 random bytes, hex-encoded.
SECRET_BYTES = 32


def new_secret() -> str:
    """A new signing secret of 32 random bytes (64 hex characters)."""
    return secrets.token_hex(SECRET_BYTES)


@dataclass
class TopicReport:
    """What ``topics apply`` did."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)


async def apply_topics(settings: Settings, *, fail_on_drift: bool = True) -> TopicReport:
    """Create missing declared topics; report existing ones that drifted from the declaration.

    Idempotent. Raises :class:`TopicDrift` (after creating what was missing) when a topic has the
    wrong partition count or cleanup policy and ``fail_on_drift`` is set.
    """
    specs = declared_topics(settings)
    report = TopicReport()
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=s.name,
                        num_partitions=s.partitions,
                        replication_factor=settings.topic_replication_factor,
                        topic_configs=dict(s.configs),
                    )
                    for s in _unique(missing)
                ]
            )
            report.created.extend(s.name for s in _unique(missing))
        present = _unique(s for s in specs if s.name in existing)
        if present:
            report.existing.extend(s.name for s in present)
            report.drift.extend(await _drift(admin, present))
    finally:
        await admin.close()
    if report.drift and fail_on_drift:
        raise TopicDrift("; ".join(str(d) for d in report.drift))
    return report


def _unique(specs: Iterable[TopicSpec]) -> list[TopicSpec]:
    seen: dict[str, TopicSpec] = {}
    for spec in specs:
        seen.setdefault(spec.name, spec)
    return list(seen.values())


async def _drift(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> list[Drift]:
    described = await admin.describe_topics([s.name for s in specs])
    partitions = {d["topic"]: len(d["partitions"]) for d in described}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            name, entries = resource[3], resource[4]
            configs[name] = {entry[0]: entry[1] for entry in entries}
    drift: list[Drift] = []
    for spec in specs:
        drift.extend(find_drift(spec, partitions.get(spec.name, 0), configs.get(spec.name, {})))
    return drift


class WebhookStore:
    """Create, update, delete and list webhooks in the compacted subscriptions topic.

    Writes one record per request and waits for the broker's acknowledgement, so that each
    record is its own batch (the embedded broker reports end offsets exactly only then, and
    the workers' tables recover every key after a restart).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._keyring = keyring(settings)
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> WebhookStore:
        self._producer = AIOKafkaProducer(
            **client_kwargs(self._settings), acks="all", linger_ms=0, enable_idempotence=False
        )
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def put(self, webhook: Webhook) -> Webhook:
        """Write a webhook record (validated first; secrets encrypted when keys are configured).

        Raises :class:`~bridge.errors.InvalidUrl` for a URL no one could use, and
        :class:`InvalidSubscription` for any other invalid field; nothing is written then.
        """
        WebhookUrl.parse(webhook.url)
        return await self._put(webhook)

    async def _put(self, webhook: Webhook) -> Webhook:
        """Write a webhook whose URL this call does not set (rotating, disabling, changing
        other fields): a stored URL that is no longer valid does not block those."""
        record = webhook.to_record()
        webhook_from_record(record)
        if self._keyring is not None:
            aad = webhook.id.encode("utf-8")
            record["secret"] = self._keyring.encrypt(webhook.secret, aad=aad)
            if webhook.previous_secret is not None:
                record["previous_secret"] = self._keyring.encrypt(webhook.previous_secret, aad=aad)
        await self._send(webhook.id, jsoncanon.dumps(record))
        return webhook

    async def rotate_secret(
        self, webhook_id: str, *, secret: str | None = None, overlap: float = 0.0
    ) -> Webhook:
        """Give a webhook a new secret (32 random bytes unless given). With ``overlap`` seconds,
        the previous secret stays valid that long: Standard Webhooks signatures carry both."""
        current = (await self.load()).get(webhook_id)
        if current is None:
            raise InvalidSubscription("unknown_webhook", f"no webhook {webhook_id!r}")
        now = datetime.now(UTC)
        record = current.to_record()
        record.pop("disabled_reason", None)
        new = secret or (
            standard_webhooks.generate_secret() if current.standard_webhooks else new_secret()
        )
        record.update(secret=new, updated_at=format_timestamp(now))
        if overlap > 0:
            record["previous_secret"] = current.secret
            record["previous_secret_expires_at"] = format_timestamp(
                now + timedelta(seconds=overlap)
            )
        else:
            record.pop("previous_secret", None)
            record.pop("previous_secret_expires_at", None)
        return await self._put(webhook_from_record(record))

    async def create(
        self,
        *,
        url: str,
        events: Sequence[str],
        user_id: str | None = None,
        site_id: str | None = None,
        name: str | None = None,
        secret: str | None = None,
        webhook_id: str | None = None,
        active: bool = True,
        rate_limit: float | None = None,
        standard: bool = False,
        now: datetime | None = None,
    ) -> Webhook:
        """Create a webhook; a secret of 32 random bytes is generated when none is given
        (``whsec_``-prefixed base64 for webhooks that opt in to Standard Webhooks signing)."""
        stamp = format_timestamp(now or datetime.now(UTC))
        record: dict[str, Any] = {
            "id": webhook_id or f"wh_{uuid.uuid4().hex}",
            "name": name if name is not None else url,
            "url": url,
            "secret": secret or (standard_webhooks.generate_secret() if standard else new_secret()),
            "events": list(events),
            "site_id": site_id,
            "user_id": user_id,
            "active": active,
            "created_at": stamp,
            "updated_at": stamp,
        }
        if rate_limit is not None:
            record["rate_limit"] = rate_limit
        if standard:
            record["standard_webhooks"] = True
        return await self.put(webhook_from_record(record))

    async def update(self, webhook_id: str, **changes: Any) -> Webhook:
        """Change some fields of an existing webhook (``url``, ``events``, ``name``, ``secret``,
        ``site_id``, ``active``...). Raises :class:`InvalidSubscription` if it does not exist."""
        current = (await self.load()).get(webhook_id)
        if current is None:
            raise InvalidSubscription("unknown_webhook", f"no webhook {webhook_id!r}")
        record = current.to_record()
        if changes.get("active") is True:
            record.pop("disabled_reason", None)
        record.update({k: v for k, v in changes.items()})
        if changes.get("standard_webhooks") and not str(record["secret"]).startswith("whsec_"):
            # Standard Webhooks libraries read the secret as whsec_ + base64; any other secret
            # would verify nowhere. Give one with the change (or rotate first).
            raise InvalidSubscription(
                "secret_not_whsec",
                "Standard Webhooks signing needs a whsec_ secret: pass one with --secret, "
                "or create the webhook with --standard-webhooks",
            )
        if "events" in changes:
            record["events"] = list(changes["events"])
        record["updated_at"] = format_timestamp(datetime.now(UTC))
        webhook = webhook_from_record(record)
        return await (self.put(webhook) if "url" in changes else self._put(webhook))

    async def disable(self, webhook: Webhook, reason: str) -> Webhook:
        """Deactivate a webhook on the bridge's behalf, saying why (``disabled_reason``); the
        next update by its owner (``active: true``) enables it again."""
        record = webhook.to_record()
        record.update(
            active=False,
            disabled_reason=reason,
            updated_at=format_timestamp(datetime.now(UTC)),
        )
        return await self._put(webhook_from_record(record))

    async def put_status(self, record: Mapping[str, Any]) -> None:
        """Write an endpoint status record (compacted topic, keyed by webhook id)."""
        assert self._producer is not None, "use WebhookStore as an async context manager"
        await self._producer.send_and_wait(
            self._settings.status_topic,
            jsoncanon.dumps(dict(record)),
            key=str(record["webhook_id"]).encode("utf-8"),
        )

    async def delete(self, webhook_id: str) -> None:
        """Write the tombstone that deletes a webhook."""
        await self._send(webhook_id, None)

    async def _send(self, webhook_id: str, value: bytes | None) -> None:
        assert self._producer is not None, "use WebhookStore as an async context manager"
        await self._producer.send_and_wait(
            self._settings.subscriptions_topic, value, key=webhook_id.encode("utf-8")
        )

    async def load(self) -> dict[str, Webhook]:
        """Read the whole subscriptions topic; the current webhooks by id.

        Invalid records are skipped with a warning (their reason, never a value), as the
        workers skip them: one whose key names a webhook makes that webhook absent, as its
        newest record; one without a usable key (none, not UTF-8) names no webhook.
        """
        records = await read_topic(self._settings, self._settings.subscriptions_topic)
        current: dict[str, Webhook] = {}
        for key, value in records:
            webhook_id = webhook_key(key)
            try:
                webhook = parse_webhook(key, value, self._keyring)
            except InvalidSubscription as exc:
                log.warning(
                    "skipping an invalid subscription record%s: %s",
                    "" if webhook_id is None else f" of webhook {webhook_id[:200]!r}",
                    exc,
                )
                if webhook_id is not None:
                    current.pop(webhook_id, None)
                continue
            if webhook is None:  # a tombstone
                if webhook_id is not None:
                    current.pop(webhook_id, None)
            else:
                current[webhook.id] = webhook
        return current


async def read_topic(
    settings: Settings, topic: str, *, timeout: float = 30.0, settle: float = 0.3
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` from the beginning to its end.

    Reads up to the end offsets, then keeps fetching until a fetch of ``settle`` seconds returns
    nothing: the embedded broker (Tansu) reports the end of a partition whose last write was a
    batch as that batch's first offset + 1, which would otherwise drop the batch's other records.
    """
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata for every topic
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes | None, bytes | None]] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=int(timeout * 1000))
            if not batch:
                raise TimeoutError(f"no records from {topic} within {timeout}s")
            for tp, messages in batch.items():
                out.extend((m.key, m.value) for m in messages)
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=int(settle * 1000))
            if not batch:
                return out
            for messages in batch.values():
                out.extend((m.key, m.value) for m in messages)
    finally:
        await consumer.stop()


async def publish_events(
    settings: Settings, events: Iterable[Event], *, topic: str | None = None
) -> None:
    """Publish events, keyed by site id, waiting for the broker to acknowledge each batch."""
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=False)
    await producer.start()
    try:
        futures = [
            await producer.send(topic or settings.events_topic, event.to_bytes(), key=event.key)
            for event in events
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def send_test_event(
    settings: Settings,
    webhook: Webhook,
    message: str = "",
    *,
    site_id: str | None = None,
    user_id: str | None = None,
) -> Event:
    """Publish a ``test.event`` that goes to this webhook only, whatever its event filter.

    The event carries the webhook's site and account unless given: an account-scoped webhook
    needs ``site_id`` (one of the account's sites), a site-scoped one without an owner needs
    ``user_id``. Raises :class:`InvalidSubscription` when the webhook is inactive (nothing would
    be delivered) or an id is missing.
    """
    if not webhook.active:
        raise InvalidSubscription("webhook_inactive", f"webhook {webhook.id!r} is inactive")
    site = site_id or webhook.site_id
    user = user_id or webhook.user_id
    if site is None or user is None:
        raise InvalidSubscription(
            "test_event_scope", "give the site id (account-scoped webhook) or the user id"
        )
    data: dict[str, Any] = {"webhook_id": webhook.id}
    if message:
        data["message"] = message
    return await publish_event(settings, "test.event", data, site_id=site, user_id=user)


async def publish_event(
    settings: Settings,
    event_type: str,
    data: Mapping[str, Any],
    *,
    site_id: str,
    user_id: str,
    event_id: str | None = None,
) -> Event:
    """Build, validate and publish one event; returns it (with its id and timestamp)."""
    event = build_event(event_type, data, site_id=site_id, user_id=user_id, event_id=event_id)
    await publish_events(settings, [event])
    return event


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (``2024-01-15T10:30:00Z``) or a duration ago (``30m``, ``2h``, ``1d``)."""
    from bridge.delivery.retry_policy import parse_duration

    moment = now or datetime.now(UTC)
    try:
        return moment - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO-8601, or a duration ago like 2h)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters to list or replay."""

    webhook_id: str | None = None
    delivery_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.webhook_id is not None and record.get("webhook_id") != self.webhook_id:
            return False
        if self.delivery_id is not None and record.get("delivery_id") != self.delivery_id:
            return False
        stamp = record.get("dead_lettered_at")
        if (self.since or self.until) and isinstance(stamp, str):
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            if self.since is not None and at < self.since:
                return False
            if self.until is not None and at > self.until:
                return False
        return True


async def list_dead_letters(
    settings: Settings, where: DeadLetterFilter = DeadLetterFilter()
) -> list[dict[str, Any]]:
    """Dead letters matching ``where``, oldest first per partition."""
    out = []
    for _, value in await read_topic(settings, settings.deadletter_topic):
        if value is None:
            continue
        try:
            record = jsoncanon.loads(value)
        except InvalidRecord:
            continue
        if isinstance(record, dict) and where.matches(record):
            out.append(record)
    return out


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    #: Dead letters that cannot be replayed: the event itself was invalid (no webhook), or is
    #: invalid as the bridge reads events now.
    skipped: int = 0


async def replay_dead_letters(settings: Settings, where: DeadLetterFilter) -> ReplayReport:
    """Re-enqueue matching dead letters in the first retry tier, due now, with the same delivery
    id. Each replayed delivery gets the retry schedule again from its second entry; it is signed
    with the webhook's secret at that time, and dropped if the webhook is gone or inactive."""
    import time

    from bridge.contract.events import parse_event
    from bridge.delivery.pending_retry import PendingRetry

    report = ReplayReport()
    pending: list[PendingRetry] = []
    for record in await list_dead_letters(settings, where):
        if not record.get("webhook_id") or not isinstance(record.get("event"), dict):
            report.skipped += 1
            continue
        try:
            # As a worker reads it: an event it would dead-letter now is not replayed.
            event = parse_event(jsoncanon.dumps(record["event"]))
        except InvalidRecord:
            report.skipped += 1
            continue
        now = time.time()
        pending.append(
            PendingRetry(
                delivery_id=str(record["delivery_id"]),
                webhook_id=str(record["webhook_id"]),
                event=event,
                attempt=2,
                not_before=now,
                enqueued_at=now,
                history=tuple(record.get("attempts") or ()),
                replayed=True,
            )
        )
    if not pending:
        return report
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for item in pending:
            await producer.send_and_wait(
                settings.retry_topics[0], item.to_bytes(), key=item.webhook_id.encode("utf-8")
            )
            report.replayed.append(item.delivery_id)
    finally:
        await producer.stop()
    return report
