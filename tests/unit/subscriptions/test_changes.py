"""bridge.subscriptions.changes: the records a change writes, from any record it is given."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.subscriptions.changes import (
    created_record,
    disabled_record,
    rotated_record,
    updated_record,
)
from bridge.subscriptions.webhook import Webhook, webhook_from_record

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
