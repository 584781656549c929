"""The bridge's disables of webhooks, written by each webhook's owner.

A worker that decides to disable a webhook (its endpoint answered ``410``, or failed for longer
than ``disable_after``) publishes a ``disabled`` status record (``topics/schemas/status.json``)
naming the version of the webhook its delivery was made for (``webhook_updated_at``). The
webhook's record is then written by one worker: the owner of its attempts partition, the worker
that makes the API's changes of it (docs/api.md, "Concurrent changes"). The owner turns the
webhook off under the same lock per id as the API's changes, with its subscription table current
as of holding the lock (a change the API answered before is read), and only if the webhook is
still the one the delivery was made for (:func:`disable_verdict`):

- a change answered ``200`` is never written over by a disable read before it (the deciding
  worker's table trails the topic; it used to write the record it held);
- a webhook deleted meanwhile is not brought back as a disabled one;
- a webhook that took a deleted one's id is not turned off for the deleted one's endpoint;
- a webhook changed since the delivery (or another webhook of its id) stays on, and its health
  starts afresh (a ``healthy`` status record): its next deliveries decide again.

A disable turned off (or found off) is marked applied (``applied_at``) and never applied again,
so a webhook turned on afterwards stays on; the status of a webhook that no longer exists is
deleted (a delivery in flight at its delete, or a producer's delete, left it).

Workers without ``delivery_log`` have no owners: the deciding worker writes the disable itself,
with the same checks against its own table (:meth:`bridge.kafka.outputs.KafkaOutputs.disable`),
and marks it applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from bridge.config import Settings
from bridge.contract.events import format_timestamp
from bridge.delivery.endpoint_health import HealthChange
from bridge.metrics import Metrics
from bridge.subscriptions.freshness import TableFreshness
from bridge.subscriptions.serial import KeyedLocks, NotWritable, to_the_end
from bridge.subscriptions.store import WebhookStore
from bridge.subscriptions.webhook import Webhook, before_created

__all__ = [
    "DISABLE_REASONS",
    "VERDICTS",
    "RETRY_AFTER",
    "ROUND_IN_FLIGHT",
    "disable_verdict",
    "DisableWriter",
]

log = logging.getLogger(__name__)

#: The ``disabled_reason`` a status record may give; another is written as ``failing``.
DISABLE_REASONS = frozenset({"gone", "failing"})

#: What :func:`disable_verdict` says of a ``disabled`` status record, as counted.
VERDICTS = ("written", "deleted", "inactive", "other_webhook", "changed")

#: Seconds before the owner tries again when its table could not be shown current.
RETRY_AFTER = 1.0
#: Webhooks judged at once in a round (each under its lock, their freshness waits shared).
ROUND_IN_FLIGHT = 64


def disable_verdict(current: Webhook | None, status: Mapping[str, Any] | None) -> str | None:
    """What to do with a webhook's newest status record: ``None`` when it is no disable, or
    one applied already; ``written`` to turn ``current`` off; else why not (:data:`VERDICTS`)."""
    if not _is_disable(status):
        return None
    assert status is not None
    if current is None:
        return "deleted"
    if not current.active:
        return "inactive"  # turned off already: by this disable, or by its owner
    made_for = status.get("webhook_created_at")
    if isinstance(made_for, str) and current.created_at is not None:
        if made_for != current.created_at:
            return "other_webhook"  # the deleted webhook's delivery; its id was taken since
    elif before_created(status.get("failing_since"), current.created_at):
        return "other_webhook"  # a record without it: failing since before this one was made
    version = status.get("webhook_updated_at")
    if isinstance(version, str):
        if version != current.updated_at:
            return "changed"
    elif "applied_at" not in status:
        # Written before 2026-12-06 and naming no version: applied by the deciding worker
        # (before 2026-12-04) or by an owner that did not mark it, or not yet, which cannot
        # be told apart. Left on: a webhook on now was turned on since, perhaps by a
        # producer's record without updated_at, and its next failures decide again.
        return "changed"
    elif current.updated_at is not None:
        return "changed"  # made for a version without updated_at; every change sets one
    return "written"


def _is_disable(status: Mapping[str, Any] | None) -> bool:
    """A ``disabled`` status record not applied yet: once its webhook's owner turned the
    webhook off (or found it off), it marks the record ``applied_at``, and a webhook
    turned on again afterwards (by a producer's record without ``updated_at``, which cannot be
    told from the version the decision was made for) is not turned off again at the next
    rebalance (until 2026-12-06 it was)."""
    return (
        status is not None
        and status.get("state") == "disabled"
        and not isinstance(status.get("applied_at"), str)
    )


class DisableWriter:
    """Writes the disables of the webhooks this worker owns (module docstring).

    :meth:`offer` names a webhook whose status changed, that was deleted, or whose partition
    this worker now owns;
    offered webhooks are handled in rounds, each webhook under its lock with the table current
    as of holding it (concurrent freshness waits share their requests). ``owns`` says whether
    this worker owns a webhook now."""

    def __init__(
        self,
        settings: Settings,
        *,
        index_get: Callable[[str], Webhook | None],
        statuses: Mapping[str, Mapping[str, Any]],
        freshness: TableFreshness,
        locks: KeyedLocks,
        owns: Callable[[str], bool],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._index_get = index_get
        self._statuses = statuses
        self._freshness = freshness
        self._locks = locks
        self._owns = owns
        self._metrics = metrics
        self._clock = clock
        self._pending: set[str] = set()
        #: The status record (its ``updated_at``) last judged per webhook: a rebalance offers
        #: every disable again, and one judged already is not judged (and counted) twice.
        self._judged: dict[str, object] = {}
        self._task: asyncio.Task[None] | None = None
        self._store: WebhookStore | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"DisableWriter({len(self._pending)} pending)"

    def offer(self, webhook_ids: Iterable[str]) -> None:
        """Look at these webhooks' status records soon (a disable among them is written if this
        worker owns its webhook then, and the status of a webhook that no longer exists is
        deleted); called with every webhook whose status changed, and each deleted."""
        if self._closed:
            return
        for webhook_id in webhook_ids:
            status = self._statuses.get(webhook_id)
            if _is_disable(status) or (status is not None and self._index_get(webhook_id) is None):
                self._pending.add(webhook_id)
            else:
                # Applied, replaced or deleted: nothing to remember of it.
                self._judged.pop(webhook_id, None)
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    def offer_owned(self, owned: Callable[[str], bool]) -> None:
        """After a rebalance: every disable whose webhook ``owned`` says is this worker's now
        (one a former owner had not written yet is written here)."""
        self.offer([webhook_id for webhook_id in self._statuses if owned(webhook_id)])

    async def _run(self) -> None:
        while self._pending and not self._closed:
            batch, self._pending = self._pending, set()
            try:
                await self._round(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or the broker: logged, and tried again
                log.exception("writing the bridge's disables failed; trying again")
                self._later(batch)
                return

    def _later(self, webhook_ids: set[str]) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(RETRY_AFTER, self.offer, webhook_ids)

    async def _round(self, batch: set[str]) -> None:
        mine = [webhook_id for webhook_id in sorted(batch) if self._owns(webhook_id)]
        if not mine:
            return
        slots = asyncio.Semaphore(ROUND_IN_FLIGHT)

        async def one(webhook_id: str) -> None:
            async with slots, self._locks.hold(webhook_id):
                # Current as of holding the lock: a change the API made before it (answered
                # 200) is in the table read below. Concurrent waits share one request.
                if not await self._freshness.wait_current(self._clock()):
                    self._later({webhook_id})
                elif self._owns(webhook_id):  # still: a rebalance may have moved it
                    await self._one(webhook_id)

        await asyncio.gather(*(one(webhook_id) for webhook_id in mine))

    async def _read(self, webhook_id: str) -> Webhook | None:
        return self._index_get(webhook_id)

    async def _one(self, webhook_id: str) -> None:
        shown, current = await self._locks.read_as_written(
            webhook_id, lambda: self._read(webhook_id)
        )
        if not shown:
            self._later({webhook_id})  # the table does not show this worker's last write yet
            return
        status = self._statuses.get(webhook_id)
        verdict = disable_verdict(current, status)
        if status is not None and current is None:
            # Any status of a webhook that is gone (a delivery in flight at its delete
            # published it after the delete's tombstone; a producer's delete left it): every
            # worker kept it for ever (until 2026-12-06).
            verdict = "deleted"
        if verdict is None or status is None:
            return
        if self._judged.get(webhook_id) == status.get("updated_at"):
            return
        store = await self._opened()
        try:
            # Only while this worker owns it still: one that gave its partitions up since
            # writes nothing (the next owner looks at every disable at its assignment).
            async with self._locks.writing(webhook_id):
                await self._write(store, webhook_id, verdict, current, status)
        except NotWritable:
            return
        self._judged[webhook_id] = status.get("updated_at")
        if _is_disable(status):
            self._metrics.disable_writes.labels(verdict).inc()

    async def _write(
        self,
        store: WebhookStore,
        webhook_id: str,
        verdict: str,
        current: Webhook | None,
        status: Mapping[str, Any],
    ) -> None:
        if verdict == "written":
            assert current is not None
            reason = status.get("reason")
            why = reason if reason in DISABLE_REASONS else "failing"
            # To its end even if this worker stops meanwhile (to_the_end): the lock is held
            # until the record is, the next change reads it.
            await to_the_end(
                self._metrics.observed_write("disable", store.disable(current, why)),
                lambda written: self._locks.wrote(webhook_id, written, store.placed(webhook_id)),
            )
            self._metrics.disabled.labels(why).inc()
            log.warning("webhook disabled", extra={"webhook_id": webhook_id, "reason": reason})
        if verdict == "deleted":
            # Nothing to apply, nor to keep.
            await self._metrics.observed_write("status", store.delete_status(webhook_id))
        elif verdict in ("written", "inactive"):
            # Applied (or nothing left to apply): marked so, the record is never applied again.
            applied = {**status, "applied_at": format_timestamp(datetime.now(UTC))}
            await self._metrics.observed_write("status", store.put_status(applied))
        elif verdict in ("changed", "other_webhook"):
            # Left on: its health starts afresh (the deciding workers' "disabled", which was
            # about another version or another webhook, ends here).
            change = HealthChange(webhook_id, "healthy", None)
            record = change.to_record(format_timestamp(datetime.now(UTC)))
            await self._metrics.observed_write("status", store.put_status(record))

    async def _opened(self) -> WebhookStore:
        if self._store is None:
            self._store = await WebhookStore(self._settings).__aenter__()
        return self._store

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self._store is not None:
            await self._store.__aexit__(None, None, None)
            self._store = None
