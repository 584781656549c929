"""bridge.subscriptions.changes: the records a change writes, from any record it is given."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from bridge.errors import InvalidSubscription
from bridge.subscriptions.changes import (
    MIN_RATE_LIMIT,
    created_record,
    disabled_record,
    rotated_record,
    updated_record,
)
from bridge.subscriptions.webhook import Webhook, parse_webhook, webhook_from_record

NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
LAST = "9999-12-31T23:59:59.999Z"


@pytest.mark.parametrize("change", ["update", "rotate", "disable"])
def test_a_webhook_stamped_in_the_last_millisecond_of_year_9999_can_be_changed(
    change: str,
) -> None:
    """A change is stamped a millisecond after the webhook's own ``updated_at`` when that is
    later than now; past year 9999 there is none, and until 2026-12-07 the OverflowError
    left such a webhook (another service's record) unchangeable, the bridge's own disable
    included (retried for ever). The clock's time stands then."""
    record = created_record(
        webhook_id="wh", url="https://example.com/h", events=["*"], now=NOW, site_id="s"
    )
    webhook = webhook_from_record({**record, "updated_at": LAST})
    if change == "update":
        changed = updated_record(webhook, {"name": "renamed"}, NOW)
    elif change == "rotate":
        changed = rotated_record(webhook, now=NOW)
    else:
        changed = disabled_record(webhook, "failing", NOW)
    assert webhook_from_record(changed).updated_at is not None


OLD = "https://bob:Old-pw-secret@old.example.com/in?token=Old-token-secret"
NEW = "https://new.example.net/hook"


def webhook_named(name: str | None, url: str = OLD) -> Webhook:
    record = created_record(webhook_id="wh", url=url, events=["*"], now=NOW, site_id="s", name=name)
    return webhook_from_record(record)


@pytest.mark.parametrize("url", [OLD, "https://old.example.com/in?token=" + "t" * 600])
def test_a_webhook_named_after_its_url_is_renamed_with_it(url: str) -> None:
    """Its name (the URL, or its first 500 characters) went on naming the old URL, and every
    delivery body sent it, query token and credentials, to the new endpoint (until
    2026-12-07)."""
    webhook = webhook_named(None, url)
    changed = updated_record(webhook, {"url": NEW}, NOW)
    assert changed["name"] == NEW


@pytest.mark.parametrize(
    ("name", "changes", "renamed"),
    [
        ("Orders", {"url": NEW}, "Orders"),  # a name of its own stays
        (None, {"url": NEW, "name": "Chosen"}, "Chosen"),  # a name given with the URL wins
        (None, {"events": ["post.created"]}, OLD),  # no new URL, no new name
    ],
)
def test_only_a_default_name_follows_the_url(
    name: str | None, changes: dict[str, object], renamed: str
) -> None:
    changed = updated_record(webhook_named(name), changes, NOW)
    assert changed["name"] == renamed


# --- the lowest rate_limit -------------------------------------------------------------------


@pytest.mark.parametrize("rate", [5e-324, 1e-320, 1e-6, 0.0099, 0, -1, float("nan")])
def test_a_rate_limit_below_the_lowest_is_refused_by_every_change(rate: float) -> None:
    """Until 2026-12-07 any positive rate was written: the webhook got its first delivery, and
    every later one was deferred (``rate_limited``) until dead-lettered; at 1e-320 the wait was
    infinite."""
    with pytest.raises(InvalidSubscription) as caught:
        created_record(
            webhook_id="wh", url=NEW, events=["*"], now=NOW, site_id="s", rate_limit=rate
        )
    assert caught.value.reason == "rate_limit_too_low" and "0.01" in caught.value.detail
    current = webhook_named("n", NEW)
    with pytest.raises(InvalidSubscription) as caught:
        updated_record(current, {"rate_limit": rate}, NOW)
    assert caught.value.reason == "rate_limit_too_low"


def test_a_rate_limit_at_the_lowest_is_taken_and_none_removes_it() -> None:
    record = created_record(
        webhook_id="wh", url=NEW, events=["*"], now=NOW, site_id="s", rate_limit=MIN_RATE_LIMIT
    )
    assert webhook_from_record(record).rate_limit == 0.01 == MIN_RATE_LIMIT
    removed = updated_record(webhook_from_record(record), {"rate_limit": None}, NOW)
    assert "rate_limit" not in removed


@pytest.mark.parametrize("written", [5e-324, 1e-320, 1e-6, 0.005])
def test_a_record_below_the_lowest_rate_limit_is_read_as_it_and_written_so(
    written: float,
) -> None:
    """A record of an older writer, or of another producer: read, delivered and shown at
    0.01 (its deliveries after the first were deferred until dead-lettered until 2026-12-07),
    the reader told once, and the next change (any: the bridge's disable too) writes 0.01."""
    raised: list[tuple[str, float]] = []
    value = {**webhook_named("n", NEW).to_record(), "rate_limit": written}
    webhook = parse_webhook(
        b"wh", json.dumps(value).encode(), on_raised_rate=lambda *seen: raised.append(seen)
    )
    assert webhook is not None and webhook.rate_limit == MIN_RATE_LIMIT
    assert raised == [("wh", written)]
    assert webhook_from_record(value).rate_limit == MIN_RATE_LIMIT
    for changed in (
        updated_record(webhook, {"name": "renamed"}, NOW),
        disabled_record(webhook, "failing", NOW),
        rotated_record(webhook, now=NOW),
    ):
        assert changed["rate_limit"] == MIN_RATE_LIMIT
    # A rate at or above the lowest is read as written, and nothing is told.
    for rate in (MIN_RATE_LIMIT, 5):
        fine = {**value, "rate_limit": rate}
        assert parse_webhook(b"wh", json.dumps(fine).encode(), on_raised_rate=raised.append)
    assert len(raised) == 1


# --- rotation overlaps and retired secrets -------------------------------------------------

WHSEC = "whsec_" + base64.b64encode(b"c" * 32).decode()
WHSEC_NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
PREVIOUS = "whsec_" + base64.b64encode(b"p" * 32).decode()
SOON = "2026-12-07T05:00:00.000Z"  # an hour after NOW
PAST = "2026-12-07T03:59:00.000Z"


def webhook_with(**fields: object) -> Webhook:
    record = created_record(
        webhook_id="wh", url=NEW, events=["*"], now=NOW, site_id="s", secret=WHSEC
    )
    return webhook_from_record({**record, **fields})


def test_an_overlap_of_a_webhook_without_standard_headers_is_refused() -> None:
    """X-Webhook-Signature carries one signature, the current secret's: until 2026-12-07 the
    overlap was written, carried by no delivery, and a second one refused as running."""
    plain = webhook_with()
    for overlap in (1.0, 3600.0):
        with pytest.raises(InvalidSubscription) as caught:
            rotated_record(plain, now=NOW, overlap=overlap)
        assert caught.value.reason == "overlap_needs_standard_webhooks"
        assert "X-Webhook-Signature holds one signature" in caught.value.detail
    rotated = rotated_record(plain, now=NOW)
    assert "previous_secret" not in rotated and rotated["secret"] != WHSEC
    standard = rotated_record(webhook_with(standard_webhooks=True), now=NOW, overlap=3600)
    assert standard["previous_secret"] == WHSEC
    assert standard["previous_secret_expires_at"] == SOON


def test_every_change_drops_a_previous_secret_whose_overlap_has_ended() -> None:
    """Until 2026-12-07 every write after the overlap (an update, the bridge's disable, a
    rotation) wrote the retired secret again to the compacted topic."""
    ended = webhook_with(
        standard_webhooks=True, previous_secret=PREVIOUS, previous_secret_expires_at=PAST
    )
    for changed in (
        updated_record(ended, {"name": "renamed"}, NOW),
        disabled_record(ended, "failing", NOW),
        rotated_record(ended, now=NOW),
    ):
        assert "previous_secret" not in changed
        assert "previous_secret_expires_at" not in changed
    # ... and an overlap may begin again, keeping the secret it replaces alone.
    again = rotated_record(ended, now=NOW, secret=WHSEC_NEW, overlap=3600)
    assert (again["previous_secret"], again["previous_secret_expires_at"]) == (WHSEC, SOON)


@pytest.mark.parametrize(
    "expiry", [None, "not a time", "2026-12-07T04:00:00", PAST, "2026-12-07T04:00:00.000Z"]
)
def test_a_previous_secret_without_a_running_overlap_is_dropped(expiry: str | None) -> None:
    """No expiry, one that is no time with a zone, or one not after now: the previous secret
    signs nothing (Webhook.signing_secrets), and no write carries it on."""
    webhook = webhook_with(
        standard_webhooks=True, previous_secret=PREVIOUS, previous_secret_expires_at=expiry
    )
    changed = updated_record(webhook, {"name": "renamed"}, NOW)
    assert "previous_secret" not in changed and "previous_secret_expires_at" not in changed


def test_a_running_overlap_is_kept_by_every_change() -> None:
    running = webhook_with(
        standard_webhooks=True, previous_secret=PREVIOUS, previous_secret_expires_at=SOON
    )
    for changed in (
        updated_record(running, {"name": "renamed"}, NOW),
        disabled_record(running, "failing", NOW),
    ):
        assert (changed["previous_secret"], changed["previous_secret_expires_at"]) == (
            PREVIOUS,
            SOON,
        )
    with pytest.raises(InvalidSubscription) as caught:
        rotated_record(running, now=NOW, overlap=60)
    assert caught.value.reason == "overlap_running"


@pytest.mark.parametrize(("previous", "kept"), [("p" * 32, False), (PREVIOUS, True)])
def test_turning_standard_signing_on_keeps_only_a_whsec_previous_secret(
    previous: str, kept: bool
) -> None:
    """A webhook an older version gave an overlap without Standard Webhooks headers: turned
    on, its header was signed with the previous secret too, a non-whsec_ one included, which
    Standard Webhooks signing never uses (until 2026-12-07). A whsec_ one signs on."""
    older = webhook_with(previous_secret=previous, previous_secret_expires_at=SOON)
    changed = updated_record(older, {"standard_webhooks": True}, NOW)
    turned_on = webhook_from_record(changed)
    assert ("previous_secret" in changed) == kept
    assert turned_on.signing_secrets(NOW) == ([WHSEC, previous] if kept else [WHSEC])
    assert turned_on.overlap_end(NOW) == (SOON if kept else None)


def test_a_webhook_without_standard_headers_keeps_no_previous_secret() -> None:
    """No header carries it: turning the headers off ends the overlap, and any change of a
    webhook without them (an older version's overlap) drops it."""
    running = webhook_with(
        standard_webhooks=True, previous_secret=PREVIOUS, previous_secret_expires_at=SOON
    )
    off = updated_record(running, {"standard_webhooks": False}, NOW)
    assert "previous_secret" not in off and "previous_secret_expires_at" not in off
    older = webhook_with(previous_secret="p" * 32, previous_secret_expires_at=SOON)
    assert older.overlap_end(NOW) is None  # shown by no answer
    for changed in (
        updated_record(older, {"name": "renamed"}, NOW),
        disabled_record(older, "gone", NOW),
    ):
        assert "previous_secret" not in changed and "previous_secret_expires_at" not in changed


def test_overlap_end_is_shown_while_the_previous_secret_signs() -> None:
    running = webhook_with(
        standard_webhooks=True, previous_secret=PREVIOUS, previous_secret_expires_at=SOON
    )
    assert running.overlap_end(NOW) == SOON
    assert running.overlap_end(NOW + timedelta(hours=1)) is None
    assert webhook_with().overlap_end(NOW) is None
