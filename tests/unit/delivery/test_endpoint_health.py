"""bridge.delivery.endpoint_health.EndpointHealth: status transitions, with a dict standing in for
the status table.

``table`` plays the shared status table (what every worker has published); ``publish`` copies a
change into it the way the status topic eventually would.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.contract.schemas import schema_errors
from bridge.delivery.endpoint_health import (
    APPLIED_GRACE,
    FAILURE_GAP,
    EndpointHealth,
    HealthChange,
)

DISABLE_AFTER = 5 * 86400.0
W = "webhook_1"
T0 = 1_700_000_000.0


def make(table: dict[str, dict[str, Any]] | None = None) -> tuple[EndpointHealth, dict[str, Any]]:
    table = {} if table is None else table
    return EndpointHealth(DISABLE_AFTER, table.get), table


def publish(table: dict[str, dict[str, Any]], change: HealthChange | None) -> None:
    assert change is not None
    table[change.webhook_id] = change.to_record("2024-01-15T10:30:00.000Z")


def failing(since: float, last: float | None = None, wh: str = W) -> HealthChange:
    """A ``failing`` decision: a period begun at ``since``, its latest failure ``last``
    (``since`` unless given)."""
    return HealthChange(wh, "failing", since, last_failure_at=since if last is None else last)


def keep_failing(
    health: EndpointHealth, start: float, end: float, table: dict[str, Any] | None = None
) -> None:
    """Fail from just after ``start`` until before ``end`` twice a day, as an endpoint sent
    something every 12 hours does; the hourly refreshes are published to ``table`` if given.
    Nothing but a refresh of the period begun at ``start``."""
    now = start + 12 * 3600.0
    while now < end:
        change = health.on_failure(W, now)
        assert change is None or change == failing(start, now)
        if table is not None and change is not None:
            publish(table, change)
        now += 12 * 3600.0


def test_first_failure_starts_failing_since_now() -> None:
    health, _ = make()
    assert health.on_failure(W, T0) == failing(T0)


def test_later_failures_publish_nothing_until_disable_after() -> None:
    health, _ = make()
    health.on_failure(W, T0)
    for now in (T0 + 1, T0 + 3599):
        assert health.on_failure(W, now) is None
    # An hour after the latest failure published, the period's failures are published again.
    assert health.on_failure(W, T0 + 3600) == failing(T0, T0 + 3600)
    assert health.on_failure(W, T0 + 3601) is None
    keep_failing(health, T0, T0 + DISABLE_AFTER)
    change = health.on_failure(W, T0 + DISABLE_AFTER)
    assert change == HealthChange(W, "disabled", T0, "failing")
    # Disabled once: nothing more, however many failures follow.
    assert health.on_failure(W, T0 + DISABLE_AFTER + 1) is None
    assert health.on_failure(W, T0 + 10 * DISABLE_AFTER) is None


def test_success_after_failing_is_published_once() -> None:
    health, table = make()
    publish(table, health.on_failure(W, T0))
    assert health.on_success(W) == HealthChange(W, "healthy", None)
    # The status table has not caught up yet (it still says failing): no repeat.
    assert table[W]["state"] == "failing"
    assert health.on_success(W) is None
    assert health.on_success(W) is None


def test_success_when_healthy_publishes_nothing() -> None:
    health, _ = make()
    assert health.on_success(W) is None
    assert health.on_success(W) is None


def test_failure_after_recovery_starts_a_new_period() -> None:
    health, _ = make()
    health.on_failure(W, T0)
    health.on_success(W)
    later = T0 + DISABLE_AFTER + 10
    assert health.on_failure(W, later) == failing(later)
    assert health.on_failure(W, later + 3599) is None


def test_on_gone_disables_with_reason_gone() -> None:
    health, _ = make()
    assert health.on_gone(W, T0) == HealthChange(W, "disabled", T0, "gone")
    assert health.on_failure(W, T0 + 1) is None


def test_on_gone_keeps_the_failing_since() -> None:
    health, _ = make()
    health.on_failure(W, T0)
    assert health.on_gone(W, T0 + 60) == HealthChange(W, "disabled", T0, "gone")


def test_webhook_enabled_after_disable_starts_a_new_failing_period() -> None:
    health, _ = make()
    health.on_failure(W, T0)
    health.on_failure(W, T0 + DISABLE_AFTER)  # disabled
    health.on_webhook_enabled(W)
    later = T0 + 2 * DISABLE_AFTER
    assert health.on_failure(W, later) == failing(later)
    assert health.on_failure(W, later + 1) is None
    keep_failing(health, later, later + DISABLE_AFTER)
    assert health.on_failure(W, later + DISABLE_AFTER) == HealthChange(
        W, "disabled", later, "failing"
    )


def test_webhook_enabled_after_gone_then_success_is_healthy() -> None:
    health, table = make()
    publish(table, health.on_gone(W, T0))
    health.on_webhook_enabled(W)
    assert health.on_success(W) == HealthChange(W, "healthy", None)


def test_webhook_enabled_when_not_disabled_changes_nothing() -> None:
    health, _ = make()
    health.on_failure(W, T0)
    health.on_webhook_enabled(W)
    # Still the same failing period: no new "failing", and disabled on schedule.
    assert health.on_failure(W, T0 + 10) is None
    keep_failing(health, T0, T0 + DISABLE_AFTER)
    assert health.on_failure(W, T0 + DISABLE_AFTER) == HealthChange(W, "disabled", T0, "failing")


def test_webhooks_are_independent() -> None:
    health, _ = make()
    health.on_failure("a", T0)
    assert health.on_failure("b", T0 + 5) == failing(T0 + 5, wh="b")
    assert health.on_success("c") is None
    assert health.on_failure("a", T0 + DISABLE_AFTER) is not None


# -- the published table (other workers' decisions) is respected ---------------------------------


def test_published_failing_period_is_continued_not_restarted() -> None:
    table = {W: {"webhook_id": W, "state": "failing", "failing_since": T0, "reason": None}}
    health, _ = make(table)
    assert health.on_failure(W, T0 + 100) is None
    keep_failing(health, T0, T0 + DISABLE_AFTER)
    assert health.on_failure(W, T0 + DISABLE_AFTER) == HealthChange(W, "disabled", T0, "failing")


def test_published_disabled_is_not_failed_again() -> None:
    table = {W: {"webhook_id": W, "state": "disabled", "failing_since": T0, "reason": "gone"}}
    health, _ = make(table)
    assert health.on_failure(W, T0 + 100) is None
    assert health.on_failure(W, T0 + 10 * DISABLE_AFTER) is None


def test_published_failing_then_success_is_healthy() -> None:
    table = {W: {"webhook_id": W, "state": "failing", "failing_since": T0, "reason": None}}
    health, _ = make(table)
    assert health.on_success(W) == HealthChange(W, "healthy", None)
    assert health.on_success(W) is None


def test_published_healthy_then_failure_is_failing() -> None:
    table = {W: {"webhook_id": W, "state": "healthy", "failing_since": None, "reason": None}}
    health, _ = make(table)
    assert health.on_success(W) is None
    assert health.on_failure(W, T0) == failing(T0)


def test_published_failing_without_since_starts_a_period() -> None:
    table = {W: {"webhook_id": W, "state": "failing", "failing_since": None}}
    health, _ = make(table)
    assert health.on_failure(W, T0) == failing(T0)


def test_published_disabled_then_enabled_starts_afresh() -> None:
    table = {W: {"webhook_id": W, "state": "disabled", "failing_since": T0, "reason": "failing"}}
    health, _ = make(table)
    health.on_webhook_enabled(W)
    later = T0 + 3 * DISABLE_AFTER
    assert health.on_failure(W, later) == failing(later)


def test_published_gone_keeps_its_since() -> None:
    table = {W: {"webhook_id": W, "state": "failing", "failing_since": T0}}
    health, _ = make(table)
    assert health.on_gone(W, T0 + 5) == HealthChange(W, "disabled", T0, "gone")


def test_table_is_read_live() -> None:
    health, table = make()
    # Another worker publishes a failing period after this one was created.
    table[W] = {"webhook_id": W, "state": "failing", "failing_since": T0}
    assert health.on_failure(W, T0 + 1) is None


def test_recovery_published_by_another_worker_ends_the_failing_period() -> None:
    table: dict[str, dict[str, Any]] = {}
    worker_a = EndpointHealth(DISABLE_AFTER, table.get)
    worker_b = EndpointHealth(DISABLE_AFTER, table.get)
    publish(table, worker_a.on_failure(W, T0))
    # Worker B (another partition of the same webhook's deliveries) gets a 200.
    publish(table, worker_b.on_success(W))
    assert table[W]["state"] == "healthy"
    # Days later worker A sees its next failure: a new failing period, not a disable.
    later = T0 + DISABLE_AFTER
    assert worker_a.on_failure(W, later) == failing(later)


def test_own_record_arriving_changes_nothing() -> None:
    health, table = make()
    publish(table, health.on_failure(W, T0))
    assert health.on_failure(W, T0 + 1) is None
    keep_failing(health, T0, T0 + DISABLE_AFTER)
    assert health.on_failure(W, T0 + DISABLE_AFTER) == HealthChange(W, "disabled", T0, "failing")
    publish(table, HealthChange(W, "disabled", T0, "failing"))
    assert health.on_failure(W, T0 + DISABLE_AFTER + 1) is None


def test_failing_period_published_by_another_worker_is_adopted() -> None:
    table: dict[str, dict[str, Any]] = {}
    worker_a = EndpointHealth(DISABLE_AFTER, table.get)
    worker_b = EndpointHealth(DISABLE_AFTER, table.get)
    publish(table, worker_a.on_failure(W, T0))
    publish(table, worker_a.on_success(W))
    # B starts a new failing period; A's next failure continues it rather than starting another.
    publish(table, worker_b.on_failure(W, T0 + 100))
    assert worker_a.on_failure(W, T0 + 200) is None
    keep_failing(worker_a, T0 + 100, T0 + 100 + DISABLE_AFTER)
    assert worker_a.on_failure(W, T0 + 100 + DISABLE_AFTER) == HealthChange(
        W, "disabled", T0 + 100, "failing"
    )


@pytest.mark.parametrize(
    ("change", "record"),
    [
        (
            HealthChange(W, "failing", T0),
            {"state": "failing", "failing_since": T0, "reason": None},
        ),
        (
            HealthChange(W, "disabled", T0, "gone"),
            {"state": "disabled", "failing_since": T0, "reason": "gone", "applied_at": None},
        ),
        (
            HealthChange(W, "healthy", None),
            {"state": "healthy", "failing_since": None, "reason": None},
        ),
    ],
)
def test_to_record(change: HealthChange, record: dict[str, Any]) -> None:
    out = change.to_record("2024-01-15T10:30:00.000Z")
    assert out == {"webhook_id": W, "updated_at": "2024-01-15T10:30:00.000Z", **record}
    assert schema_errors("status", out) == []


# -- an id used again after a delete: the failing period was the deleted webhook's ---------------


def at(seconds: float) -> str:
    """A webhook's ``created_at`` for a Unix time."""
    from bridge.contract.events import format_epoch

    return format_epoch(seconds)


