"""The benchmarks' webhook secrets, and checking a delivery's signature at the receiver.

Every webhook the benchmarks make (``kit.make_hooks``, the paced scenarios, the ceilings'
bodies) has the secret :func:`webhook_secret` gives its id, so the aiohttp receiver can check
each body it is sent against the webhook the body names, knowing nothing of the scenario.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from functools import lru_cache

__all__ = ["sign", "verify", "webhook_secret"]

_KEY = b"webhook-bridge bench secrets"


@lru_cache(maxsize=65536)
def webhook_secret(webhook_id: str) -> str:
    """The signing secret of the benchmarks' webhook ``webhook_id`` (32 hex characters)."""
    return hmac.new(_KEY, webhook_id.encode(), hashlib.sha256).hexdigest()[:32]


def sign(secret: str, body: bytes) -> str:
    """``X-Webhook-Signature`` of ``body``: hex HMAC-SHA256 keyed by the secret's UTF-8 bytes."""
    return hmac.digest(secret.encode(), body, "sha256").hex()


def verify(body: bytes, signature: str | None) -> str | None:
    """Why ``body`` with this signature is not a delivery of one of the benchmarks' webhooks
    (``not_json``, ``no_webhook``, ``no_signature``, ``bad_signature``), or None when it is."""
    try:
        document = json.loads(body)
    except ValueError:
        return "not_json"
    webhook = document.get("webhook") if isinstance(document, dict) else None
    webhook_id = webhook.get("id") if isinstance(webhook, dict) else None
    if not isinstance(webhook_id, str):
        return "no_webhook"
    if not signature:
        return "no_signature"
    expected = sign(webhook_secret(webhook_id), body).encode()
    if not hmac.compare_digest(expected, signature.strip().lower().encode("utf-8", "replace")):
        return "bad_signature"
    return None
