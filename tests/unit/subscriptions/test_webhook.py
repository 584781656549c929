"""bridge.subscriptions.webhook: parsing subscription records and matching events to webhooks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.contract import jsoncanon
from bridge.contract.events import Event
from bridge.errors import InvalidRecord, InvalidSubscription
from bridge.subscriptions.index import SubscriptionIndex
from bridge.subscriptions.webhook import (
    ALL_EVENTS,
    RECORD_PROBLEMS,
    TEST_EVENT,
    Webhook,
    parse_webhook,
    webhook_from_record,
    webhook_key,
)
from tests.support.builders import encode, webhook_record

SECRET = "whsec_Zq8-very-secret-value"


def record(**changes: Any) -> dict[str, Any]:
    return webhook_record(
        **{
            "id": "webhook_abc",
            "secret": SECRET,
            "events": ["post.created", "post.published"],
            "site_id": "site_789",
            "user_id": "user_456",
            **changes,
        }
    )


def hook(
    webhook_id: str,
    *,
    events: tuple[str, ...] = (ALL_EVENTS,),
    site_id: str | None = "s1",
    user_id: str = "u1",
    active: bool = True,
    secret: str = SECRET,
) -> Webhook:
    return Webhook(
        id=webhook_id,
        name=f"name of {webhook_id}",
        url=f"https://hooks.example/{webhook_id}",
        secret=secret,
        events=frozenset(events),
        site_id=site_id,
        user_id=user_id,
        active=active,
    )


def event(
    event_type: str = "post.created",
    *,
    site_id: str = "s1",
    user_id: str = "u1",
    data: dict[str, Any] | None = None,
) -> Event:
    return Event(
        id="evt_1",
        type=event_type,
        data=data if data is not None else {"id": "post_1", "title": "t"},
        timestamp="2024-01-15T10:30:00Z",
        site_id=site_id,
        user_id=user_id,
    )


def ids(webhooks: list[Webhook]) -> list[str]:
    return [w.id for w in webhooks]


def invalid(key: bytes | None, raw: bytes | None, reason: str) -> InvalidSubscription:
    with pytest.raises(InvalidSubscription) as info:
        parse_webhook(key, raw)
    assert isinstance(info.value, InvalidRecord)
    assert info.value.reason == reason
    assert info.value.reason in RECORD_PROBLEMS
    return info.value


KEY = b"webhook_abc"

# --------------------------------------------------------------------------- parsing


def test_tombstone_is_none() -> None:
    assert parse_webhook(KEY, None) is None


def test_parse_valid_record() -> None:
    webhook = parse_webhook(KEY, encode(record()))
    assert webhook == Webhook(
        id="webhook_abc",
        name="My Webhook",
        url="https://hooks.example/webhook",
        secret=SECRET,
        events=frozenset({"post.created", "post.published"}),
        site_id="site_789",
        user_id="user_456",
        active=True,
    )


@pytest.mark.parametrize("raw", [encode(record()), None])
def test_a_record_without_a_key_names_no_webhook(raw: bytes | None) -> None:
    # A compacted topic keeps no keyless record (Apache Kafka refuses one): no webhook from it,
    # and a keyless tombstone deletes nothing.
    invalid(None, raw, "null_key")


@pytest.mark.parametrize("raw", [encode(record()), None])
def test_a_key_that_is_not_utf8_names_no_webhook(raw: bytes | None) -> None:
    error = invalid(b"\xffwebhook_abc", raw, "key_not_utf8")
    assert error.detail.isascii()
    assert webhook_key(b"\xffwebhook_abc") is None
    assert webhook_key(None) is None
    assert webhook_key("é".encode()) == "é"


@pytest.mark.parametrize("site", [None, "absent"])
def test_account_scoped_record(site: str | None) -> None:
    value = record(site_id=None)
    if site == "absent":
        del value["site_id"]
    webhook = parse_webhook(KEY, encode(value))
    assert webhook is not None
    assert webhook.site_id is None


def test_extra_fields_round_trip() -> None:
    value = record(created_at="2024-01-01T00:00:00Z", updated_at="x", owner={"team": "a"})
    webhook = parse_webhook(KEY, encode(value))
    assert webhook is not None
    assert dict(webhook.extra) == {
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "x",
        "owner": {"team": "a"},
    }
    again = parse_webhook(KEY, webhook.to_bytes())
    assert again == webhook
    assert again is not None and again.extra == webhook.extra
    assert webhook.to_record()["events"] == ["post.created", "post.published"]


def test_key_mismatch() -> None:
    error = invalid(b"webhook_other", encode(record()), "key_mismatch")
    assert "webhook_other" in error.detail
    assert SECRET not in str(error)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff", b"{'id': 1}", b"NaN"])
def test_invalid_json(raw: bytes) -> None:
    invalid(KEY, raw, "malformed_json")


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"webhook_abc"', b"null"])
def test_not_an_object(raw: bytes) -> None:
    invalid(KEY, raw, "schema_invalid")


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "webhook_\ud800"},  # once a UnicodeEncodeError out of the table's callback
        {"name": "n\udcff"},
        {"secret": "\udfff"},
        {"events": ["\ud800"]},
        {"owner": {"\ud800": 1}},
    ],
)
def test_lone_surrogates_are_invalid_text(changes: dict[str, Any]) -> None:
    raw = encode(record(**changes))  # json.dumps escapes them: "\ud800"
    error = invalid(KEY, raw, "invalid_text")
    (field,) = changes
    assert f"$.{field}" in error.detail
    with pytest.raises(InvalidSubscription) as info:
        webhook_from_record(record(**changes))
    assert info.value.reason == "invalid_text"


@pytest.mark.parametrize(
    "changes",
    [
        {"events": []},
        {"events": ["post.updated"]},
        {"events": ["post.created", "post.created"]},
        {"active": "yes"},
        {"user_id": ""},
        {"site_id": ""},
        {"secret": ""},
        {"name": 1},
        {"id": ""},
        {"url": 1},
    ],
)
def test_schema_errors(changes: dict[str, Any]) -> None:
    (field,) = changes
    key = KEY if field != "id" else b""
    error = invalid(key, encode(record(**changes)), "schema_invalid")
    assert f"$.{field}" in error.detail


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999/x", "http://xn--/", "ftp://hooks.example", "https://has space", ""],
)
def test_a_stored_url_no_one_could_use_keeps_the_webhook(url: str) -> None:
    # Its deliveries are dead-lettered (invalid_url), visibly to its owner; writers refuse
    # such URLs (WebhookStore.create/update/put, the CLI).
    webhook = parse_webhook(KEY, encode(record(url=url)))
    assert webhook is not None and webhook.url == url


def test_user_id_is_required_only_for_account_scope() -> None:
    site_scoped = record()
    del site_scoped["user_id"]
    assert site_scoped.get("site_id")
    webhook = parse_webhook(KEY, encode(site_scoped))
    assert webhook is not None and webhook.user_id is None
    account_scoped = dict(site_scoped, site_id=None)
    error = invalid(KEY, encode(account_scoped), "schema_invalid")
    assert "user_id" in error.detail


@pytest.mark.parametrize("field", ["id", "name", "url", "secret", "events", "active"])
def test_missing_required_field(field: str) -> None:
    value = record()
    del value[field]
    error = invalid(KEY, encode(value), "schema_invalid")
    assert repr(field) in error.detail
    assert SECRET not in error.detail


def test_a_schema_error_never_quotes_the_value() -> None:
    # A producer that swapped url and secret, a previous secret in an object.
    error = invalid(
        KEY, encode(record(name=SECRET * 100, previous_secret={"v": SECRET})), "schema_invalid"
    )
    assert "$.name" in error.detail and "$.previous_secret" in error.detail
    assert "expected string or null, got object" in error.detail
    assert SECRET not in str(error)


@pytest.mark.parametrize(
    "secret", [{"value": "hunter2-secret-value"}, ["hunter2-secret-value"], 987654321123]
)
@pytest.mark.parametrize("field", ["secret", "previous_secret"])
def test_non_string_secret_is_not_quoted(field: str, secret: Any) -> None:
    error = invalid(KEY, encode(record(**{field: secret})), "schema_invalid")
    assert f"$.{field}" in error.detail
    text = str(secret)
    assert "hunter2-secret-value" not in str(error)
    assert text not in str(error)


KEYS = st.one_of(st.none(), st.binary(max_size=12), st.sampled_from([KEY, b"\xff", b""]))
TEXT = st.text(st.characters(exclude_categories=()), max_size=8)  # lone surrogates included
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def hostile_values(draw: st.DrawFn) -> bytes | None:
    """Records near a valid one: fields missing, of other types, with odd text; or any bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.binary(max_size=40))
    value = record()
    for name in draw(st.lists(st.sampled_from([*record(), "previous_secret", "x"]), max_size=4)):
        if draw(st.booleans()):
            value.pop(name, None)
        else:
            value[name] = draw(JSON)
    return json.dumps(value, allow_nan=True).encode("utf-8")