def test_a_webhook_created_after_a_published_failing_period_began_starts_healthy() -> None:
    table = {W: {"webhook_id": W, "state": "failing", "failing_since": T0, "reason": None}}
    health, _ = make(table)
    created = T0 + DISABLE_AFTER - 10
    later = T0 + DISABLE_AFTER + 1
    # The deleted webhook failed since T0: the new one's first failure disabled it at once.
    assert health.on_failure(W, later, at(created)) == failing(later)


def test_a_webhook_created_after_a_published_disable_is_not_disabled() -> None:
    table = {W: {"webhook_id": W, "state": "disabled", "failing_since": T0, "reason": "gone"}}
    health, _ = make(table)
    assert health.on_failure(W, T0 + 100, at(T0 + 50)) == failing(T0 + 100)
    assert health.on_gone(W, T0 + 100, at(T0 + 50)) == HealthChange(W, "disabled", T0 + 100, "gone")


def test_a_success_of_a_new_webhook_replaces_the_deleted_ones_failing_status() -> None:
    table = {W: {"webhook_id": W, "state": "failing", "failing_since": T0, "reason": None}}
    health, _ = make(table)
    assert health.on_success(W, at(T0 + 1)) == HealthChange(W, "healthy", None)


def test_this_workers_own_decision_for_the_deleted_webhook_is_not_inherited() -> None:
    health, _ = make()
    assert health.on_failure(W, T0, at(T0 - 100)) == failing(T0)
    later = T0 + DISABLE_AFTER
    assert health.on_failure(W, later, at(T0 + 1)) == failing(later)


