"""Delivery payloads: the documented body shape and the deterministic delivery id."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from functools import lru_cache

from bridge.contract import jsoncanon
from bridge.contract.events import Event
from bridge.errors import InvalidEvent
from bridge.subscriptions.webhook import Webhook, name_as_shown

__all__ = ["DELIVERY_NAMESPACE", "delivery_id", "EncodedEvent", "build_body"]

#: Namespace of the UUIDv5 delivery ids. Changing it changes every delivery id: never do that.
DELIVERY_NAMESPACE = uuid.UUID("6f1c1f4e-2b7a-5d0e-9c51-7e0b1e8f3a42")


def delivery_id(event_id: str, webhook_id: str) -> str:
    """The ``X-Webhook-Delivery`` id of ``event_id`` delivered to ``webhook_id``.

    A UUIDv5 of both ids, so every redelivery (retry, crash, rebalance, replay) of the same event
    to the same webhook carries the same id and receivers can deduplicate on it.
    """
    # The NUL separator keeps ("a:b", "c") and ("a", "b:c") apart; the schemas forbid NUL in
    # event and webhook ids, so it cannot occur inside either.
    # This is uuid.uuid5(DELIVERY_NAMESPACE, name) without building UUID objects (a property
    # test compares the two): SHA-1 of namespace and name, version 5, RFC 4122 variant.
    name = f"{event_id}\x00{webhook_id}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMESPACE_BYTES = DELIVERY_NAMESPACE.bytes


@dataclass(frozen=True)
class EncodedEvent:
    """An event with its ``event`` object encoded once, shared by all of its deliveries."""

    event: Event
    #: ``{"type":…,"data":…,"timestamp":…,"site_id":…,"user_id":…}`` as JavaScript would print it.
    encoded: bytes

    @classmethod
    def of(cls, event: Event) -> EncodedEvent:
        # No key here is an array index, so JavaScript keeps this order and the pieces can be
        # joined; ``data`` was encoded once already, when the event was validated.
        dumps = jsoncanon.dumps_str
        data = event.data_json or jsoncanon.dumps(event.data)
        return cls(
            event,
            b"".join(
                (
                    b'{"type":',
                    dumps(event.type),
                    b',"data":',
                    data,
                    b',"timestamp":',
                    dumps(event.timestamp),
                    b',"site_id":',
                    dumps(event.site_id),
                    b',"user_id":',
                    dumps(event.user_id),
                    b"}",
                )
            ),
        )


def build_body(
    encoded: EncodedEvent,
    webhook: Webhook,
    *,
    max_bytes: int | None = None,
    delivery: str | None = None,
) -> bytes:
    """The delivery body: ``{"id": <delivery id>, "event": {...}, "webhook": {"id", "name"}}``,
    the name as the API shows it (:func:`~bridge.subscriptions.webhook.name_as_shown`).

    Byte-identical to ``JSON.stringify(JSON.parse(body))``, so the documentation's Node.js
    receiver, which signs its re-serialization, verifies it. Raises
    :class:`InvalidEvent` (``payload_too_large``) when longer than ``max_bytes``.
    ``delivery`` is the delivery id when the caller has it already.
    """
    # None of the top-level keys is an array index, so JavaScript keeps them in this order and
    # the pieces can be joined without re-encoding the event for every webhook.
    body = b"".join(
        (
            b'{"id":',
            # A UUID: ASCII hex digits and dashes, nothing to escape.
            b'"%s"' % (delivery or delivery_id(encoded.event.id, webhook.id)).encode(),
            b',"event":',
            encoded.encoded,
            b',"webhook":',
            _webhook_json(webhook.id, webhook.name),
            b"}",
        )
    )
    if max_bytes is not None and len(body) > max_bytes:
        raise InvalidEvent(
            "payload_too_large", f"delivery body is {len(body)} bytes, limit {max_bytes}"
        )
    return body


@lru_cache(maxsize=100_000)
def _webhook_json(webhook_id: str, name: str) -> bytes:
    """``{"id":…,"name":…}`` of a webhook, encoded once per id and name (so the name's
    redaction costs nothing per delivery)."""
    return jsoncanon.dumps({"id": webhook_id, "name": name_as_shown(name)})
