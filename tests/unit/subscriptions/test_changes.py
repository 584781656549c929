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
from bridge.subscriptions.webhook import webhook_from_record

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