def test_the_same_webhooks_failing_period_goes_on() -> None:
    table = {W: {"webhook_id": W, "state": "failing", "failing_since": T0, "reason": None}}
    health, _ = make(table)
    created = at(T0 - 3600)
    assert health.on_failure(W, T0 + 100, created) is None
    keep_failing(health, T0, T0 + DISABLE_AFTER)
    assert health.on_failure(W, T0 + DISABLE_AFTER, created) == HealthChange(
        W, "disabled", T0, "failing"
    )


@pytest.mark.parametrize("created_at", [None, "not a time", "2024-01-15T10:30:00"])
def test_without_a_readable_created_at_the_published_period_goes_on(
    created_at: str | None,
) -> None:
    table = {W: {"webhook_id": W, "state": "failing", "failing_since": T0, "reason": None}}
    health, _ = make(table)
    keep_failing(health, T0, T0 + DISABLE_AFTER)
    assert health.on_failure(W, T0 + DISABLE_AFTER, created_at) == HealthChange(
        W, "disabled", T0, "failing"
    )


def test_decisions_the_table_moved_on_from_are_swept() -> None:
    """Each failing webhook's decision is kept until the table shows a record of it: those of
    webhooks whose records arrived (or were deleted) are swept as others come (until
    2026-12-06 the decision of every webhook that ever failed, deleted ones too, was kept)."""
    table: dict[str, dict[str, Any]] = {}
    health = EndpointHealth(100.0, table.get)
    for n in range(30_000):
        change = health.on_failure(f"wh_{n}", 1.0)
        assert change is not None
        table[change.webhook_id] = change.to_record("2024-01-15T10:30:00.000Z")
        if n % 2:
            del table[change.webhook_id]  # deleted: its status tombstoned
            health.forget(change.webhook_id)
    assert len(health) <= 20_000
    # What is left judges as before: a kept decision, and one read from the table.
    assert health.on_failure("wh_29998", 2.0) is None  # failing since 1.0, not yet disabled
    assert health.on_failure("wh_1", 2.0) == failing(2.0, wh="wh_1")
    assert health.on_failure("wh_2", 200.0) == HealthChange("wh_2", "disabled", 1.0, "failing")


