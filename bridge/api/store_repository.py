"""A WebhookRepository over the subscriptions topic itself, through WebhookStore (as the CLI).

Each read loads the whole topic (:meth:`WebhookStore.load`), which is what the CLI does and
costs a topic read per request: right for a management process and for tests on the real
broker, not for a worker serving many requests (docs/api.md, "Design": the table-backed
repository). Listings within ``cache_seconds`` share one load; a write through this repository
updates that view at once, so the service always sees its own writes. One webhook is always
read afresh: the service reads it so before every change, and judges ``If-Match`` and builds
the new record from it (until 2026-12-06 a view up to a second old: a change the CLI or a
worker made within it was overwritten, and an ``If-Match`` of the version before it passed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge.api.repository import WebhookFilter, scan_ordered
from bridge.subscriptions.store import WebhookStore
from bridge.subscriptions.webhook import Webhook

__all__ = ["StoreRepository"]


class StoreRepository:
    """Reads with :meth:`WebhookStore.load`, writes with ``write`` and ``delete``.

    ``store`` must be entered (``async with WebhookStore(settings) as store``) for as long as
    the repository is used. ``clock`` is a monotonic clock in seconds.
    """

    def __init__(
        self,
        store: WebhookStore,
        *,
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._view: dict[str, Webhook] | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "StoreRepository()"

    async def _current(self, *, fresh: bool = False) -> dict[str, Webhook]:
        async with self._lock:
            if (
                fresh
                or self._view is None
                or self._clock() - self._loaded_at >= self._cache_seconds
            ):
                self._view = await self._store.load()
                self._loaded_at = self._clock()
            return self._view

    async def get(self, webhook_id: str) -> Webhook | None:
        return (await self._current(fresh=True)).get(webhook_id)

    async def current(self) -> Callable[[str], Webhook | None]:
        return (await self._current(fresh=True)).get

    async def scan(
        self,
        *,
        after: str | None,
        limit: int,
        where: Callable[[Webhook], bool],
        within: WebhookFilter | None = None,  # (a hint: not needed here)
    ) -> list[Webhook]:
        view = await self._current()
        ordered = [view[webhook_id] for webhook_id in sorted(view)]
        return await scan_ordered(ordered, after=after, limit=limit, where=where)

    async def put(self, webhook: Webhook) -> None:
        # The service judged the URL when it set it (with the deployment's policy); a rotation
        # or a rename of a webhook whose stored URL is no longer valid must still be written.
        await self._store.write(webhook)
        (await self._current())[webhook.id] = webhook

    async def delete(self, webhook_id: str) -> None:
        await self._store.delete(webhook_id)
        (await self._current()).pop(webhook_id, None)
