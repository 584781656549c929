"""Publishing events: any valid event, and a ``test.event`` aimed at one webhook."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from bridge.config import Settings
from bridge.contract.events import Event, build_event
from bridge.errors import InvalidSubscription
from bridge.kafka.clients import client_kwargs, require_topics, started, stopped
from bridge.subscriptions.webhook import Webhook

__all__ = [
    "MAX_TEST_MESSAGE",
    "publish_events",
    "send_test_event",
    "publish_event",
    "scope_of_test_event",
]

#: The longest ``message`` of a ``test.event`` (characters), through the API and the CLI.
MAX_TEST_MESSAGE = 1000


async def publish_events(
    settings: Settings, events: Iterable[Event], *, topic: str | None = None
) -> None:
    """Publish events, keyed by site id, waiting for the broker to acknowledge each batch."""
    producer = await started(
        AIOKafkaProducer(**client_kwargs(settings), acks="all", enable_idempotence=False)
    )
    try:
        await require_topics(producer, [topic or settings.events_topic])
        futures = [
            await producer.send(topic or settings.events_topic, event.to_bytes(), key=event.key)
            for event in events
        ]
        for future in futures:
            await future
    finally:
        await stopped(producer)


async def send_test_event(
    settings: Settings,
    webhook: Webhook,
    message: str = "",
    *,
    site_id: str | None = None,
    user_id: str | None = None,
    event_id: str | None = None,
) -> Event:
    """Publish a ``test.event`` that goes to this webhook only, whatever its event filter
    (under ``event_id`` when given: the same id again is the same event, delivered with the
    same delivery id).

    The event carries the webhook's site and account unless given: an account-scoped webhook
    needs ``site_id`` (one of the account's sites), a site-scoped one without an owner needs
    ``user_id``. Raises :class:`InvalidSubscription` when the webhook is inactive (nothing would
    be delivered) or an id is missing.
    """
    if not webhook.active:
        raise InvalidSubscription("webhook_inactive", f"webhook {webhook.id!r} is inactive")
    site, user = scope_of_test_event(webhook, site_id, user_id)
    data: dict[str, Any] = {"webhook_id": webhook.id}
    if message:
        data["message"] = message
    return await publish_event(
        settings, "test.event", data, site_id=site, user_id=user, event_id=event_id
    )


def scope_of_test_event(
    webhook: Webhook, site_id: str | None, user_id: str | None
) -> tuple[str, str]:
    """The site and account of a test event for ``webhook``: its own, or those given where it
    has none (the site of an account-scoped webhook, the account of a site's webhook without
    an owner). :class:`InvalidSubscription` for a missing one (``test_event_scope``), and for
    one given that the webhook would not get the event of (``test_event_site``: another site
    than a site's webhook's; ``test_event_user``: another account than its owner's): until
    2026-12-06 such an event was published and answered 202, and never delivered, or delivered
    to a site's webhook as another site's."""
    if site_id is not None and webhook.site_id is not None and site_id != webhook.site_id:
        raise InvalidSubscription(
            "test_event_site", "a site's webhook gets test events of its own site only"
        )
    if user_id is not None and webhook.user_id is not None and user_id != webhook.user_id:
        raise InvalidSubscription(
            "test_event_user", "the webhook gets test events of its owner's account only"
        )
    site = site_id or webhook.site_id
    user = user_id or webhook.user_id
    if site is None or user is None:
        raise InvalidSubscription(
            "test_event_scope", "give the site id (account-scoped webhook) or the user id"
        )
    return site, user


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
