"""Subscription records for tests, as the subscriptions topic holds them."""

from __future__ import annotations

import json
from typing import Any

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