V1 = "2024-01-15T09:00:00.000Z"  # the version the disable was made for
V2 = "2024-01-15T11:00:00.000Z"  # the webhook turned on again


def _decided(**changes: Any) -> dict[str, Any]:
    change = HealthChange("wh", "disabled", 1.0, "gone", webhook_updated_at=V1)
    return {**change.to_record("2024-01-15T10:00:00.000Z"), **changes}


def test_an_applied_disable_starts_the_health_of_another_version_afresh() -> None:
    """Once its owner marked the disable applied, a delivery of another version of the webhook
    (turned on again since) starts its health afresh, so its failures disable it again (a
    worker started after the re-enable, or that read it before the disable, never disabled it
    again, until 2026-12-06); a delivery of the version the disable names was in flight as it
    was turned off, and changes nothing (it would overwrite the disable with "failing")."""
    table: dict[str, dict[str, Any]] = {"wh": _decided()}
    health = EndpointHealth(100.0, table.get)
    assert health.on_failure("wh", 5.0, updated_at=V1) is None  # not applied yet
    table["wh"] = _decided(applied_at="2024-01-15T10:00:01.000Z")
    assert health.on_failure("wh", 5.0, updated_at=V1) is None  # in flight: nothing
    assert health.on_gone("wh", 5.0, updated_at=V1) is None
    on_again = 1705316400.0  # V2
    again = health.on_failure("wh", on_again + 6.0, updated_at=V2)
    assert again == failing(on_again + 6.0, wh="wh")
    assert health.on_gone("wh", on_again + 7.0, updated_at=V2) == HealthChange(
        "wh", "disabled", on_again + 6.0, "gone"
    )


def test_a_fresh_start_survives_the_mark_of_the_disable_it_followed() -> None:
    """A worker that read the webhook turned on again (the same version: a producer wrote the
    record as it was) before the owner's mark keeps its fresh start when the mark arrives."""
    table: dict[str, dict[str, Any]] = {"wh": _decided()}
    health = EndpointHealth(100.0, table.get)
    health.on_webhook_enabled("wh", V1)
    table["wh"] = _decided(applied_at="2024-01-15T10:00:01.000Z")
    assert health.on_failure("wh", 6.0, updated_at=V1) == failing(6.0, wh="wh")


