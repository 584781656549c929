"""A WebhookRepository over the subscriptions topic itself, through WebhookStore (as the CLI).

Each read loads the whole topic (:meth:`WebhookStore.load`), which is what the CLI does and
costs a topic read per request: right for a management process and for tests on the real
broker, not for a worker serving many requests (docs/api.md, "Design": the table-backed
repository). Listings within ``cache_seconds`` share one load; a write through this repository
updates that view at once, so the service always sees its own writes. One webhook is always
read afresh: the service reads it so before every change, and judges ``If-Match`` and builds
the new record from it (until 2026-12-06 a view up to a second old: a change the CLI or a
worker made within it was overwritten, and an ``If-Match`` of the version before it passed).

A fresh read shares a load begun after it arrived, never one begun before (which may miss a
write acknowledged before the read began): the reads that arrive while a load runs wait for it
to end, then share one load, begun after all of them arrived. So however many reads arrive at
once, they cost at most two loads in turn (until 2026-12-07 a load each, one after the other:
10 reads of one webhook at 10,000 webhooks took 8 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

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
        self._view_number = 0
        self._loaded_at = 0.0
        self._begun = 0  # loads begun so far: the number of the last
        self._writes = 0  # writes made through this repository so far
        self._load: _Load | None = None

    def __repr__(self) -> str:
        return "StoreRepository()"

    async def _current(self, *, fresh: bool = False) -> dict[str, Webhook]:
        """The webhooks: with ``fresh``, loaded by a load begun after the call; else the view
        when it is younger than ``cache_seconds``, or likewise."""
        if (
            not fresh
            and self._view is not None
            and self._clock() - self._loaded_at < self._cache_seconds
        ):
            return self._view
        arrived = self._begun
        while True:
            load = self._load
            if load is None or load.task.done():
                load = self._begin()
            if load.number > arrived:
                return await self._share(load)
            await asyncio.wait([load.task])  # begun before this call: the next one, then

    def _begin(self) -> _Load:
        self._begun += 1
        load = _Load(self._begun, asyncio.ensure_future(self._store.load()), self._writes)
        self._load = load
        load.task.add_done_callback(lambda _: self._ended(load))
        return load

    def _ended(self, load: _Load) -> None:
        if self._load is load:
            self._load = None
        if load.task.cancelled() or load.task.exception() is not None:
            return  # the exception is its callers' (retrieved here when none is left)
        # Kept as the view unless a newer load is, or a write made through this repository
        # since it began is not in it (the view was changed with it).
        if load.number > self._view_number and load.writes == self._writes:
            self._view = load.task.result()
            self._view_number = load.number
            self._loaded_at = self._clock()

    async def _share(self, load: _Load) -> dict[str, Webhook]:
        """``load``'s webhooks, with the other callers waiting for it: cancelled when the last
        of them is (as a load of its own was with its request)."""
        load.waiting += 1
        try:
            return await asyncio.shield(load.task)
        finally:
            load.waiting -= 1
            if load.waiting == 0 and not load.task.done():
                load.task.cancel()

    def _wrote(self, webhook_id: str, webhook: Webhook | None) -> None:
        """The view changed by a write that returned, so listings see it at once."""
        self._writes += 1
        if self._view is None:
            return
        if webhook is None:
            self._view.pop(webhook_id, None)
        else:
            self._view[webhook_id] = webhook

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
        self._wrote(webhook.id, webhook)

    async def delete(self, webhook_id: str) -> None:
        await self._store.delete(webhook_id)
        self._wrote(webhook_id, None)


@dataclass(slots=True)
class _Load:
    """One load of the whole topic, shared by the reads that arrived before it began."""

    #: Its place among the repository's loads (from 1).
    number: int
    task: asyncio.Future[dict[str, Webhook]]
    #: The repository's writes when it began.
    writes: int
    #: Reads waiting for it.
    waiting: int = 0
