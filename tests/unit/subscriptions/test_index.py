"""bridge.subscriptions.index: the listing orders the API pages through, against a model."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.subscriptions import index as index_module
from bridge.subscriptions.index import SubscriptionIndex
from bridge.subscriptions.webhook import Webhook
from tests.unit.subscriptions.test_webhook import hook

IDS = st.text(alphabet="abc-é\x00", min_size=1, max_size=4)
SITES = st.sampled_from([None, "s1", "s2"])
USERS = st.sampled_from([None, "u1", "u2"])


def made(webhook_id: str, site_id: str | None, user_id: str = "u1") -> Webhook:
    return hook(webhook_id, site_id=site_id, user_id=user_id)


def test_a_webhook_removed_while_a_listing_walks_is_left_out() -> None:
    index = SubscriptionIndex([made(n, "s1") for n in ("a", "b", "c")])
    walk = index.ordered()
    assert next(walk).id == "a"
    index.remove("b")
    assert [w.id for w in walk] == ["c"]


STATES = ("active", "inactive", "disabled")
EVENT_TYPES = ("post.created", "post.deleted", "*")


def stated(
    webhook_id: str, site_id: str | None, user_id: str, state: str, events: frozenset[str]
) -> Webhook:
    plain = hook(webhook_id, site_id=site_id, user_id=user_id, events=tuple(events))
    extra = {"disabled_reason": "endpoint_failing"} if state == "disabled" else {}
    return dataclasses.replace(plain, active=state == "active", extra=extra)


filters = st.tuples(
    st.one_of(st.none(), IDS),
    SITES,
    USERS,
    st.one_of(st.none(), st.sampled_from(STATES)),
    st.one_of(st.none(), st.sampled_from(EVENT_TYPES[:2])),
)
any_filter_operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            IDS,
            SITES,
            st.sampled_from(["u1", "u2"]),
            st.sampled_from(STATES),
            st.frozensets(st.sampled_from(EVENT_TYPES), min_size=1),
        ),
        st.tuples(st.just("remove"), IDS),
        st.tuples(st.just("list"), filters),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(any_filter_operations, st.lists(filters, max_size=3))
def test_every_filter_lists_exactly_its_webhooks_in_order(
    ops: list[tuple[Any, ...]], listed_first: list[tuple[Any, ...]]
) -> None:
    """Any mix of site, user, state and event type filters, with the orders they walk made at
    the start (``listed_first``) or at the first listing that needs them, and kept by every put
    and remove after it: exactly the matching webhooks, each once (one whose filter names a
    type and ``*`` is in both of that type's lists), in id order."""
    index = SubscriptionIndex()
    model: dict[str, Webhook] = {}

    def check(
        after: str | None,
        site: str | None,
        user: str | None,
        state: str | None,
        event_type: str | None,
    ) -> None:
        expected = [
            model[k]
            for k in sorted(model)
            if (after is None or k > after)
            and (site is None or model[k].site_id == site)
            and (user is None or model[k].user_id == user)
            and (state is None or model[k].state == state)
            and (event_type is None or model[k].wants(event_type))
        ]
        listed = index.ordered(
            after=after, site_id=site, user_id=user, state=state, event_type=event_type
        )
        assert list(listed) == expected

    for first in listed_first:
        check(*first)
    for op, *args in ops:
        if op == "put":
            key, site, user, state, events = args
            model[key] = stated(key, site, user, state, events)
            index.put(model[key])
        elif op == "remove":
            model.pop(args[0], None)
            index.remove(args[0])
        else:
            check(*args[0])
    for state in STATES:
        check(None, None, None, state, None)


def test_a_rare_state_or_event_type_walks_only_its_webhooks() -> None:
    """A listing of the disabled webhooks among many walks only them, as one of the active ones
    among many turned off does (``ordered`` looks at no other webhook: the index's mapping of
    ids is watched)."""
    many = [
        stated(f"w{n:04d}", "s1", "u1", "active", frozenset({"post.created"})) for n in range(3000)
    ]
    off = stated("w0500x", "s1", "u1", "disabled", frozenset({"post.deleted"}))
    index = SubscriptionIndex([*many, off])
    looked: list[str] = []

    class Watched(dict[str, Webhook]):
        def get(self, key: str, default: Any = None) -> Any:
            looked.append(key)
            return super().get(key, default)

    index._by_id = Watched(index._by_id)
    assert list(index.ordered(state="disabled")) == [off]
    assert list(index.ordered(event_type="post.deleted")) == [off]
    assert looked == ["w0500x", "w0500x"]
    assert [w.id for w in index.ordered(after="w2997", state="active")] == ["w2998", "w2999"]
    # Where almost every webhook is off, the active ones are the rare state.
    off_all = [stated(w.id, "s1", "u1", "inactive", w.events) for w in many[1:]]
    index = SubscriptionIndex([many[0], *off_all])
    looked.clear()
    index._by_id = Watched(index._by_id)
    assert list(index.ordered(state="active")) == [many[0]]
    assert looked == [many[0].id]


async def test_orders_made_in_a_thread_take_the_changes_made_meanwhile() -> None:
    """``prepare_listing`` makes every order from a copy of the webhooks in a thread; puts and
    removes made while it runs are in the orders it leaves, and listings after it make none on
    the event loop."""
    posts = frozenset({"post.created"})
    model = {
        f"w{n:03d}": stated(f"w{n:03d}", "s1", f"u{n % 4}", "active", posts) for n in range(200)
    }
    index = SubscriptionIndex(model.values())
    started = threading.Event()
    release = threading.Event()
    made = index_module._made_orders

    def slow(webhooks: list[Webhook]) -> Any:
        started.set()
        release.wait(10)
        return made(webhooks)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_module, "_made_orders", slow)
        first = asyncio.create_task(index.prepare_listing())
        second = asyncio.create_task(index.prepare_listing())
        await asyncio.to_thread(started.wait, 10)
        # Meanwhile: one removed, one changed (user, state and events), one new.
        index.remove("w005")
        model.pop("w005")
        model["w010"] = stated("w010", "s1", "u9", "disabled", frozenset({"*"}))
        model["w999"] = stated("w999", None, "u1", "inactive", frozenset({"post.deleted"}))
        index.put(model["w010"])
        index.put(model["w999"])
        release.set()
        await asyncio.gather(first, second)
    assert index._making is not None and index._making.done()

    made_orders = index._order

    def made_before(kind: str) -> Any:
        assert kind in index._orders, f"the {kind} order was made on the loop"
        return made_orders(kind)

    index._order = made_before  # type: ignore[method-assign]
    assert [w.id for w in index.ordered()] == sorted(model)
    assert [w.id for w in index.ordered(user_id="u9")] == ["w010"]
    assert [w.id for w in index.ordered(user_id="u1")] == sorted(
        k for k, w in model.items() if w.user_id == "u1"
    )
    assert [w.id for w in index.ordered(state="disabled")] == ["w010"]
    assert [w.id for w in index.ordered(state="inactive")] == ["w999"]
    assert [w.id for w in index.ordered(event_type="post.deleted")] == ["w010", "w999"]
    assert len(list(index.ordered(event_type="post.created"))) == 199


