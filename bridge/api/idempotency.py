"""``Idempotency-Key``: a change sent again answers what the first one made, never made twice.

A client whose request ended without an answer (a timeout, a connection closed, a ``503``
while workers rebalance) cannot tell whether its change was made. Sent again with the same
``Idempotency-Key`` (as Stripe and Svix take it; draft-ietf-httpapi-idempotency-key-header),
the change is made at most once:

- a webhook's changes (create, ``PATCH``, ``rotate-secret``) record the key in the webhook's
  own record (``idempotency_keys``: one string per keyed change, the key's digest with the
  token's name, the request's digest and the ``updated_at`` the change gave, space-separated;
  ~75 characters), so whichever worker owns the webhook next knows it from the compacted
  topic; the same key again answers the webhook as it is, with ``Idempotent-Replayed: true``.
  Expired keys are dropped at the webhook's next change through the API;
- a create with a key and no ``id`` gets an id made from the key, so a repeat finds it;
- a test event with a key gets an event id made from the key and the request (so the same
  ``X-Webhook-Delivery`` id: a receiver drops the second as a duplicate);
- a recovery or redelivery with a key gets an id made from the key and its webhook (or
  delivery), and keeps the request's digest in its record.

The same key with another request (another body or route) for the same webhook is ``422``; for
another webhook it is another key. Keys are the token's own (another token's same key is
another key), honoured for :data:`KEY_LIFETIME` and among a webhook's last
:data:`MAX_KEYS_PER_WEBHOOK` keyed changes. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.api.problems import FieldError, Problem
from bridge.contract import jsoncanon
from bridge.contract.events import parse_time

__all__ = [
    "HEADER",
    "REPLAYED_HEADER",
    "KEY_LIFETIME",
    "MAX_KEY_LENGTH",
    "MAX_KEYS_PER_WEBHOOK",
    "RECORD_FIELD",
    "IdempotencyKey",
    "KeyedChange",
    "forget_expired",
    "reused",
]

HEADER = "Idempotency-Key"
#: Set (``true``) on the answer to a request whose key had been used: nothing was changed.
REPLAYED_HEADER = "Idempotent-Replayed"
#: Seconds a key is honoured after the change it made (a day, as Stripe keeps them).
KEY_LIFETIME = 86400.0
#: The longest key taken (Stripe's limit).
MAX_KEY_LENGTH = 255
#: How many keyed changes a webhook's record remembers: the oldest is forgotten first.
MAX_KEYS_PER_WEBHOOK = 10
#: The field of a webhook's record that holds its keyed changes.
RECORD_FIELD = "idempotency_keys"

#: Namespace of the ids made from keys (webhook ids, test event ids).
_NAMESPACE = uuid.UUID("8a5f2d3e-6b1c-4e0a-9d7f-2c4b6a8e0f13")


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(4, "big"))
        hasher.update(part)
    return hasher.hexdigest()[:24]  # 96 bits: kept in every keyed webhook's record


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A request's ``Idempotency-Key``, bound to the token that sent it."""

    #: What identifies the key: a digest of the token's name, its salt and the key (the key
    #: itself is never kept or logged).
    digest: str

    @classmethod
    def of(cls, header: str | None, token_name: str, salt: str = "") -> IdempotencyKey | None:
        """The key of a request's header (``None`` without one); ``400`` naming the header for
        an empty one, one longer than :data:`MAX_KEY_LENGTH`, or one with characters other
        than printable ASCII. ``salt``: the token's (:attr:`Principal.key_salt
        <bridge.api.auth.Principal.key_salt>`); without it (until 2026-12-07) the id of a
        webhook created with a key was made of the token's name and the key alone, and
        another site's token could take that id first, having its owner's create refused."""
        if header is None:
            return None
        if not 0 < len(header) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in header):
            raise Problem.invalid(
                FieldError(
                    HEADER,
                    "invalid_idempotency_key",
                    f"1 to {MAX_KEY_LENGTH} printable ASCII characters",
                    "header",
                )
            )
        parts = [token_name.encode("utf-8"), header.encode("ascii")]
        if salt:
            parts.append(salt.encode("ascii"))
        return cls(_digest(*parts))

    @classmethod
    def of_headers(
        cls, values: Sequence[str], token_name: str, salt: str = ""
    ) -> IdempotencyKey | None:
        """The key of a request whose ``Idempotency-Key`` headers are ``values`` (as
        :meth:`of`); ``400`` naming the header for two or more (which would it be made
        under?)."""
        if len(values) > 1:
            raise Problem.invalid(
                FieldError(HEADER, "repeated", "give one Idempotency-Key", "header")
            )
        return cls.of(values[0] if values else None, token_name, salt)

    def request(self, method: str, target: str, body: Mapping[str, Any]) -> KeyedChange:
        """The change this key names: ``method`` on ``target`` (the webhook's id, or the route)
        with ``body``. A ``secret`` in the body counts by its presence only: the digest is kept
        in the webhook's record, where the secret itself may be encrypted (a hash of it there
        would let a reader of the topic test guesses); the caller compares it with the
        webhook's secret instead."""
        fields = {name: value for name, value in body.items() if name != "secret"}
        given = b"secret" if "secret" in body else b""
        return KeyedChange(
            self.digest,
            _digest(method.encode(), target.encode("utf-8"), jsoncanon.dumps(fields), given),
        )

    def webhook_id(self) -> str:
        """The id of a webhook created with this key and no ``id``."""
        return f"wh_{uuid.uuid5(_NAMESPACE, 'webhook:' + self.digest).hex}"


