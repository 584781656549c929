"""Signing delivery bodies: lower-case hex HMAC-SHA256 of the exact body bytes."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["sign", "verify"]


def sign(secret: str, body: bytes) -> str:
    """The ``X-Webhook-Signature`` value for ``body`` (the secret is used as its UTF-8 bytes)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Check a signature in constant time, as receivers should. Never raises for bad input."""
    given = signature.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(sign(secret, body).encode("ascii"), given)