async def test_a_failed_making_is_tried_again() -> None:
    index = SubscriptionIndex([stated("a", "s1", "u1", "active", frozenset({"*"}))])

    def broken(webhooks: list[Webhook]) -> Any:
        raise MemoryError

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_module, "_made_orders", broken)
        with pytest.raises(MemoryError):
            await index.prepare_listing()
    await index.prepare_listing()
    assert [w.id for w in index.ordered(user_id="u1")] == ["a"]


def _naive_receives(webhook: Webhook, event: Any) -> bool:
    """The contract's rule, written out without the index or Webhook.receives."""
    if not webhook.active:
        return False
    if event.type == "test.event":
        if event.data.get("webhook_id") != webhook.id:
            return False
        if webhook.user_id is not None:
            return webhook.user_id == event.user_id
        return webhook.site_id == event.site_id
    if webhook.site_id is not None:
        scoped = webhook.site_id == event.site_id
    else:
        scoped = webhook.user_id == event.user_id
    return scoped and ("*" in webhook.events or event.type in webhook.events)


@settings(max_examples=200, deadline=None)
@given(
    hooks=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            SITES,
            st.sampled_from(["u1", "u2"]),
            st.sampled_from([("*",), ("post.created",), ("post.deleted",)]),
            st.booleans(),
        ),
        max_size=8,
    ),
    events=st.lists(
        st.tuples(
            st.sampled_from(["post.created", "post.deleted", "test.event"]),
            st.sampled_from(["s1", "s2", "account:u1"]),
            st.sampled_from(["u1", "u2"]),
            st.sampled_from(["a", "b", "z"]),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_match_and_receives_are_the_contract_s_rule(
    hooks: list[tuple[str, str | None, str, tuple[str, ...], bool]],
    events: list[tuple[str, str, str, str]],
) -> None:
    """Every webhook the index gives an event, and no other, receives it; and each webhook
    alone (a retry's check) judges the same."""
    from bridge.contract.events import Event

    index = SubscriptionIndex()
    for webhook_id, site_id, user_id, types, active in hooks:
        index.put(
            dataclasses.replace(
                hook(webhook_id, site_id=site_id, user_id=user_id),
                events=frozenset(types),
                active=active,
            )
        )
    everyone = list(index.ordered())
    for event_type, site_id, user_id, named in events:
        data = {"webhook_id": named} if event_type == "test.event" else {"id": "p", "title": "t"}
        event = Event(
            id="e", type=event_type, data=data, timestamp="2026-01-15T10:00:00Z",
            site_id=site_id, user_id=user_id,
        )  # fmt: skip
        expected = [w.id for w in everyone if _naive_receives(w, event)]
        assert [w.id for w in index.match(event)] == sorted(expected)
        assert [w.id for w in everyone if w.receives(event)] == expected