@given(KEYS, hostile_values())
def test_parse_webhook_is_total(key: bytes | None, raw: bytes | None) -> None:
    """Whatever the record, a webhook, a tombstone, or InvalidSubscription with a bounded
    reason: the subscription table reads every record through here."""
    try:
        webhook = parse_webhook(key, raw)
    except InvalidSubscription as exc:
        assert exc.reason in RECORD_PROBLEMS
        assert str(exc).isprintable()  # one line, safe to print and log
        return
    if webhook is not None:
        assert webhook.id == webhook_key(key)
        webhook.to_bytes().decode("utf-8")
        webhook.id.encode("utf-8")
        # Written again as WebhookStore.write writes it (a disable, a rotation).
        again = webhook_from_record(webhook.to_record()).to_record()
        written = jsoncanon.dumps(again, big_integers=True)
        assert jsoncanon.loads(written) == jsoncanon.loads(webhook.to_bytes())


# ------------------------------------------------------------------------------- repr


def test_repr_hides_the_secret() -> None:
    webhook = hook("w1")
    for text in (repr(webhook), str(webhook), repr([webhook]), f"{webhook!r}"):
        assert SECRET not in text
        assert "secret='***'" in text
        assert "'w1'" in text


def test_secret_is_not_part_of_extra_repr() -> None:
    webhook = Webhook(
        id="w",
        name="n",
        url="https://x",
        secret=SECRET,
        events=frozenset({"*"}),
        site_id=None,
        user_id="u",
        extra={"note": "x"},
    )
    assert SECRET not in repr(webhook)


