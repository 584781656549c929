"""Webhook subscriptions in their compacted topic: create, update, rotate, disable, delete, load."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.errors import InvalidSubscription
from bridge.kafka.clients import client_kwargs, keyring, require_topics, started, stopped
from bridge.kafka.reading import read_topic
from bridge.memo import put_newest
from bridge.subscriptions.changes import (
    SECRET_BYTES,
    check_rate_limit,
    created_record,
    disabled_record,
    new_secret,
    rotated_record,
    updated_record,
)
from bridge.subscriptions.freshness import Placed
from bridge.subscriptions.urls import WebhookUrl
from bridge.subscriptions.webhook import Webhook, parse_webhook, webhook_from_record, webhook_key

# SECRET_BYTES and new_secret live in bridge.subscriptions.changes; named here for callers of old.
__all__ = ["MAX_PLACED_KEPT", "SECRET_BYTES", "new_secret", "WebhookStore"]


log = logging.getLogger(__name__)

#: Webhooks whose newest write :meth:`WebhookStore.placed` remembers (the oldest forgotten
#: first): it is read right after the write, under the webhook's lock.
MAX_PLACED_KEPT = 10_000


class WebhookStore:
    """Create, update, delete and list webhooks in the compacted subscriptions topic.

    Writes each record in a batch of its own (``max_batch_size=1``: a worker's API writes
    for many requests at once through one store), so that the embedded broker reports end
    offsets exactly (it reports a partition's end as its last batch's first offset + 1), the
    freshness barrier waits for every write, and the workers' tables recover every key after
    a restart.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._keyring = keyring(settings)
        self._producer: AIOKafkaProducer | None = None
        #: Where the newest record this store wrote of each webhook was acknowledged.
        self._placed: dict[str, Placed] = {}

    def placed(self, webhook_id: str) -> Placed | None:
        """Where the broker acknowledged the newest record (a tombstone included) this store
        wrote of ``webhook_id``: the highest offset, a key's records sharing a partition. A
        writer holding the webhook's lock reads it right after its write, to know when a table
        has applied that write (:meth:`bridge.subscriptions.serial.KeyedLocks.wrote`)."""
        return self._placed.get(webhook_id)

    async def __aenter__(self) -> WebhookStore:
        self._producer = await started(
            AIOKafkaProducer(
                **client_kwargs(self._settings),
                acks="all",
                linger_ms=0,
                max_batch_size=1,  # one record per batch, however many requests write at once
                enable_idempotence=False,
            )
        )
        try:
            await require_topics(self._producer, [self._settings.subscriptions_topic])
        except BaseException:
            producer, self._producer = self._producer, None
            await stopped(producer)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await stopped(producer)

    async def put(self, webhook: Webhook) -> Webhook:
        """Write a webhook record (validated first; secrets encrypted when keys are configured).

        Raises :class:`~bridge.errors.InvalidUrl` for a URL no one could use, and
        :class:`InvalidSubscription` for any other invalid field; nothing is written then.
        """
        WebhookUrl.parse(webhook.url, remember=False)  # judged here; remembered where sent
        return await self.write(webhook)

    async def write(self, webhook: Webhook) -> Webhook:
        """Write a webhook record without judging its URL again, as :meth:`put` does otherwise:
        for changes that do not set the URL (rotating, disabling, renaming), so that a stored
        URL that is no longer valid does not block them, and for callers that judged the URL
        themselves (the API, with the deployment's policy)."""
        record = webhook.to_record()
        webhook_from_record(record)
        # A Webhook built by a caller with a lower rate_limit (one read is at least the floor).
        check_rate_limit(webhook.rate_limit)
        if self._keyring is not None:
            aad = webhook.id.encode("utf-8")
            record["secret"] = self._keyring.encrypt(webhook.secret, aad=aad)
            if webhook.previous_secret is not None:
                record["previous_secret"] = self._keyring.encrypt(webhook.previous_secret, aad=aad)
        # Integers beyond 2^53 in a producer's own field (a 64-bit id) are written back as
        # read: the record is the bridge's state, read by no JavaScript.
        await self._send(webhook.id, jsoncanon.dumps(record, big_integers=True))
        return webhook

    async def rotate_secret(
        self, webhook_id: str, *, secret: str | None = None, overlap: float = 0.0
    ) -> Webhook:
        """Give a webhook a new secret (32 random bytes unless given). With ``overlap`` seconds,
        the previous secret stays valid that long: Standard Webhooks signatures carry both.
        :class:`InvalidSubscription` (``overlap_needs_standard_webhooks``) for an overlap of a
        webhook without Standard Webhooks headers, which no header would carry."""
        current = (await self.load()).get(webhook_id)
        if current is None:
            raise InvalidSubscription("unknown_webhook", f"no webhook {webhook_id!r}")
        record = rotated_record(current, now=datetime.now(UTC), secret=secret, overlap=overlap)
        return await self.write(webhook_from_record(record))

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
        (``whsec_``-prefixed base64 for webhooks that opt in to Standard Webhooks signing).

        Raises :class:`InvalidSubscription` (``exists``) for a ``webhook_id`` a webhook has:
        until 2026-12-07 it was replaced, secret and all, as the API refuses to (409). (Read
        before the write: a create of the same id by the API in between is not seen.)"""
        if webhook_id is not None and webhook_id in await self.load(reveal=False):
            raise InvalidSubscription(
                "exists", f"a webhook {webhook_id!r} exists: update it, or delete it first"
            )
        record = created_record(
            webhook_id=webhook_id or f"wh_{uuid.uuid4().hex}",
            url=url,
            events=events,
            now=now or datetime.now(UTC),
            site_id=site_id,
            user_id=user_id,
            name=name,
            secret=secret,
            active=active,
            rate_limit=rate_limit,
            standard=standard,
        )
        return await self.put(webhook_from_record(record))

    async def update(self, webhook_id: str, **changes: Any) -> Webhook:
        """Change some fields of an existing webhook (``url``, ``events``, ``name``, ``secret``,
        ``site_id``, ``active``...). Raises :class:`InvalidSubscription` if it does not exist."""
        current = (await self.load()).get(webhook_id)
        if current is None:
            raise InvalidSubscription("unknown_webhook", f"no webhook {webhook_id!r}")
        webhook = webhook_from_record(updated_record(current, changes, datetime.now(UTC)))
        return await (self.put(webhook) if "url" in changes else self.write(webhook))

    async def disable(self, webhook: Webhook, reason: str) -> Webhook:
        """Deactivate a webhook on the bridge's behalf, saying why (``disabled_reason``); the
        next update by its owner (``active: true``) enables it again."""
        return await self.write(
            webhook_from_record(disabled_record(webhook, reason, datetime.now(UTC)))
        )

    async def put_status(self, record: Mapping[str, Any]) -> None:
        """Write an endpoint status record (compacted topic, keyed by webhook id)."""
        assert self._producer is not None, "use WebhookStore as an async context manager"
        await self._producer.send_and_wait(
            self._settings.status_topic,
            jsoncanon.dumps(dict(record)),
            key=str(record["webhook_id"]).encode("utf-8"),
        )

    async def delete(self, webhook_id: str) -> None:
        """Write the tombstone that deletes a webhook, then its endpoint status's (until
        2026-12-06 a deleted webhook's status stayed on the compacted topic, and in every
        worker's memory, for ever: a client making, failing and deleting webhooks grew them
        all)."""
        await self._send(webhook_id, None)
        await self.delete_status(webhook_id)

    async def delete_status(self, webhook_id: str) -> None:
        """Write the tombstone of a webhook's endpoint status."""
        assert self._producer is not None, "use WebhookStore as an async context manager"
        await self._producer.send_and_wait(
            self._settings.status_topic, None, key=webhook_id.encode("utf-8")
        )

    async def _send(self, webhook_id: str, value: bytes | None) -> None:
        assert self._producer is not None, "use WebhookStore as an async context manager"
        sent = await self._producer.send_and_wait(
            self._settings.subscriptions_topic, value, key=webhook_id.encode("utf-8")
        )
        placed = Placed(sent.partition, sent.offset)
        known = self._placed.get(webhook_id)
        if known is None or known.partition != placed.partition or known.offset < placed.offset:
            put_newest(self._placed, webhook_id, placed, MAX_PLACED_KEPT)

    async def load(self, *, reveal: bool = True) -> dict[str, Webhook]:
        """Read the whole subscriptions topic; the current webhooks by id.

        Invalid records are skipped with a warning (their reason, never a value), as the
        workers skip them: one whose key names a webhook makes that webhook absent, as its
        newest record; one without a usable key (none, not UTF-8) names no webhook. With
        ``reveal`` false the secrets are left as stored (:func:`parse_webhook`): webhooks to
        judge, read without the workers' ``secret_keys``.
        """
        records = await read_topic(self._settings, self._settings.subscriptions_topic)
        current: dict[str, Webhook] = {}
        for key, value in records:
            webhook_id = webhook_key(key)
            try:
                webhook = parse_webhook(key, value, self._keyring, reveal=reveal)
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
