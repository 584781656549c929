"""A WebhookRepository over a worker's subscription table, current as of each request.

A worker already holds every webhook (its subscription index, fed by the global table over the
compacted subscriptions topic), so a read costs no topic read. What a read must not do is answer
from a table that has not yet applied a change another process wrote: each read first waits
until the table has applied everything the topic held when the read began
(:meth:`TableFreshness.wait_current <bridge.subscriptions.freshness.TableFreshness.wait_current>`:
one end-offsets request shared by every request waiting at that moment). So a change written by
any process, once its write returned, is seen by every later read of every worker, and the
service's version check (``If-Match``) compares against the newest record. A table that cannot
be shown current within ``subscription_sync_timeout`` answers ``503`` with ``Retry-After``
rather than a version that may be old.

Writes go through :class:`~bridge.subscriptions.store.WebhookStore`, one acknowledged record each,
as the CLI writes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.api.problems import Problem
from bridge.api.repository import WebhookFilter, scan_ordered
from bridge.subscriptions.freshness import Placed, TableFreshness
from bridge.subscriptions.index import SubscriptionIndex
from bridge.subscriptions.store import WebhookStore
from bridge.subscriptions.webhook import Webhook

__all__ = ["TableRepository", "require_current"]


async def require_current(freshness: TableFreshness, now: float, table: str) -> None:
    """Wait until the table ``freshness`` watches is current as of ``now`` (its clock's
    seconds); ``503 unavailable`` with ``Retry-After`` when it cannot be shown current."""
    if not await freshness.wait_current(now):
        raise Problem(
            "unavailable",
            f"the {table} table could not be shown current; try again",
            headers={"Retry-After": "1"},
        )


class TableRepository:
    """Reads ``index`` once ``freshness`` shows it current; writes with ``store``.

    ``clock`` must be the clock ``freshness`` was built with (monotonic seconds). With
    ``current=False`` reads answer from the table as it is (it trails the topic by the time a
    record takes to reach the worker): for the delivery-log and stats routes, which only check
    that a webhook exists and whose attempts trail the deliveries anyway, so that they do not
    cost an end-offsets request each (on the embedded broker that request takes longer the more
    records the subscriptions topic holds: ~100 ms at 100,000 webhooks, BENCHMARKS.md). Until
    the table was current once (:attr:`TableFreshness.ever_current`: while a starting worker
    still reads the topic) those reads wait for it too, or answer ``503``: a webhook not read
    yet is not a ``404``."""

    def __init__(
        self,
        index: SubscriptionIndex,
        freshness: TableFreshness,
        store: WebhookStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        current: bool = True,
    ) -> None:
        self._index = index
        self._freshness = freshness
        self._store = store
        self._clock = clock
        self._wait = current

    def __repr__(self) -> str:
        return f"TableRepository({len(self._index)} webhooks)"

    async def _current(self) -> SubscriptionIndex:
        if self._wait or not self._freshness.ever_current:
            await require_current(self._freshness, self._clock(), "webhooks")
        return self._index

    async def get(self, webhook_id: str) -> Webhook | None:
        return (await self._current()).get(webhook_id)

    async def current(self) -> Callable[[str], Webhook | None]:
        # Current even with ``current=False``: a replay judges a letter by the webhook as the
        # worker will find it when the retry is due, after any change made before the replay
        # (one turned on, then its letters replayed).
        await require_current(self._freshness, self._clock(), "webhooks")
        return self._index.get

    async def scan(
        self,
        *,
        after: str | None,
        limit: int,
        where: Callable[[Webhook], bool],
        within: WebhookFilter | None = None,
    ) -> list[Webhook]:
        index = await self._current()
        await index.prepare_listing()
        if within is None:
            ordered = index.ordered(after=after)
        else:
            ordered = index.ordered(
                after=after,
                site_id=within.site_id,
                user_id=within.user_id,
                state=within.state,
                event_type=within.event_type,
            )
        return await scan_ordered(ordered, after=after, limit=limit, where=where)

    async def put(self, webhook: Webhook) -> Placed | None:
        # The service judged the URL when it set it (as for StoreRepository.put). The next read
        # waits until the table applied this record: it was in the topic before that read began.
        await self._store.write(webhook)
        return self._store.placed(webhook.id)

    async def delete(self, webhook_id: str) -> Placed | None:
        await self._store.delete(webhook_id)
        return self._store.placed(webhook_id)
