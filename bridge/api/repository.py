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

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from bridge.contract import jsoncanon
from bridge.redaction import url_without_userinfo
from bridge.subscriptions.freshness import Placed
from bridge.subscriptions.webhook import Webhook

__all__ = [
    "SECRET_FIELDS",
    "webhook_version",
    "WebhookFilter",
    "SCAN_YIELD_EVERY",
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
    guess it offline; a rotation changes ``updated_at`` instead. So are a URL's credentials
    (``user:password@``, in a record another producer wrote: the API shows them as ``***@``),
    which until 2026-12-06 a reader could guess against the ETag, a weak one in a few tries,
    and those of the name, hashed as the API shows it (a webhook named after such a URL: until
    2026-12-07 its password could be guessed so from the name).
    """
    record = webhook.to_record()
    for name in SECRET_FIELDS:
        record.pop(name, None)
    url = record.get("url")
    if isinstance(url, str):
        record["url"] = url_without_userinfo(url)
    record["name"] = webhook.shown_name()
    # Encoded as the record is written (a producer's own field may hold a 64-bit id).
    return hashlib.sha256(jsoncanon.dumps(record, big_integers=True)).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class WebhookFilter:
    """Which webhooks a listing returns (``None``: any)."""

    site_id: str | None = None
    user_id: str | None = None
    #: Webhooks that receive this event type (their filter names it, or ``*``).
    event_type: str | None = None
    #: ``active``, ``inactive`` or ``disabled`` (:attr:`Webhook.state
    #: <bridge.subscriptions.webhook.Webhook.state>`).
    state: str | None = None

    def matches(self, webhook: Webhook) -> bool:
        if self.site_id is not None and webhook.site_id != self.site_id:
            return False
        if self.user_id is not None and webhook.user_id != self.user_id:
            return False
        if self.event_type is not None and not webhook.wants(self.event_type):
            return False
        return self.state is None or webhook.state == self.state

    def digest(self) -> str:
        """A short digest of the filter, which a cursor carries: a cursor only continues the
        listing it came from."""
        text = json.dumps([self.site_id, self.user_id, self.event_type, self.state])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


#: A scan lets the event loop run other tasks after walking this many webhooks: a listing whose
#: filter leaves most webhooks out walks many of them (~0.8 ms per 1,000 at 100,000 webhooks,
#: measured 2026-12-04), and the deliveries of a worker in role ``all`` share its loop.
SCAN_YIELD_EVERY = 2000


async def scan_ordered(
    webhooks: Iterable[Webhook], *, after: str | None, limit: int, where: Callable[[Webhook], bool]
) -> list[Webhook]:
    """:meth:`WebhookRepository.scan` over ``webhooks`` given in id order (which must stay
    valid while the scan lets other tasks run: see :data:`SCAN_YIELD_EVERY`)."""
    out: list[Webhook] = []
    walked = 0
    for webhook in webhooks:
        walked += 1
        if walked % SCAN_YIELD_EVERY == 0:
            await asyncio.sleep(0)
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

    async def current(self) -> Callable[[str], Webhook | None]:
        """The webhooks by id, current as of the call (whatever the repository's reads
        otherwise allow), read once: for a request that judges many (a dead-letter replay),
        rather than a read each."""
        ...

    async def scan(
        self,
        *,
        after: str | None,
        limit: int,
        where: Callable[[Webhook], bool],
        within: WebhookFilter | None = None,
    ) -> list[Webhook]:
        """Up to ``limit`` webhooks that satisfy ``where``, ordered by id, ids after ``after``;
        ``where`` accepts only webhooks ``within`` matches, so only they need be walked (an
        implementation may use it to narrow its walk, or not)."""
        ...

    async def put(self, webhook: Webhook) -> Placed | None:
        """Write a webhook record that the service validated (its URL included); where the
        broker acknowledged it, when the repository's reads know when they show that
        (:class:`~bridge.subscriptions.serial.KeyedLocks`), else ``None``."""
        ...

    async def delete(self, webhook_id: str) -> Placed | None:
        """Write the tombstone of a webhook; where, as :meth:`put`."""
        ...


class MemoryRepository:
    """Webhooks in a dict (no broker): tests, and trying the API."""

    def __init__(self, webhooks: dict[str, Webhook] | None = None) -> None:
        self._webhooks: dict[str, Webhook] = dict(webhooks or {})

    def __repr__(self) -> str:
        return f"MemoryRepository({len(self._webhooks)} webhooks)"

    async def get(self, webhook_id: str) -> Webhook | None:
        return self._webhooks.get(webhook_id)

    async def current(self) -> Callable[[str], Webhook | None]:
        return self._webhooks.get

    async def scan(
        self,
        *,
        after: str | None,
        limit: int,
        where: Callable[[Webhook], bool],
        within: WebhookFilter | None = None,  # (a hint: not needed here)
    ) -> list[Webhook]:
        ordered = [self._webhooks[webhook_id] for webhook_id in sorted(self._webhooks)]
        return await scan_ordered(ordered, after=after, limit=limit, where=where)

    async def put(self, webhook: Webhook) -> None:
        self._webhooks[webhook.id] = webhook

    async def delete(self, webhook_id: str) -> None:
        self._webhooks.pop(webhook_id, None)
