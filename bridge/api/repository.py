"""Where the API reads and writes webhooks: the WebhookRepository protocol, versions, in memory.

A repository is storage only: read the current webhooks, write one (a record of the compacted
subscriptions topic), delete one (its tombstone). What a change means (validation, versions,
``If-Match``, idempotent creation, rotation) is :mod:`bridge.api.service`'s, the same for every
repository. Implementations:

* :class:`MemoryRepository`: a dict, for tests and for trying the API without a broker;
* :class:`bridge.api.store_repository.StoreRepository`: reads the subscriptions topic and writes
  through :class:`~bridge.subscriptions.store.WebhookStore` (what the CLI does);
* :class:`bridge.api.table_repository.TableRepository`: the worker's subscription table for
  reads (current as of each read), the same store for writes, so a request costs no topic read.

A repository's reads must see its own writes once ``put``/``delete`` returned: the service
checks versions against what ``get`` returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Protocol

from bridge.contract import jsoncanon
from bridge.subscriptions.webhook import Webhook

__all__ = [
    "SECRET_FIELDS",
    "webhook_version",
    "scan_ordered",
    "WebhookRepository",
    "MemoryRepository",
]

#: Record fields that hold secrets: never part of a version, never answered by a read.
SECRET_FIELDS = ("secret", "previous_secret")


def webhook_version(webhook: Webhook) -> str:
    """The webhook's version: 20 hex digits of the SHA-256 of its record without secrets.

    Any change of a webhook changes it (every writer sets ``updated_at``, in milliseconds),
    whoever made it (the API, the CLI, the bridge disabling an endpoint), and every
    implementation computes it alike from the record. Secrets are left out: everything else in
    the record is visible to readers, so a hash over a weak client-chosen secret would let them
    guess it offline; a rotation changes ``updated_at`` instead.
    """
    record = webhook.to_record()
    for name in SECRET_FIELDS:
        record.pop(name, None)
    return hashlib.sha256(jsoncanon.dumps(record)).hexdigest()[:20]


def scan_ordered(
    webhooks: Iterable[Webhook], *, after: str | None, limit: int, where: Callable[[Webhook], bool]
) -> list[Webhook]:
    """:meth:`WebhookRepository.scan` over ``webhooks`` given in id order."""
    out: list[Webhook] = []
    for webhook in webhooks:
        if after is not None and webhook.id <= after:
            continue
        if where(webhook):
            out.append(webhook)
            if len(out) == limit:
                break
    return out


class WebhookRepository(Protocol):
    """Storage of webhooks for the API (see the module docstring)."""

    async def get(self, webhook_id: str) -> Webhook | None:
        """The current webhook of this id, or ``None``."""
        ...

    async def scan(
        self,
        *,
        after: str | None,
        limit: int,
        where: Callable[[Webhook], bool],
        site_id: str | None = None,
        user_id: str | None = None,
    ) -> list[Webhook]:
        """Up to ``limit`` webhooks that satisfy ``where``, ordered by id, ids after ``after``;
        with ``site_id`` (``user_id``), ``where`` accepts only that site's (user's) webhooks,
        so only they need be walked."""
        ...

    async def put(self, webhook: Webhook) -> None:
        """Write a webhook record that the service validated (its URL included)."""
        ...

    async def delete(self, webhook_id: str) -> None:
        """Write the tombstone of a webhook."""
        ...


class MemoryRepository:
    """Webhooks in a dict (no broker): tests, and trying the API."""

    def __init__(self, webhooks: dict[str, Webhook] | None = None) -> None:
        self._webhooks: dict[str, Webhook] = dict(webhooks or {})

    def __repr__(self) -> str:
        return f"MemoryRepository({len(self._webhooks)} webhooks)"

    async def get(self, webhook_id: str) -> Webhook | None:
        return self._webhooks.get(webhook_id)

    async def scan(
        self,
        *,
        after: str | None,
        limit: int,
        where: Callable[[Webhook], bool],
        site_id: str | None = None,  # ``where`` accepts only that site's: a hint, not needed
        user_id: str | None = None,  # (likewise)
    ) -> list[Webhook]:
        ordered = (self._webhooks[webhook_id] for webhook_id in sorted(self._webhooks))
        return scan_ordered(ordered, after=after, limit=limit, where=where)

    async def put(self, webhook: Webhook) -> None:
        self._webhooks[webhook.id] = webhook

    async def delete(self, webhook_id: str) -> None:
        self._webhooks.pop(webhook_id, None)