@pytest.mark.parametrize("version", [None, V1])
def test_a_delivery_made_after_the_grace_of_an_applied_disable_starts_afresh(
    version: str | None,
) -> None:
    """Without a version to tell (a webhook without updated_at), or at the very version the
    disable names (a producer's record republished as it was), the time the delivery was made
    tells: within APPLIED_GRACE of the disable's application it was in flight as the webhook
    was turned off, however long it then waited for its endpoint; made later, it is of the
    webhook turned on again, whose next failures disable it again."""
    applied = "2024-01-15T10:00:00.000Z"
    at = 1705312800.0  # the same moment
    change = HealthChange("wh", "disabled", 1.0, "gone", webhook_updated_at=version)
    record = {**change.to_record(applied), "applied_at": applied}
    health = EndpointHealth(100.0, {"wh": record}.get)
    # Made just before the grace ran out, settled long after: in flight, nothing changes.
    assert health.on_gone("wh", at + 900.0, updated_at=version, made_at=at + 119.0) is None
    assert health.on_failure("wh", at + 900.0, updated_at=version, made_at=at + 119.0) is None
    made = at + APPLIED_GRACE
    again = health.on_failure("wh", made + 5.0, updated_at=version, made_at=made)
    assert again == failing(made + 5.0, wh="wh")


# -- failing *continuously*: a gap, or a webhook changed since, begins a new period --------------

DAY = 86400.0


def test_a_failure_a_day_after_the_last_begins_a_new_period() -> None:
    """One failure, nothing sent for days, one failure: not five days of failing (until
    2026-12-07 the second disabled the webhook at once)."""
    health, table = make()
    publish(table, health.on_failure(W, T0))
    assert health.on_failure(W, T0 + DISABLE_AFTER) == failing(T0 + DISABLE_AFTER)
    # A day at most between failures: the period goes on, and ends in a disable on time.
    health, table = make()
    publish(table, health.on_failure(W, T0))
    now = T0
    while now + FAILURE_GAP < T0 + DISABLE_AFTER:
        now += FAILURE_GAP
        change = health.on_failure(W, now)
        assert change == failing(T0, now)
        publish(table, change)
    assert health.on_failure(W, T0 + DISABLE_AFTER) == HealthChange(W, "disabled", T0, "failing")


def test_another_worker_tells_a_gap_from_the_published_refreshes() -> None:
    table: dict[str, dict[str, Any]] = {}
    worker_a = EndpointHealth(DISABLE_AFTER, table.get)
    worker_b = EndpointHealth(DISABLE_AFTER, table.get)
    publish(table, worker_a.on_failure(W, T0))
    keep_failing(worker_a, T0, T0 + 2 * DAY, table)
    assert table[W]["last_failure_at"] == T0 + 1.5 * DAY
    # B's failure within a day of A's latest goes on with the period; one later begins anew.
    assert worker_b.on_failure(W, T0 + 2.4 * DAY) == failing(T0, T0 + 2.4 * DAY)
    worker_c = EndpointHealth(DISABLE_AFTER, table.get)
    assert worker_c.on_failure(W, T0 + 2.6 * DAY) == failing(T0 + 2.6 * DAY)


def test_a_period_published_without_its_latest_failure_counts_from_its_start() -> None:
    """A record written before ``last_failure_at`` was: its start is the latest failure known."""
    table = {W: {"webhook_id": W, "state": "failing", "failing_since": T0, "reason": None}}
    health, _ = make(table)
    assert health.on_failure(W, T0 + 0.5 * DAY) == failing(T0, T0 + 0.5 * DAY)
    health, _ = make(dict(table))
    assert health.on_failure(W, T0 + 2 * DAY) == failing(T0 + 2 * DAY)


@pytest.mark.parametrize("value", [None, "1700000000", True, [1], {"a": 1}, float("nan")], ids=repr)
def test_an_unreadable_latest_failure_is_none(value: object) -> None:
    table = {
        W: {"webhook_id": W, "state": "failing", "failing_since": T0, "last_failure_at": value}
    }
    health, _ = make(table)
    change = health.on_failure(W, T0 + 2 * DAY)
    assert change == failing(T0 + 2 * DAY)


@pytest.mark.parametrize("how", ["url changed", "turned off and on"])
def test_a_webhook_changed_since_its_period_began_starts_afresh(how: str) -> None:
    """Its URL changed, or its owner turned it off and on again weeks later (a new version,
    ``updated_at``): the new endpoint's first failure is the first of a period (until
    2026-12-07 it inherited the old one's and was disabled at once)."""
    health, table = make()
    v1, v2 = at(T0 - 3600), at(T0 + (4 * DAY if how == "url changed" else 30 * DAY))
    publish(table, health.on_failure(W, T0, updated_at=v1))
    keep_failing(health, T0, T0 + 4 * DAY, table)
    if how == "turned off and on":
        health.on_webhook_enabled(W, v2)  # what a worker calls for the active record
    now = T0 + (5 * DAY if how == "url changed" else 30 * DAY + 60)
    assert health.on_failure(W, now, updated_at=v2, made_at=now) == failing(now)


