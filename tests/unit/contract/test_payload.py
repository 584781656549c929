"""bridge.contract.payload: the deterministic delivery id and the documented body shape, byte for
byte."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.contract import jsoncanon
from bridge.contract.events import Event
from bridge.contract.jsoncanon import MAX_SAFE_INTEGER
from bridge.contract.payload import DELIVERY_NAMESPACE, EncodedEvent, build_body, delivery_id
from bridge.errors import InvalidEvent
from bridge.subscriptions.webhook import Webhook

SECRET = "whsec_payload-test-secret"

EVENT = Event(
    id="evt_1",
    type="post.created",
    data={"id": "post_123", "title": "My New Post", "...": "event-specific data"},
    timestamp="2024-01-15T10:30:00Z",
    site_id="site_789",
    user_id="user_456",
)


def make_webhook(webhook_id: str = "webhook_abc", name: str = "My Webhook") -> Webhook:
    return Webhook(
        id=webhook_id,
        name=name,
        url="https://hooks.example/receive?token=url-token",
        secret=SECRET,
        events=frozenset({"*"}),
        site_id="site_789",
        user_id="user_456",
    )


def dict_form(event: Event, webhook: Webhook) -> dict[str, Any]:
    """The body as the documentation draws it."""
    return {
        "id": delivery_id(event.id, webhook.id),
        "event": {
            "type": event.type,
            "data": event.data,
            "timestamp": event.timestamp,
            "site_id": event.site_id,
            "user_id": event.user_id,
        },
        # The name as the API shows it: without a URL's credentials (see below).
        "webhook": {"id": webhook.id, "name": webhook.shown_name()},
    }


# ------------------------------------------------------------------------- delivery id


def test_delivery_id_is_pinned() -> None:
    # Receivers deduplicate on this id across releases: it must never change.
    assert DELIVERY_NAMESPACE == uuid.UUID("6f1c1f4e-2b7a-5d0e-9c51-7e0b1e8f3a42")
    assert delivery_id("evt_1", "webhook_abc") == "b3fa54bc-a2e6-5f0c-ad07-6fcd38c25ccc"


def test_delivery_id_is_deterministic() -> None:
    assert delivery_id("evt_1", "webhook_abc") == delivery_id("evt_1", "webhook_abc")


@pytest.mark.parametrize(
    ("event_id", "webhook_id"),
    [("evt_1", "webhook_abc"), ("", ""), ("é✓", "𝄞"), ("x" * 200, "y" * 200)],
)
def test_delivery_id_is_a_canonical_uuid5(event_id: str, webhook_id: str) -> None:
    text = delivery_id(event_id, webhook_id)
    parsed = uuid.UUID(text)
    assert str(parsed) == text
    assert parsed.version == 5
    assert parsed.variant == uuid.RFC_4122


@given(
    event_id=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    webhook_id=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
)
def test_delivery_id_is_exactly_the_standard_library_s_uuid5(
    event_id: str, webhook_id: str
) -> None:
    expected = str(uuid.uuid5(DELIVERY_NAMESPACE, f"{event_id}\x00{webhook_id}"))
    assert delivery_id(event_id, webhook_id) == expected


def test_delivery_id_differs_per_event_and_per_webhook() -> None:
    ids = {delivery_id(e, w) for e in ("evt_1", "evt_2", "evt_3") for w in ("wh_1", "wh_2", "wh_3")}
    assert len(ids) == 9


def test_delivery_id_is_not_symmetric() -> None:
    assert delivery_id("a", "b") != delivery_id("b", "a")


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("a:b", "c"), ("a", "b:c")),
        (("ab", "c"), ("a", "bc")),
        (("a|b", "c"), ("a", "b|c")),
        (("a", ""), ("", "a")),
    ],
)
def test_delivery_id_separator_keeps_pairs_apart(
    left: tuple[str, str], right: tuple[str, str]
) -> None:
    assert delivery_id(*left) != delivery_id(*right)


def test_ids_with_nul_are_refused_so_the_separator_stays_unambiguous() -> None:
    # delivery_id joins the ids with NUL; the schemas keep NUL out of both ids.
    from bridge.contract.schemas import schema_errors

    event = {
        "id": "a\x00b",
        "type": "post.deleted",
        "data": {"id": "p"},
        "timestamp": "2024-01-15T10:30:00Z",
        "site_id": "s",
        "user_id": "u",
    }
    assert any(e.startswith("$.id") for e in schema_errors("event", event))
    hook = {
        "id": "b\x00c",
        "name": "n",
        "url": "https://example.com/h",
        "secret": "s",
        "events": ["*"],
        "user_id": "u",
        "active": True,
    }
    assert any(e.startswith("$.id") for e in schema_errors("webhook", hook))
    assert delivery_id("ab", "c") != delivery_id("a", "bc")


# ------------------------------------------------------------------------------- body


def test_body_is_the_documented_shape_in_order() -> None:
    webhook = make_webhook()
    body = build_body(EncodedEvent.of(EVENT), webhook)
    pairs = json.loads(body, object_pairs_hook=lambda kv: kv)
    assert [k for k, _ in pairs] == ["id", "event", "webhook"]
    top = dict(pairs)
    assert top["id"] == delivery_id("evt_1", "webhook_abc")
    assert [k for k, _ in top["event"]] == ["type", "data", "timestamp", "site_id", "user_id"]
    assert [k for k, _ in top["webhook"]] == ["id", "name"]
    assert dict(top["webhook"]) == {"id": "webhook_abc", "name": "My Webhook"}
    assert dict(top["event"])["type"] == "post.created"
    assert dict(top["event"])["timestamp"] == "2024-01-15T10:30:00Z"
    assert dict(top["event"])["site_id"] == "site_789"
    assert dict(top["event"])["user_id"] == "user_456"


def test_body_exact_bytes() -> None:
    body = build_body(EncodedEvent.of(EVENT), make_webhook())
    assert body == (
        b'{"id":"b3fa54bc-a2e6-5f0c-ad07-6fcd38c25ccc","event":{"type":"post.created",'
        b'"data":{"id":"post_123","title":"My New Post","...":"event-specific data"},'
        b'"timestamp":"2024-01-15T10:30:00Z","site_id":"site_789","user_id":"user_456"},'
        b'"webhook":{"id":"webhook_abc","name":"My Webhook"}}'
    )


def test_body_equals_jsoncanon_of_the_dict_form() -> None:
    webhook = make_webhook(name='Ünïcödé ✓ \u2028 "quoted" \\ 𝄞')
    event = Event(
        id="evt_2",
        type="post.published",
        data={"title": "é", "2": "index key", "1": [1, 1.5, -0.0, 1e21, None, True], "z": {}},
        timestamp="2024-01-15T10:30:00.123Z",
        site_id="s",
        user_id="u",
    )
    body = build_body(EncodedEvent.of(event), webhook)
    assert body == jsoncanon.dumps(dict_form(event, webhook))


def test_body_never_contains_the_secret_or_the_url() -> None:
    body = build_body(EncodedEvent.of(EVENT), make_webhook())
    assert SECRET.encode() not in body
    assert b"url-token" not in body
    assert b"hooks.example" not in body


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (
            "https://bob:Old-pw-secret@old.example.com/in?token=t",
            "https://***@old.example.com/in?token=t",
        ),
        ("ops:Team-pw-secret@corp", "***@corp"),
        ("My Webhook", "My Webhook"),
    ],
)
def test_the_body_names_the_webhook_without_a_urls_credentials(name: str, shown: str) -> None:
    """A record written elsewhere may be named after a URL with its password, and the body
    goes to the webhook's URL, which need not be that one (a URL changed since): the body
    sent the password until 2026-12-07. It names the webhook as the API shows it."""
    webhook = make_webhook(name=name)
    body = build_body(EncodedEvent.of(EVENT), webhook)
    assert json.loads(body)["webhook"] == {"id": webhook.id, "name": shown}
    assert shown == webhook.shown_name()


def test_encoded_event_is_shared_across_webhooks() -> None:
    encoded = EncodedEvent.of(EVENT)
    a = build_body(encoded, make_webhook("wh_a", "A"))
    b = build_body(encoded, make_webhook("wh_b", "B"))
    assert a != b
    assert encoded.encoded in a and encoded.encoded in b
    assert json.loads(a)["event"] == json.loads(b)["event"]
    assert json.loads(a)["id"] != json.loads(b)["id"]


def test_max_bytes_limit_is_inclusive() -> None:
    encoded = EncodedEvent.of(EVENT)
    body = build_body(encoded, make_webhook())
    assert build_body(encoded, make_webhook(), max_bytes=len(body)) == body
    with pytest.raises(InvalidEvent) as info:
        build_body(encoded, make_webhook(), max_bytes=len(body) - 1)
    assert info.value.reason == "payload_too_large"
    assert str(len(body)) in info.value.detail
    assert str(len(body) - 1) in info.value.detail


def test_max_bytes_counts_bytes_not_characters() -> None:
    webhook = make_webhook(name="é" * 50)
    encoded = EncodedEvent.of(EVENT)
    body = build_body(encoded, webhook)
    characters = len(body.decode("utf-8"))
    assert characters < len(body)
    with pytest.raises(InvalidEvent) as info:
        build_body(encoded, webhook, max_bytes=characters)
    assert info.value.reason == "payload_too_large"


def test_no_limit_by_default() -> None:
    big = Event(
        id="e",
        type="post.created",
        data={"id": "p", "title": "x" * 2_000_000},
        timestamp="2024-01-15T10:30:00Z",
        site_id="s",
        user_id="u",
    )
    assert len(build_body(EncodedEvent.of(big), make_webhook())) > 2_000_000


# -------------------------------------------------------------------------- property

# Any code point, lone surrogates included (they take the careful encoder's path).
any_text = st.text(st.characters(exclude_categories=()), max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(any_text | st.integers(0, 20).map(str), children, max_size=5)
    ),
    max_leaves=25,
)
ids = st.text(min_size=1, max_size=30)


@given(
    data=st.dictionaries(any_text | st.integers(0, 20).map(str), json_values, max_size=8),
    event_id=ids,
    webhook_id=ids,
    name=any_text,
    site_id=ids,
    user_id=ids,
)
def test_body_is_jsoncanon_of_the_dict_form(
    data: dict[str, Any], event_id: str, webhook_id: str, name: str, site_id: str, user_id: str
) -> None:
    event = Event(
        id=event_id,
        type="post.created",
        data=data,
        timestamp="2024-01-15T10:30:00.123Z",
        site_id=site_id,
        user_id=user_id,
    )
    webhook = make_webhook(webhook_id, name)
    body = build_body(EncodedEvent.of(event), webhook)
    assert body == jsoncanon.dumps(dict_form(event, webhook))
    assert json.loads(body)["id"] == delivery_id(event_id, webhook_id)