# ------------------------------------------------------------------------------ match


def test_site_scope() -> None:
    index = SubscriptionIndex([hook("w1", site_id="s1"), hook("w2", site_id="s2")])
    assert ids(index.match(event(site_id="s1"))) == ["w1"]
    assert ids(index.match(event(site_id="s2"))) == ["w2"]
    assert index.match(event(site_id="s3")) == []


def test_site_scope_ignores_the_user_id_of_the_event() -> None:
    index = SubscriptionIndex([hook("w1", site_id="s1", user_id="u1")])
    assert ids(index.match(event(site_id="s1", user_id="u2"))) == ["w1"]


def test_account_scope_matches_every_site_of_the_user() -> None:
    index = SubscriptionIndex([hook("acct", site_id=None, user_id="u1")])
    assert ids(index.match(event(site_id="s1", user_id="u1"))) == ["acct"]
    assert ids(index.match(event(site_id="s-new", user_id="u1"))) == ["acct"]
    assert index.match(event(site_id="s1", user_id="u2")) == []


def test_site_and_account_scopes_combine_without_duplicates() -> None:
    index = SubscriptionIndex(
        [hook("b-site", site_id="s1"), hook("a-acct", site_id=None, user_id="u1")]
    )
    assert ids(index.match(event(site_id="s1", user_id="u1"))) == ["a-acct", "b-site"]


