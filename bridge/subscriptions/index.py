"""Matching events to webhooks: the in-memory index of current subscriptions, by site and user."""

from __future__ import annotations

import asyncio
import bisect
import heapq
from collections import defaultdict
from collections.abc import Iterable, Iterator

from bridge.contract.events import Event
from bridge.subscriptions.webhook import ALL_EVENTS, TEST_EVENT, Webhook

__all__ = ["ORDER_KINDS", "SubscriptionIndex"]


class SubscriptionIndex:
    """Every known webhook, indexed by id, site and account for matching.

    Matching costs the number of webhooks of the event's site and account, not of all webhooks.
    """

    def __init__(self, webhooks: Iterable[Webhook] = ()) -> None:
        self._by_id: dict[str, Webhook] = {}
        self._by_site: dict[str, set[str]] = defaultdict(set)
        self._by_account: dict[str, set[str]] = defaultdict(set)
        self._active = 0
        #: Every id in order, made at the first :meth:`ordered` and kept in order from then on
        #: (not before: keeping it in order while 100,000 webhooks are first read would move
        #: the list about for every one of them).
        self._sorted: list[str] | None = None
        #: The listings' narrower orders, by kind (``user``, ``state``, ``event``), then by
        #: value: the ids in order of every webhook of one user (site-scoped ones too), of one
        #: state, of one event type in its filter (``*`` included). Each
        #: kind is made likewise at the first listing that filters by it (a worker that serves
        #: no API never makes one) and kept in order from then on.
        self._orders: dict[str, dict[str, list[str]]] = {}
        #: The making of every order in a thread (:meth:`prepare_listing`), while under way.
        self._making: asyncio.Task[None] | None = None
        #: The ids put or removed since that making took its copy of the webhooks.
        self._changed: set[str] | None = None
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
        return list(self.ordered())

    async def prepare_listing(self) -> None:
        """Make every listing order that is not yet made, in a thread, so that no listing
        makes one on the event loop: at 100,000 webhooks sorting the ids took ~55 ms, and each
        kind of order ~110-180 ms (measured 2026-12-04). Puts and removes meanwhile are applied
        to the orders once made. Awaiting callers share one making; a cancelled caller does
        not stop it."""
        if self._sorted is not None and len(self._orders) == len(ORDER_KINDS):
            return
        if self._making is None or self._making.done():  # (done: it failed; try again)
            self._making = asyncio.create_task(self._make_orders())
        await asyncio.shield(self._making)

    async def _make_orders(self) -> None:
        snapshot = dict(self._by_id)
        self._changed = set()
        try:
            ids, orders = await asyncio.to_thread(_made_orders, list(snapshot.values()))
            for webhook_id in self._changed:
                old, new = snapshot.get(webhook_id), self._by_id.get(webhook_id)
                if old is not None:
                    _take_out(ids, webhook_id)
                    _leave_orders(orders, old)
                if new is not None:
                    bisect.insort(ids, webhook_id)
                    _enter_orders(orders, new)
            self._sorted, self._orders = ids, orders
        finally:
            self._changed = None

    def ordered(
        self,
        *,
        after: str | None = None,
        site_id: str | None = None,
        user_id: str | None = None,
        state: str | None = None,
        event_type: str | None = None,
    ) -> Iterator[Webhook]:
        """The webhooks in id order with ids after ``after``, only those of site ``site_id``,
        of user ``user_id``, in state ``state`` and wanting ``event_type`` (each when given).

        It walks the narrowest of the orders the filters have (a site's, a user's, a state's,
        an event type's with the ``*`` webhooks), from ``after`` by bisection:
        a page of the API's listing costs the webhooks it walks, where sorting every id for each
        page cost ~25 ms at 100,000 webhooks, and a walk of all of them for a state none has
        ~75 ms (measured 2026-12-04)."""
        # Each order a filter has, as its sorted id lists (two for an event type: its own and
        # ``*``'s); the walk takes the one with the fewest ids.
        candidates: list[list[list[str]]] = []
        if site_id is not None:
            candidates.append([sorted(self._by_site.get(site_id, ()))])
        if user_id is not None:
            candidates.append([self._order("user").get(user_id, [])])
        if state is not None:
            candidates.append([self._order("state").get(state, [])])
        if event_type is not None:
            events = self._order("event")
            candidates.append([events.get(event_type, []), events.get(ALL_EVENTS, [])])
        if not candidates:
            if self._sorted is None:
                self._sorted = sorted(self._by_id)
            candidates.append([self._sorted])
        lists = min(candidates, key=lambda c: sum(map(len, c)))
        # Copies from ``after`` on (~0.2 ms at 100,000 ids): puts and removes while the caller
        # walks leave them as they were.
        tails = [ids[0 if after is None else bisect.bisect_right(ids, after) :] for ids in lists]
        walk = tails[0] if len(tails) == 1 else heapq.merge(*tails)
        by_id = self._by_id
        last = None
        for webhook_id in walk:
            if webhook_id == last:  # (in both lists of an event type: its filter names ``*`` too)
                continue
            last = webhook_id
            found = by_id.get(webhook_id)
            if found is None:  # (removed while the caller walked)
                continue
            if (
                (site_id is None or found.site_id == site_id)
                and (user_id is None or found.user_id == user_id)
                and (state is None or found.state == state)
                and (event_type is None or found.wants(event_type))
            ):
                yield found

    def _order(self, kind: str) -> dict[str, list[str]]:
        """The listing order of ``kind`` (see ``_orders``); when :meth:`prepare_listing` has
        not made them, every order is made now, on the caller's thread."""
        if kind not in self._orders:
            self._sorted, self._orders = _made_orders(list(self._by_id.values()))
        return self._orders[kind]

    def put(self, webhook: Webhook) -> None:
        """Add or replace a webhook."""
        if not self._remove(webhook.id) and self._sorted is not None:
            bisect.insort(self._sorted, webhook.id)
        self._by_id[webhook.id] = webhook
        self._active += webhook.active
        if webhook.site_id is not None:
            self._by_site[webhook.site_id].add(webhook.id)
        else:
            assert webhook.user_id is not None  # the schema requires it for account scope
            self._by_account[webhook.user_id].add(webhook.id)
        _enter_orders(self._orders, webhook)
        if self._changed is not None:
            self._changed.add(webhook.id)

    def remove(self, webhook_id: str) -> None:
        """Forget a webhook (no error when unknown)."""
        if self._remove(webhook_id) and self._sorted is not None:
            _take_out(self._sorted, webhook_id)

    def _remove(self, webhook_id: str) -> bool:
        """Forget a webhook but in ``_sorted``; whether it was there."""
        old = self._by_id.pop(webhook_id, None)
        if old is None:
            return False
        self._active -= old.active
        if old.site_id is not None:
            bucket, key = self._by_site, old.site_id
        else:
            assert old.user_id is not None
            bucket, key = self._by_account, old.user_id
        _discard(bucket, key, webhook_id)
        _leave_orders(self._orders, old)
        if self._changed is not None:
            self._changed.add(webhook_id)
        return True

    def match(self, event: Event) -> list[Webhook]:
        """The webhooks that get a delivery of ``event``, ordered by id.

        Active webhooks in scope (same site, or same account for account-scoped ones) whose
        filter includes the type or ``*``. A ``test.event`` goes only to the webhook its
        ``data.webhook_id`` names, whatever that webhook's filter and site, if it is active and
        the event comes from its owner's account (from its site, when it has no owner).
        """
        if event.type == TEST_EVENT:
            target = self._by_id.get(str(event.data.get("webhook_id")))
            return [target] if target is not None and target.receives(event) else []
        ids = set(self._by_site.get(event.site_id, ()))
        ids.update(self._by_account.get(event.user_id, ()))
        out = []
        for webhook_id in sorted(ids):
            webhook = self._by_id[webhook_id]
            if webhook.receives(event):  # (the scope again: :meth:`Webhook.receives` is the rule)
                out.append(webhook)
        return out