@dataclass(frozen=True, slots=True)
class KeyedChange:
    """A change asked for with a key: the key's digest and the request's."""

    key: str
    request: str

    def operation_id(self, target: str) -> str:
        """The id of the recovery or redelivery this key starts for ``target``."""
        return str(uuid.uuid5(_NAMESPACE, f"operation:{self.key}:{target}"))

    def event_id(self) -> str:
        """The id of the test event this request sends (nothing records it: the same key with
        another request is another event, not a ``422``)."""
        return str(uuid.uuid5(_NAMESPACE, f"test:{self.key}:{self.request}"))

    def made(self, record: Mapping[str, Any], *, now: float) -> str | None:
        """The ``updated_at`` the change gave when ``record`` (a webhook's current record)
        says this key made it within :data:`KEY_LIFETIME`, else ``None``. ``422`` when the
        key made another change."""
        for key, request, at in _entries(record, now):
            if key == self.key:
                if request != self.request:
                    raise reused()
                return at
        return None

    def record(
        self, record: dict[str, Any], previous: Mapping[str, Any] | None, *, now: float
    ) -> None:
        """Note the change in ``record`` (the webhook as changed, its ``updated_at`` set),
        keeping ``previous``'s keys that have not expired, the newest
        :data:`MAX_KEYS_PER_WEBHOOK` in all."""
        kept = [] if previous is None else [" ".join(e) for e in _entries(previous, now)]
        kept.append(f"{self.key} {self.request} {record['updated_at']}")
        record[RECORD_FIELD] = kept[-MAX_KEYS_PER_WEBHOOK:]


def forget_expired(record: dict[str, Any], *, now: float) -> None:
    """Drop from ``record`` (a change made without a key) the keys expired by ``now``, and the
    field when none is left."""
    if RECORD_FIELD not in record:
        return
    kept = [" ".join(e) for e in _entries(record, now)]
    if kept:
        record[RECORD_FIELD] = kept
    else:
        del record[RECORD_FIELD]


def reused() -> Problem:
    """``422``: the key made another change than the request asks for."""
    return Problem(
        "idempotency_key_reused",
        "this Idempotency-Key was used with another request",
        errors=[FieldError(HEADER, "reused", "give a new key for a new request", "header")],
    )


def _entries(record: Mapping[str, Any], now: float) -> list[tuple[str, str, str]]:
    """The keyed changes of a record not expired by ``now``, oldest first, as (key digest,
    request digest, ``updated_at``). Anyone may write the topic: what is not such an entry is
    ignored."""
    value = record.get(RECORD_FIELD)
    if not isinstance(value, list):
        return []
    out: list[tuple[str, str, str]] = []
    for entry in value:
        parts = entry.split(" ") if isinstance(entry, str) else ()
        if len(parts) != 3:
            continue
        try:
            if now - parse_time(parts[2]).timestamp() > KEY_LIFETIME:
                continue
        except ValueError:
            continue
        out.append((parts[0], parts[1], parts[2]))
    return out
