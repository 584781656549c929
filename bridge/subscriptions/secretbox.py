"""Encrypting webhook secrets at rest in the subscriptions topic (AES-256-GCM, rotating key ids).

An encrypted secret reads ``enc:v1:<kid>:<base64url(nonce(12) + ciphertext + tag(16))>``. The
associated data is the webhook id, so a ciphertext copied into another webhook's record does not
decrypt. Values that do not start with ``enc:`` are plain secrets and pass through unchanged (a
plain secret that itself starts with ``enc:`` is therefore not possible once encryption is on).

The keyring setting lists ``kid:base64key`` pairs, comma-separated; the first key encrypts, all of
them decrypt, so rotation is: prepend a new key, re-encrypt records at leisure, drop the old key
once no record uses it (:func:`key_id` tells which key a value needs).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridge.errors import ConfigError, InvalidSubscription

__all__ = [
    "PREFIX",
    "KEY_BYTES",
    "Keyring",
    "generate_key",
    "is_encrypted",
    "key_id",
]

PREFIX = "enc:"
_VERSION = "v1"
KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REASON = "secret_undecryptable"


def _b64decode(text: str, *, urlsafe: bool) -> bytes:
    """Strict base64 (standard or URL-safe alphabet), padding optional."""
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=b"-_" if urlsafe else None, validate=True)


def is_encrypted(value: str) -> bool:
    """Whether ``value`` is an encrypted secret rather than a plain one."""
    return value.startswith(PREFIX)


def key_id(value: str) -> str | None:
    """The key id an encrypted value needs, or ``None`` for plain or unrecognisable values."""
    parts = value.split(":")
    if len(parts) == 4 and parts[0] + ":" == PREFIX and parts[1] == _VERSION:
        return parts[2]
    return None


def generate_key() -> str:
    """A new key for the keyring setting: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


class Keyring:
    """AES-256-GCM keys by id; the first one encrypts, every one decrypts."""

    __slots__ = ("_ciphers", "_primary")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigError("the secret keyring needs at least one key")
        self._ciphers: dict[str, AESGCM] = {}
        # Errors name an entry by its place, never by what it holds: a key written where its id
        # goes ("BASE64KEY:kid") would otherwise be printed as the id.
        for number, (kid, key) in enumerate(keys, start=1):
            if not _KID.fullmatch(kid):
                raise ConfigError(
                    f"secret keyring entry {number}: the key id must be 1-64 characters of "
                    "letters, digits, '_', '.', '-' (entries read kid:base64key)"
                )
            if kid in self._ciphers:
                raise ConfigError(f"secret keyring entry {number}: its key id appears twice")
            if len(key) != KEY_BYTES:
                raise ConfigError(
                    f"secret keyring entry {number}: the key is {len(key)} bytes; it must be "
                    f"{KEY_BYTES} (entries read kid:base64key)"
                )
            self._ciphers[kid] = AESGCM(key)
        self._primary = keys[0][0]

    @classmethod
    def from_setting(cls, text: str) -> Keyring:
        """Parse ``"kid1:BASE64KEY,kid2:BASE64KEY"`` (standard or URL-safe base64).

        Raises :class:`ConfigError` naming the entry at fault by its place, never what it holds.
        """
        keys: list[tuple[str, bytes]] = []
        for entry in text.split(","):
            if not entry.strip():
                continue
            number = len(keys) + 1
            kid, sep, encoded = entry.strip().partition(":")
            if not sep:
                raise ConfigError(f"secret keyring entry {number}: entries must read kid:base64key")
            try:
                key = _b64decode(encoded.strip(), urlsafe="-" in encoded or "_" in encoded)
            except (binascii.Error, ValueError):
                raise ConfigError(
                    f"secret keyring entry {number}: the key is not valid base64 "
                    "(entries read kid:base64key)"
                ) from None
            keys.append((kid.strip(), key))
        return cls(keys)

    @property
    def primary_kid(self) -> str:
        """The id of the key new values are encrypted with."""
        return self._primary

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id, the encrypting one first."""
        return tuple(self._ciphers)

    def encrypt(self, plaintext: str, *, aad: bytes) -> str:
        """Encrypt ``plaintext`` with the first key; ``aad`` is the webhook id's bytes."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self._primary].encrypt(nonce, plaintext.encode("utf-8"), aad)
        payload = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{PREFIX}{_VERSION}:{self._primary}:{payload}"

    def decrypt(self, value: str, *, aad: bytes) -> str:
        """The plain secret; plain values come back as they are.

        Raises :class:`InvalidSubscription` (``secret_undecryptable``) for a malformed value, an
        unknown key id, the wrong ``aad`` or a tampered ciphertext. Messages carry neither key nor
        plaintext.
        """
        if not is_encrypted(value):
            return value
        parts = value.split(":")
        if len(parts) != 4 or parts[1] != _VERSION:
            raise InvalidSubscription(_REASON, "encrypted secret is not in the enc:v1 format")
        kid, payload = parts[2], parts[3]
        cipher = self._ciphers.get(kid)
        if cipher is None:
            # Not the record's key id: the whole value is the secret field's, never printed.
            raise InvalidSubscription(
                _REASON,
                "secret is encrypted with a key id not in secret_keys "
                f"(configured: {', '.join(self._ciphers)})",
            )
        try:
            blob = _b64decode(payload, urlsafe=True)
        except (binascii.Error, ValueError):
            raise InvalidSubscription(_REASON, "encrypted secret is not valid base64url") from None
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise InvalidSubscription(_REASON, "encrypted secret is too short")
        try:
            plain = cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)
            return plain.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise InvalidSubscription(
                _REASON,
                f"secret does not decrypt with key {kid!r} "
                "(wrong key, record of another webhook, or tampered)",
            ) from None

    def __repr__(self) -> str:
        return f"Keyring(kids={list(self._ciphers)!r}, primary={self._primary!r})"