@pytest.mark.parametrize("event_type", ["post.created", "site.created", "subscription.cancelled"])
def test_star_matches_every_type(event_type: str) -> None:
    index = SubscriptionIndex([hook("w", events=(ALL_EVENTS,))])
    assert ids(index.match(event(event_type))) == ["w"]


def test_event_filter() -> None:
    index = SubscriptionIndex(
        [
            hook("posts", events=("post.created", "post.published")),
            hook("subs", events=("subscription.created",)),
        ]
    )
    assert ids(index.match(event("post.created"))) == ["posts"]
    assert ids(index.match(event("post.published"))) == ["posts"]
    assert ids(index.match(event("subscription.created"))) == ["subs"]
    assert index.match(event("post.deleted")) == []


def test_inactive_webhooks_are_skipped() -> None:
    index = SubscriptionIndex([hook("on"), hook("off", active=False)])
    assert ids(index.match(event())) == ["on"]
    acct = SubscriptionIndex([hook("off", site_id=None, active=False)])
    assert acct.match(event()) == []


def test_match_is_ordered_by_id() -> None:
    names = ["w10", "w2", "a", "w1", "Z", "m"]
    index = SubscriptionIndex(
        [hook(n, site_id=("s1" if i % 2 else None)) for i, n in enumerate(names)]
    )
    assert ids(index.match(event())) == sorted(names)


def test_remove() -> None:
    index = SubscriptionIndex([hook("w1"), hook("w2", site_id=None)])
    index.remove("w1")
    assert ids(index.match(event())) == ["w2"]
    index.remove("w2")
    assert index.match(event()) == []
    index.remove("never-existed")
    assert len(index) == 0


def test_replace_changes_the_filter() -> None:
    index = SubscriptionIndex([hook("w", events=("post.created",))])
    index.put(hook("w", events=("post.deleted",)))
    assert index.match(event("post.created")) == []
    assert ids(index.match(event("post.deleted"))) == ["w"]
    assert len(index) == 1


def test_replace_moves_between_sites() -> None:
    index = SubscriptionIndex([hook("w", site_id="s1")])
    index.put(hook("w", site_id="s2"))
    assert index.match(event(site_id="s1")) == []
    assert ids(index.match(event(site_id="s2"))) == ["w"]


def test_replace_from_site_scope_to_account_scope_and_back() -> None:
    index = SubscriptionIndex([hook("w", site_id="s1", user_id="u1")])
    # Site-scoped: another user's event on s1 matches, the user's other site does not.
    assert ids(index.match(event(site_id="s1", user_id="u9"))) == ["w"]
    assert index.match(event(site_id="s2", user_id="u1")) == []

    index.put(hook("w", site_id=None, user_id="u1"))
    assert ids(index.match(event(site_id="s2", user_id="u1"))) == ["w"]
    assert index.match(event(site_id="s1", user_id="u9")) == []
    assert len(index.match(event(site_id="s1", user_id="u1"))) == 1

    index.put(hook("w", site_id="s3", user_id="u1"))
    assert index.match(event(site_id="s2", user_id="u1")) == []
    assert ids(index.match(event(site_id="s3", user_id="u1"))) == ["w"]


def test_replace_with_inactive_stops_matching() -> None:
    index = SubscriptionIndex([hook("w")])
    index.put(hook("w", active=False))
    assert index.match(event()) == []
    index.put(hook("w", active=True))
    assert ids(index.match(event())) == ["w"]


def test_active_count() -> None:
    index = SubscriptionIndex()
    assert (len(index), index.active_count) == (0, 0)
    index.put(hook("a"))
    index.put(hook("b", active=False))
    index.put(hook("c", site_id=None))
    assert (len(index), index.active_count) == (3, 2)
    index.put(hook("a", active=False))
    assert (len(index), index.active_count) == (3, 1)
    index.put(hook("b", active=True))
    assert (len(index), index.active_count) == (3, 2)
    index.put(hook("b", active=True))
    assert (len(index), index.active_count) == (3, 2)
    index.remove("c")
    assert (len(index), index.active_count) == (2, 1)
    index.remove("b")
    index.remove("b")
    assert (len(index), index.active_count) == (1, 0)


