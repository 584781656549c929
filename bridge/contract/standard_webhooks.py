"""Opt-in Standard Webhooks signing (standardwebhooks.com): the three ``webhook-*`` headers.

The signed content is ``f"{msg_id}.{timestamp}.".encode() + body`` and each signature is
``v1,<base64 HMAC-SHA256>``; several secrets (a rotation overlap) give several space-separated
signatures, any one of which verifies.

Secrets come in two forms:

* ``whsec_<base64>`` — the spec's form: the key is the base64-decoded bytes, which is what the
  official verifier libraries do with the same string. The part after the prefix *must* be valid
  base64; otherwise :func:`secret_key` raises, because receivers' libraries would derive some
  other key (or fail) and every delivery would look forged.
* anything else — plain text: the key is its UTF-8 bytes. Receivers using an official library
  must pass the key as bytes (``Webhook(secret.encode())``), since a string is taken as base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence

from bridge.errors import InvalidSubscription

__all__ = [
    "HEADER_ID",
    "HEADER_TIMESTAMP",
    "HEADER_SIGNATURE",
    "SECRET_PREFIX",
    "headers",
    "sign",
    "secret_key",
    "generate_secret",
    "SECRET_BYTES",
]

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
SECRET_PREFIX = "whsec_"
#: Random bytes in a generated secret (the spec allows 24 to 64).
SECRET_BYTES = 32


def secret_key(secret: str) -> bytes:
    """The HMAC key a secret stands for (see the module docstring).

    Raises :class:`InvalidSubscription` (``secret_malformed``) for an empty key or a ``whsec_``
    secret whose remainder is not base64; call it when accepting a subscription to dead-letter
    such records early. The message never contains the secret.
    """
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSubscription(
                "secret_malformed", "a whsec_ secret must be base64 after the prefix"
            ) from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise InvalidSubscription("secret_malformed", "the signing secret is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` under ``key`` (bytes from :func:`secret_key`)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one delivery.

    ``msg_id`` should stay the same across retries of one delivery (receivers deduplicate on it);
    ``timestamp`` is the attempt's Unix time in seconds (receivers reject ones more than a few
    minutes off). One signature per secret, in the order given; ``ValueError`` when there are none.
    """
    if not secrets:
        raise ValueError("at least one secret is required")
    signatures = " ".join(sign(secret_key(secret), msg_id, timestamp, body) for secret in secrets)
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: signatures,
    }


def generate_secret() -> str:
    """A new ``whsec_`` secret: base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode("ascii")
