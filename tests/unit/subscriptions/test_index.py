"""bridge.subscriptions.index: the listing order the API pages through, against a model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.subscriptions.index import SubscriptionIndex
from bridge.subscriptions.webhook import Webhook
from tests.unit.subscriptions.test_webhook import hook

IDS = st.text(alphabet="abc-é\x00", min_size=1, max_size=4)
SITES = st.sampled_from([None, "s1", "s2"])
USERS = st.sampled_from([None, "u1", "u2"])

operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), IDS, SITES, st.sampled_from(["u1", "u2"])),
        st.tuples(st.just("remove"), IDS, SITES, USERS),
        st.tuples(st.just("list"), st.one_of(st.none(), IDS), SITES, USERS),
    ),
    max_size=80,
)


def made(webhook_id: str, site_id: str | None, user_id: str = "u1") -> Webhook:
    return hook(webhook_id, site_id=site_id, user_id=user_id)


@settings(max_examples=300, deadline=None)
@given(operations, st.booleans())
def test_listing_in_order_after_any_puts_and_removes(
    ops: list[tuple[str, str | None, str | None, str | None]], listed_first: bool
) -> None:
    """The sorted ids (and the ids by user) are made at the first listing that needs them and
    kept by every put and remove after it (``listed_first``: from the start, or from the
    middle)."""
    index = SubscriptionIndex()
    model: dict[str, Webhook] = {}
    if listed_first:
        assert index.all() == []
    for op, key, site, user in ops:
        if op == "put":
            assert key is not None and user is not None
            model[key] = made(key, site, user)
            index.put(model[key])
        elif op == "remove":
            assert key is not None
            model.pop(key, None)
            index.remove(key)
        else:
            # (site when given, else user when given: as the API asks)
            expected = [
                model[k]
                for k in sorted(model)
                if (key is None or k > key)
                and (site is None or model[k].site_id == site)
                and (site is not None or user is None or model[k].user_id == user)
            ]
            assert list(index.ordered(after=key, site_id=site, user_id=user)) == expected
    assert index.all() == [model[k] for k in sorted(model)]
    assert len(index) == len(model)


def test_a_webhook_removed_while_a_listing_walks_is_left_out() -> None:
    index = SubscriptionIndex([made(n, "s1") for n in ("a", "b", "c")])
    walk = index.ordered()
    assert next(walk).id == "a"
    index.remove("b")
    assert [w.id for w in walk] == ["c"]