def test_lookup_helpers() -> None:
    w1, w2 = hook("w1"), hook("w2")
    index = SubscriptionIndex([w2, w1])
    assert "w1" in index
    assert "w3" not in index
    assert index.get("w1") is w1
    assert index.get("w3") is None
    assert index.all() == [w1, w2]


# ------------------------------------------------------------------------- test.event


def ping(webhook_id: str, *, site_id: str = "s1", user_id: str = "u1") -> Event:
    """A ``test.event`` naming ``webhook_id`` (the dashboard's "send test" button)."""
    return event(TEST_EVENT, site_id=site_id, user_id=user_id, data={"webhook_id": webhook_id})


def test_test_event_goes_only_to_the_named_webhook_whatever_its_filter() -> None:
    index = SubscriptionIndex(
        [
            hook("named", events=("post.created",)),
            hook("star", events=(ALL_EVENTS,)),
            hook("wants-tests", events=(TEST_EVENT,)),
            hook("acct", site_id=None, events=(ALL_EVENTS,)),
        ]
    )
    assert ids(index.match(ping("named"))) == ["named"]
    assert ids(index.match(ping("star"))) == ["star"]
    assert ids(index.match(ping("acct"))) == ["acct"]


def test_test_event_for_an_unknown_webhook() -> None:
    index = SubscriptionIndex([hook("w", events=(ALL_EVENTS,))])
    assert index.match(ping("nope")) == []


def test_test_event_not_to_an_inactive_webhook() -> None:
    index = SubscriptionIndex([hook("w", active=False)])
    assert index.match(ping("w")) == []


def test_test_event_not_to_another_users_webhook() -> None:
    index = SubscriptionIndex([hook("w", site_id="s1", user_id="u1")])
    assert index.match(ping("w", site_id="s1", user_id="u2")) == []
    assert ids(index.match(ping("w", site_id="s1", user_id="u1"))) == ["w"]


def test_test_event_after_removal() -> None:
    index = SubscriptionIndex([hook("w")])
    index.remove("w")
    assert index.match(ping("w")) == []


@pytest.mark.parametrize("expires", ["not a time", "2026-12-03T10:00:00"])
def test_an_expiry_that_is_not_a_zoned_time_ends_the_overlap(expires: str) -> None:
    from datetime import UTC, datetime

    from bridge.subscriptions.webhook import Webhook

    webhook = Webhook(
        id="w",
        name="w",
        url="https://hooks.example/w",
        secret="current-secret-0123456789",
        events=frozenset({"*"}),
        site_id=None,
        user_id="u",
        previous_secret="previous-secret-0123456789",
        previous_secret_expires_at=expires,
    )
    assert webhook.signing_secrets(datetime(2026, 12, 1, tzinfo=UTC)) == [webhook.secret]


@pytest.mark.parametrize("depth", [100, 600, 900])
def test_events_nested_past_the_validators_recursion_are_schema_invalid(depth: int) -> None:
    """Some 500 levels of arrays in ``events`` made the schema's check of unique items raise
    RecursionError out of parse_webhook (and every read of the subscriptions topic by the
    management commands) until 2026-12-07."""
    nested = "[" * depth + "]" * depth
    raw = json.dumps(record()).replace(
        '"events": ["post.created", "post.published"]', f'"events": [{nested}]'
    )
    assert nested in raw
    problem = invalid(KEY, raw.encode(), "schema_invalid")
    assert "[[" not in str(problem)


#: Fields the bridge refuses: another field nested deeper than any encoder writes (kept as it
#: is, it could not be written again), a rate_limit the API could not answer with.
UNWRITABLE = {
    "other-field-nested-300": ("labels", b"[" * 300 + b"]" * 300, "cannot be written again"),
    "rate-limit-beyond-2^53": ("rate_limit", b"9007199254740993", "rate_limit is an integer"),
}