def test_a_failure_of_the_version_before_goes_on_with_the_new_period() -> None:
    """A delivery in flight as the webhook changed fails as the old version: it neither starts
    another period nor is the new one's disable."""
    health, table = make()
    v1, v2 = at(T0 - 3600), at(T0 + 10)
    publish(table, health.on_failure(W, T0, updated_at=v1))
    publish(table, health.on_failure(W, T0 + 20, updated_at=v2))
    assert table[W]["failing_since"] == T0 + 20
    assert health.on_failure(W, T0 + 30, updated_at=v1) is None
    assert health.on_failure(W, T0 + 40, updated_at=v2) is None


def test_a_refresh_is_a_valid_status_record() -> None:
    change = failing(T0, T0 + 3600)
    record = change.to_record("2024-01-15T10:30:00.000Z")
    assert record["last_failure_at"] == T0 + 3600
    assert schema_errors("status", record) == []


@pytest.mark.parametrize("ahead", [DISABLE_AFTER + 3600.0, 32503680000.0 - T0])
@pytest.mark.parametrize("field", ["created_at", "updated_at"])
def test_a_webhook_stamped_past_the_clock_is_still_disabled_for_failing(
    field: str, ahead: float
) -> None:
    """A webhook whose record is stamped later than now (a writer's fast clock, another
    service's record of year 3000) tells nothing of when its failing began: until 2026-12-07
    every period began "before" it, the webhook was healthy at each failure and never
    disabled. (Once the clock passes the stamp it is read: what failed before it was
    another webhook's.) A stamp within the clock margin (5 minutes) is read as it is."""
    health, table = make()
    stamps = {"created_at": at(T0 - 86400.0), "updated_at": at(T0 - 86400.0)}
    stamps[field] = at(T0 + ahead)
    now, change = T0, None
    while now <= T0 + DISABLE_AFTER:
        change = health.on_failure(W, now, stamps["created_at"], stamps["updated_at"])
        if change is not None:
            publish(table, change)
        now += 3600.0
    assert table[W]["state"] == "disabled" and table[W]["failing_since"] == T0
    # A gone endpoint of such a webhook is disabled too, with its period's start.
    assert health.on_gone("other", T0, stamps["created_at"], stamps["updated_at"]) is not None


def test_a_webhook_stamped_within_the_clock_margin_is_read_as_stamped() -> None:
    """A webhook changed a minute "from now" (clocks of two hosts) after its failing period
    began starts its health afresh, as one changed a minute ago does."""
    table = {W: failing(T0 - 3600.0).to_record(at(T0 - 3600.0))}
    health, _ = make(table)
    assert health.on_failure(W, T0, at(T0 - 86400.0), at(T0 + 60.0)) == failing(T0)


def test_a_success_of_a_webhook_stamped_past_the_clock_ends_its_failing() -> None:
    """Its failing decided here, not yet in the table: the success must still end it (until
    2026-12-07 its far-future created_at made the period "another webhook's", the success
    published nothing, and the next failure went on with the same period)."""
    health, _ = make()
    future = at(32503680000.0)
    assert health.on_failure(W, T0, future) == failing(T0)
    assert health.on_success(W, future, None, T0 + 10) == HealthChange(W, "healthy", None)


def test_a_failing_period_begins_when_its_first_failed_attempt_began() -> None:
    """As the delivery log says (the attempt's ``at``), not when the attempt ended: until
    2026-12-07 ``failing_since`` was up to the HTTP timeout after that attempt's ``at``, and
    after its ``last_failure_at``."""
    health, table = make()
    change = health.on_failure(W, T0 + 30.0, began=T0)
    assert change == failing(T0)
    publish(table, change)
    assert health.on_failure(W, T0 + 3600.0 + 30.0, began=T0 + 3600.0) == failing(T0, T0 + 3600.0)
    # A start after the time it is known (a clock stepped back) is taken as that time.
    fresh, _ = make()
    assert fresh.on_failure(W, T0, began=T0 + 5.0) == failing(T0)
    gone, _ = make()
    assert gone.on_gone(W, T0 + 30.0, began=T0) == HealthChange(W, "disabled", T0, "gone")
