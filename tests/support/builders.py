"""Subscription records for tests, as the subscriptions topic holds them."""

from __future__ import annotations

import json
from typing import Any

from bridge.contract import jsoncanon
from bridge.subscriptions.webhook import Webhook, parse_webhook

#: The secret of :func:`webhook_record` unless a test gives its own.
SECRET = "s3cret-value"


def webhook_record(**changes: Any) -> dict[str, Any]:
    """A valid subscription record (a site-scoped webhook for every event type); ``changes``
    replace or add fields."""
    value: dict[str, Any] = {
        "id": "hook",
        "name": "My Webhook",
        "url": "https://hooks.example/webhook",
        "secret": SECRET,
        "events": ["*"],
        "site_id": "site_1",
        "user_id": "user_1",
        "active": True,
    }
    value.update(changes)
    return value


def encode(value: Any) -> bytes:
    """A record value as bytes on the topic."""
    return json.dumps(value).encode("utf-8")


def foreign_webhook(url: str, name: str = "n") -> Webhook:
    """A webhook as another producer (or an older bridge) may have written it: the table keeps
    it (URLs are not judged on load), and deliveries to it are dead-lettered invalid_url."""
    record = {
        "id": "wh_1",
        "name": name,
        "url": url,
        "secret": "s" * 32,
        "events": ["*"],
        "site_id": "s1",
        "user_id": None,
        "active": True,
    }
    webhook = parse_webhook(b"wh_1", jsoncanon.dumps(record))
    assert webhook is not None
    return webhook