@pytest.mark.parametrize(("field", "value", "why"), UNWRITABLE.values(), ids=UNWRITABLE.keys())
def test_a_record_the_bridge_could_not_write_again_is_schema_invalid(
    field: str, value: bytes, why: str
) -> None:
    """The record was matched, and every write of it the bridge makes (a disable, a rotation,
    through WebhookStore.write) failed with UnencodableValue (until 2026-12-07)."""
    raw = encode(record())[:-1] + f', "{field}": '.encode() + value + b"}"
    problem = invalid(KEY, raw, "schema_invalid")
    assert why in str(problem) and "[[" not in str(problem)
    with pytest.raises(InvalidSubscription, match="schema_invalid"):
        webhook_from_record(jsoncanon.loads(raw))
    # The record next to it is read, and matched, as before.
    webhook = parse_webhook(b"webhook_good", encode(record(id="webhook_good")))
    assert webhook is not None
    index = SubscriptionIndex([webhook])
    matched = index.match(event("post.created", site_id="site_789", user_id="user_456"))
    assert [w.id for w in matched] == ["webhook_good"]


#: A 64-bit id, as Java and Go producers write them: beyond 2^53, not a double's digits.
CRM_ID = 1234567890123456789


@pytest.mark.parametrize("value", [CRM_ID, -CRM_ID, 2**63 - 1, 2**64 + 1, [{"id": CRM_ID}]])
def test_an_integer_beyond_2_53_in_another_field_is_read_matched_and_written_back(
    value: object,
) -> None:
    """Refused as schema_invalid on 2026-12-07, the webhook then left out of matching: the
    record is the bridge's own state, never sent to a JavaScript receiver, and is written back
    with the integer's digits as read."""
    text = json.dumps(value, separators=(",", ":")).encode()
    raw = encode(record())[:-1] + b', "crm_id": ' + text + b"}"
    webhook = parse_webhook(KEY, raw)
    assert webhook is not None and webhook.extra["crm_id"] == value
    matched = SubscriptionIndex([webhook]).match(
        event("post.created", site_id="site_789", user_id="user_456")
    )
    assert ids(matched) == [webhook.id]
    assert b'"crm_id":' + text in webhook.to_bytes()
    assert webhook_from_record(jsoncanon.loads(raw)).extra == webhook.extra


def test_an_integer_beyond_what_json_reads_is_refused_as_built_in_python() -> None:
    """loads refuses a number beyond the doubles (malformed_json); one built in Python is
    refused as what could not be written again."""
    with pytest.raises(InvalidSubscription, match="cannot be written again"):
        webhook_from_record(record(crm_id=2**1100))


def test_a_previous_secret_no_one_can_sign_with_ends_the_overlap() -> None:
    """A Standard Webhooks webhook's previous secret that is not whsec_ base64: signed with the
    current secret alone (every delivery failed as the bridge's error until 2026-12-07)."""
    changes = {
        "standard_webhooks": True,
        "secret": "whsec_" + "A" * 32,
        "previous_secret": "whsec_!!not base64!!",
        "previous_secret_expires_at": "2999-01-01T00:00:00.000Z",
    }
    webhook = parse_webhook(KEY, encode(record(**changes)))
    assert webhook is not None and webhook.previous_secret is None
    good = {**changes, "previous_secret": "whsec_" + "B" * 32}
    kept = parse_webhook(KEY, encode(record(**good)))
    assert kept is not None and kept.previous_secret == "whsec_" + "B" * 32


def test_nesting_past_the_recursion_behind_a_shallow_error_is_schema_invalid() -> None:
    """The compiled check stops at a shallow error (no name); the pass that words the errors
    went on into the nesting and raised RecursionError (until 2026-12-07)."""
    # The depths where the parser reads it and the wording pass does not depend on the
    # stack's depth at the call: every depth around them.
    for depth in range(700, 1000, 3):
        nested = "[" * depth + "]" * depth
        raw = (
            '{"id":"webhook_abc","url":"https://h.example/","secret":"s","active":true,'
            f'"site_id":"s1","events":[{nested},{nested}]}}'
        ).encode()
        with pytest.raises(InvalidRecord):  # schema_invalid, or the parser's malformed_json
            parse_webhook(KEY, raw)
