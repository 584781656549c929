"""Matching events to webhooks: the in-memory index of current subscriptions, by site and user."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from bridge.contract.events import Event
from bridge.subscriptions.webhook import TEST_EVENT, Webhook

__all__ = ["SubscriptionIndex"]


class SubscriptionIndex:
    """Every known webhook, indexed by id, site and account for matching.

    Matching costs the number of webhooks of the event's site and account, not of all webhooks.
    """

    def __init__(self, webhooks: Iterable[Webhook] = ()) -> None:
        self._by_id: dict[str, Webhook] = {}
        self._by_site: dict[str, set[str]] = defaultdict(set)
        self._by_account: dict[str, set[str]] = defaultdict(set)
        self._active = 0
        for webhook in webhooks:
            self.put(webhook)

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def active_count(self) -> int:
        """How many webhooks are active."""
        return self._active

    def __contains__(self, webhook_id: object) -> bool:
        return webhook_id in self._by_id

    def get(self, webhook_id: str) -> Webhook | None:
        return self._by_id.get(webhook_id)

    def all(self) -> list[Webhook]:
        return [self._by_id[k] for k in sorted(self._by_id)]

    def put(self, webhook: Webhook) -> None:
        """Add or replace a webhook."""
        self.remove(webhook.id)
        self._by_id[webhook.id] = webhook
        self._active += webhook.active
        if webhook.site_id is not None:
            self._by_site[webhook.site_id].add(webhook.id)
        else:
            assert webhook.user_id is not None  # the schema requires it for account scope
            self._by_account[webhook.user_id].add(webhook.id)

    def remove(self, webhook_id: str) -> None:
        """Forget a webhook (no error when unknown)."""
        old = self._by_id.pop(webhook_id, None)
        if old is None:
            return
        self._active -= old.active
        if old.site_id is not None:
            bucket, key = self._by_site, old.site_id
        else:
            assert old.user_id is not None
            bucket, key = self._by_account, old.user_id
        ids = bucket.get(key)
        if ids is not None:
            ids.discard(webhook_id)
            if not ids:
                del bucket[key]

    def match(self, event: Event) -> list[Webhook]:
        """The webhooks that get a delivery of ``event``, ordered by id.

        Active webhooks in scope (same site, or same account for account-scoped ones) whose
        filter includes the type or ``*``. A ``test.event`` goes only to the webhook its
        ``data.webhook_id`` names, whatever that webhook's filter and site, if it is active and
        the event comes from its owner's account (from its site, when it has no owner).
        """
        if event.type == TEST_EVENT:
            target = self._by_id.get(str(event.data.get("webhook_id")))
            if target is None or not target.active:
                return []
            # Owned by the event's account; a site-scoped webhook without an owner: same site.
            if target.user_id is not None:
                owned = target.user_id == event.user_id
            else:
                owned = target.site_id == event.site_id
            return [target] if owned else []
        ids = set(self._by_site.get(event.site_id, ()))
        ids.update(self._by_account.get(event.user_id, ()))
        out = []
        for webhook_id in sorted(ids):
            webhook = self._by_id[webhook_id]
            if webhook.active and webhook.wants(event.type):
                out.append(webhook)
        return out
