"""A change whose request is cancelled while its record is being written (the API's request
timeout, a client gone): the record may land whatever its sender's wait became, so the change
keeps its webhook's lock until the write has ended, and the next change of the webhook (the
bridge's disable of it, another request) reads it. Until 2026-12-07 the lock was let go at the
cancel: a disable made meanwhile read the version before the rename, and the rename's record,
landing after it, turned the webhook its owner had just disabled on again."""

from __future__ import annotations

import asyncio

import pytest

from bridge.api.auth import Principal
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService
from bridge.subscriptions.freshness import Placed
from bridge.subscriptions.serial import KeyedLocks
from bridge.subscriptions.webhook import Webhook
from tests.support.waiting import PROMPT

WRITER = Principal("writer", frozenset({"read", "write"}))
BODY = {"id": "wh_1", "url": "https://example.com/h", "events": ["*"], "site_id": "site_1"}


class _Landing(MemoryRepository):
    """A topic whose records land whatever becomes of their sender's wait (a producer's record
    is sent whether or not the task awaiting its acknowledgement is cancelled); the writes
    while ``held`` is set land when it is cleared, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.sent = asyncio.Event()
        self._released = asyncio.Event()
        self._offset = 0

    def release(self) -> None:
        self._released.set()

    async def put(self, webhook: Webhook) -> Placed | None:
        return await self._land(webhook.id, webhook)

    async def delete(self, webhook_id: str) -> Placed | None:
        return await self._land(webhook_id, None)

    async def _land(self, webhook_id: str, webhook: Webhook | None) -> Placed:
        placed = Placed(0, self._offset)
        self._offset += 1
        if self.held:
            self.held = False
            self.sent.set()
            landing = asyncio.ensure_future(self._released.wait())
            # The record lands once released, however the wait below ends.
            landing.add_done_callback(lambda _: self._apply(webhook_id, webhook))
            await asyncio.shield(landing)
        else:
            self._apply(webhook_id, webhook)
        return placed

    def _apply(self, webhook_id: str, webhook: Webhook | None) -> None:
        if webhook is None:
            self._webhooks.pop(webhook_id, None)
        else:
            self._webhooks[webhook_id] = webhook


@pytest.mark.parametrize("cancelled", ["rename", "rotate", "delete"])
async def test_a_change_cancelled_while_writing_holds_its_webhook_until_the_write_ended(
    cancelled: str,
) -> None:
    repository = _Landing()
    service = WebhookService(repository, locks=KeyedLocks())
    await service.create(WRITER, BODY)
    repository.held = True
    if cancelled == "rename":
        change = service.update(WRITER, "wh_1", {"name": "renamed"}, if_match=None)
    elif cancelled == "rotate":
        change = service.rotate_secret(WRITER, "wh_1", {}, if_match=None)
    else:
        change = service.delete(WRITER, "wh_1", if_match=None)
    request = asyncio.ensure_future(change)
    await asyncio.wait_for(repository.sent.wait(), PROMPT)
    request.cancel()  # the request's timeout, while its record is on its way
    # The owner's disable (a change under the same lock) begins meanwhile.
    disabling = asyncio.ensure_future(
        service.update(WRITER, "wh_1", {"active": False}, if_match=None)
    )
    for _ in range(20):
        await asyncio.sleep(0)
    assert not disabling.done()  # waits for the write under way
    repository.release()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(request, PROMPT)
    if cancelled == "delete":
        # Deleted: the disable finds nothing to turn off, and makes nothing again.
        with pytest.raises(Exception, match="no such webhook"):
            await asyncio.wait_for(disabling, PROMPT)
        assert await repository.get("wh_1") is None
        return
    await asyncio.wait_for(disabling, PROMPT)
    final = await repository.get("wh_1")
    assert final is not None and not final.active  # the disable kept
    if cancelled == "rename":
        assert final.name == "renamed"  # and the rename, which landed before it