#: The kinds of listing orders (see ``SubscriptionIndex._orders``).
ORDER_KINDS = ("user", "state", "event")


_SORT_PART = 4096


def _webhook_id(webhook: Webhook) -> str:
    return webhook.id


def _made_orders(webhooks: list[Webhook]) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """The ids of ``webhooks`` in order and every listing order of them (touches nothing else:
    :meth:`SubscriptionIndex.prepare_listing` runs it in a thread)."""
    # Sorted in parts, then merged: one sort of 100,000 ids holds the interpreter's lock for
    # ~30 ms, a part of 4,096 for ~1 ms, and the merge lets go of it as any Python code does.
    parts = [
        sorted(webhooks[start : start + _SORT_PART], key=_webhook_id)
        for start in range(0, len(webhooks), _SORT_PART)
    ]
    webhooks = list(heapq.merge(*parts, key=_webhook_id))
    made: dict[str, dict[str, list[str]]] = {kind: defaultdict(list) for kind in ORDER_KINDS}
    for webhook in webhooks:
        for kind, order in made.items():
            for value in _order_values(kind, webhook):
                order[value].append(webhook.id)
    return [webhook.id for webhook in webhooks], {k: dict(order) for k, order in made.items()}


def _enter_orders(orders: dict[str, dict[str, list[str]]], webhook: Webhook) -> None:
    for kind, order in orders.items():
        for value in _order_values(kind, webhook):
            bisect.insort(order.setdefault(value, []), webhook.id)


def _leave_orders(orders: dict[str, dict[str, list[str]]], webhook: Webhook) -> None:
    for kind, order in orders.items():
        for value in _order_values(kind, webhook):
            ids = order.get(value)
            if ids is not None:
                _take_out(ids, webhook.id)
                if not ids:
                    del order[value]


def _order_values(kind: str, webhook: Webhook) -> Iterable[str]:
    """The values of ``kind`` under which a listing order keeps ``webhook``."""
    if kind == "user":
        return () if webhook.user_id is None else (webhook.user_id,)
    if kind == "state":
        return (webhook.state,)
    assert kind == "event", kind
    return webhook.events


def _take_out(ids: list[str], webhook_id: str) -> None:
    """Take ``webhook_id`` out of the ordered ``ids`` (nothing when it is not there)."""
    index = bisect.bisect_left(ids, webhook_id)
    if index < len(ids) and ids[index] == webhook_id:
        del ids[index]


def _discard(bucket: dict[str, set[str]], key: str, webhook_id: str) -> None:
    """Take ``webhook_id`` out of ``bucket[key]``, and the key out when it has no id left."""
    ids = bucket.get(key)
    if ids is not None:
        ids.discard(webhook_id)
        if not ids:
            del bucket[key]
