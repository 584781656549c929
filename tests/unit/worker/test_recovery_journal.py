"""Taking over recoveries: only running ones of webhooks this worker owns, only when released or
not recorded for a while, never one this worker runs; one whose webhook is gone is failed.
Forgetting them: only ended ones, once the retention has passed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.admin.recovery import Operation, RecoveryRequest
from bridge.api.recoveries import Recoveries
from bridge.contract import jsoncanon
from bridge.subscriptions.freshness import TableFreshness
from bridge.subscriptions.serial import KeyedLocks
from bridge.subscriptions.webhook import Webhook, webhook_from_record
from bridge.worker.recovery_journal import FORGET_STEP, forget_ended, take_over
from bridge.worker.recovery_view import RecoveryView
from tests.support.builders import webhook_record
from tests.support.journals import Journal, ViewJournal
from tests.support.turns import turns_during

NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
WEBHOOKS = {w: webhook_from_record(webhook_record(id=w)) for w in ("a", "b")}


async def _ends() -> Mapping[int, int]:
    return {}


class Never:
    """A runner that never finishes (the test only looks at what was started)."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def __call__(self, operation: Operation) -> Operation:
        self.ran.append(operation.id)
        return operation


def recorded(
    operation_id: str, webhook: Webhook, *, runner: str | None, age: float, state: str = "running"
) -> bytes:
    operation = Operation(
        RecoveryRequest(webhook, NOW - timedelta(hours=2), NOW - timedelta(hours=1)),
        id=operation_id,
        state=state,
        runner=runner,
        positions={"t:0": 3},
    )
    return jsoncanon.dumps(operation.to_record(updated_at=NOW.timestamp() - age))


async def test_only_released_or_silent_recoveries_of_owned_webhooks_are_resumed() -> None:
    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    rows = [
        ("released", WEBHOOKS["a"], None, 1.0, "running"),
        ("silent", WEBHOOKS["a"], "http://w1", 60.0, "running"),
        ("live", WEBHOOKS["a"], "http://w1", 1.0, "running"),
        ("finished", WEBHOOKS["a"], None, 60.0, "done"),
        ("not-mine", WEBHOOKS["b"], None, 60.0, "running"),
    ]
    for offset, (rid, webhook, runner, age, state) in enumerate(rows):
        view.apply(
            0, offset, rid.encode(), recorded(rid, webhook, runner=runner, age=age, state=state)
        )
    journal, runner = ViewJournal(view), Never()
    recoveries = Recoveries(runner, journal=journal, url="http://w2")
    resumed = await take_over(
        view,
        recoveries,
        owns=lambda webhook_id: webhook_id == "a",
        webhook=WEBHOOKS.get,
        wall_time=NOW.timestamp,
        stale_after=15.0,
    )
    assert sorted(resumed) == ["released", "silent"]
    assert {r["id"]: (r["runner"], r["resumed"]) for r in journal.records[:2]} == {
        "released": ("http://w2", 1),
        "silent": ("http://w2", 1),
    }
    # The positions come along: the resumed run reads on from them.
    assert all(r["positions"] == {"t:0": 3} for r in journal.records[:2])


async def test_a_recovery_this_worker_runs_or_whose_webhook_is_gone_is_not_resumed() -> None:
    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    view.apply(0, 0, b"gone", recorded("gone", WEBHOOKS["a"], runner=None, age=60.0))
    journal = ViewJournal(view)
    recoveries = Recoveries(Never(), journal=journal, url="http://w2")
    resumed = await take_over(
        view, recoveries, owns=lambda _: True, webhook=lambda _: None, wall_time=NOW.timestamp
    )
    assert resumed == []
    assert (journal.records[-1]["state"], journal.records[-1]["error"]) == (
        "failed",
        "webhook_deleted",
    )


async def test_a_webhook_the_table_has_not_read_yet_is_not_judged_gone() -> None:
    """A starting worker's table of webhooks may not hold the recovery's webhook yet: the
    recovery is failed as ``webhook_deleted`` only once the table is current and still lacks
    it; while it cannot be shown current, the recovery waits for the next turn; a webhook that
    the table applies meanwhile gets its recovery resumed."""
    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    view.apply(0, 0, b"r1", recorded("r1", WEBHOOKS["a"], runner=None, age=60.0))
    journal = ViewJournal(view)
    recoveries = Recoveries(Never(), journal=journal, url="http://w2")
    table: dict[str, Webhook] = {}
    asked: list[str] = []

    async def not_current() -> bool:
        asked.append("not current")
        return False

    async def current_after_reading_a() -> bool:
        asked.append("current")
        table["a"] = WEBHOOKS["a"]
        return True

    async def turn(table_current: Any) -> list[str]:
        return await take_over(
            view,
            recoveries,
            owns=lambda _: True,
            webhook=table.get,
            wall_time=NOW.timestamp,
            table_current=table_current,
        )

    assert await turn(not_current) == [] and journal.records == []
    assert await turn(current_after_reading_a) == ["r1"]
    assert [r["state"] for r in journal.records] == ["running"]
    assert asked == ["not current", "current"]


async def test_a_webhook_still_missing_from_a_current_table_is_gone() -> None:
    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    view.apply(0, 0, b"gone", recorded("gone", WEBHOOKS["a"], runner=None, age=60.0))
    journal = ViewJournal(view)
    recoveries = Recoveries(Never(), journal=journal, url="http://w2")

    async def current() -> bool:
        return True

    resumed = await take_over(
        view,
        recoveries,
        owns=lambda _: True,
        webhook=lambda _: None,
        wall_time=NOW.timestamp,
        table_current=current,
    )
    assert resumed == [] and journal.records[-1]["error"] == "webhook_deleted"


async def test_a_recovery_of_a_deleted_webhook_whose_id_was_taken_again_is_gone() -> None:
    """Released, then its webhook deleted and another created with the same id before the
    owner looked: failed ``webhook_deleted``, not resumed for the new webhook (until
    2026-12-06 it was: the old window's events went to the new webhook, and its overlapping
    recoveries were refused naming one it could not see). One begun after the webhook was
    created is resumed."""
    from bridge.contract.events import format_timestamp

    def started(operation_id: str, at: datetime) -> bytes:
        operation = Operation(
            RecoveryRequest(WEBHOOKS["a"], NOW - timedelta(hours=5), NOW - timedelta(hours=4)),
            id=operation_id,
            runner=None,
            positions={"t:0": 3},
            started_at=at.timestamp(),
        )
        return jsoncanon.dumps(operation.to_record(updated_at=NOW.timestamp() - 60))

    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    view.apply(0, 0, b"old", started("old", NOW - timedelta(hours=3)))
    view.apply(0, 1, b"new", started("new", NOW - timedelta(minutes=30)))
    journal = ViewJournal(view)
    runner = Never()
    recoveries = Recoveries(runner, journal=journal, url="http://w2")
    again = webhook_from_record(
        webhook_record(id="a", created_at=format_timestamp(NOW - timedelta(hours=1)))
    )
    resumed = await take_over(
        view, recoveries, owns=lambda _: True, webhook=lambda _: again, wall_time=NOW.timestamp
    )
    assert resumed == ["new"]
    failed = [r for r in journal.records if r["id"] == "old"]
    assert [(r["state"], r["error"]) for r in failed] == [("failed", "webhook_deleted")]
    await asyncio.sleep(0)
    assert runner.ran == ["new"]
    await recoveries.close()


async def test_ended_recoveries_of_owned_webhooks_are_forgotten_after_the_retention() -> None:
    """Only ended ones, only of webhooks this worker owns, only once ``retention`` has passed
    since their last record (at once when it has no readable time); one of no webhook by any
    worker."""
    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    rows = [
        ("old-done", WEBHOOKS["a"], 3600.0, "done"),
        ("old-failed", WEBHOOKS["a"], 7200.0, "failed"),
        ("old-cancelled", WEBHOOKS["a"], 3601.0, "cancelled"),
        ("recent-done", WEBHOOKS["a"], 60.0, "done"),
        ("old-running", WEBHOOKS["a"], 7200.0, "running"),
        ("old-not-mine", WEBHOOKS["b"], 7200.0, "done"),
    ]
    for offset, (rid, webhook, age, state) in enumerate(rows):
        view.apply(
            0, offset, rid.encode(), recorded(rid, webhook, runner=None, age=age, state=state)
        )
    odd = [
        ("no-webhook", {"id": "no-webhook", "state": "done", "updated_at": "2024-01-15T10:00:00Z"}),
        ("no-time", {"id": "no-time", "webhook_id": "a", "state": "done", "updated_at": "soon"}),
    ]
    for offset, (rid, value) in enumerate(odd, start=len(rows)):
        view.apply(0, offset, rid.encode(), jsoncanon.dumps(value))
    journal = Journal()
    forgotten = await forget_ended(
        view, journal, owns=lambda w: w == "a", retention=3600.0, wall_time=NOW.timestamp
    )
    expected = ["no-time", "no-webhook", "old-cancelled", "old-done", "old-failed"]
    assert sorted(forgotten) == sorted(journal.forgotten) == expected
    # Once their tombstones are read back, the view holds only the others.
    for offset, rid in enumerate(forgotten, start=100):
        view.apply(0, offset, rid.encode(), None)
    assert sorted(rid for rid, _ in view.ended()) == ["old-not-mine", "recent-done"]
    assert [r["id"] for r in view.running()] == ["old-running"]


async def test_a_webhooks_ended_recoveries_are_kept_to_its_newest_within_the_retention() -> None:
    """Past ``keep_per_webhook`` ended ones of a webhook, the oldest go at once: a token asking
    for redeliveries as fast as its rate allows kept every one for the retention (7 days),
    in every worker, until 2026-12-06. Running ones and other webhooks' are not counted."""
    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    rows = [(f"a{n:02d}", WEBHOOKS["a"], 100.0 - n, "done") for n in range(12)]
    rows += [("a-running", WEBHOOKS["a"], 500.0, "running")]
    rows += [(f"b{n}", WEBHOOKS["b"], 100.0 - n, "cancelled") for n in range(3)]
    for offset, (rid, webhook, age, state) in enumerate(rows):
        view.apply(
            0, offset, rid.encode(), recorded(rid, webhook, runner=None, age=age, state=state)
        )
    journal = Journal()
    forgotten = await forget_ended(
        view,
        journal,
        owns=lambda w: True,
        retention=3600.0,
        wall_time=NOW.timestamp,
        keep_per_webhook=5,
    )
    # a00 is the oldest (aged 100 s), a11 the newest.
    assert sorted(forgotten) == sorted(journal.forgotten) == [f"a{n:02d}" for n in range(7)]


async def test_forgetting_many_ended_recoveries_lets_the_loop_run() -> None:
    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    count = FORGET_STEP * 3
    for n in range(count):
        rid = f"r{n}"
        view.apply(
            0, n, rid.encode(), recorded(rid, WEBHOOKS["a"], runner=None, age=10.0, state="done")
        )
    journal = Journal()
    forgetting = forget_ended(
        view,
        journal,
        owns=lambda w: True,
        retention=3600.0,
        wall_time=NOW.timestamp,
        keep_per_webhook=count,
    )
    forgotten, turns = await turns_during(forgetting)
    assert forgotten == [] and turns >= 3


class Held:
    def __init__(self) -> None:
        self.ran: list[str] = []

    async def __call__(self, operation: Operation) -> Operation:
        self.ran.append(operation.id)
        await asyncio.sleep(3600)
        return operation


async def test_a_recovery_answered_cancelled_is_never_resumed() -> None:
    """A released recovery cancelled through a worker that does not own its webhook, just
    before the owner's look for recoveries to take over, whose view has not applied the
    cancelled record yet: the owner reads the newest record before resuming, so the answer
    "cancelled" holds (nothing resumed, no "running" written over it)."""
    journal = Journal()  # the recoveries topic
    owner_view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    released = recorded("r", WEBHOOKS["a"], runner=None, age=1.0)
    owner_view.apply(0, 0, b"r", released)

    # The DELETE reaches a worker that runs nothing: it records the recovery cancelled.
    other = Recoveries(Held(), journal=journal, url="http://w1")
    operation = Operation.from_record(jsoncanon.loads(released), WEBHOOKS["a"])
    answered = await other.cancel_recorded(operation)
    assert answered.state == "cancelled"

    # The owner's next look (every 2 s), before its view applied the cancelled record.
    runner = Held()
    owner = Recoveries(runner, journal=journal, url="http://w2")
    resumed = await take_over(
        owner_view,
        owner,
        owns=lambda _: True,
        webhook=WEBHOOKS.get,
        wall_time=NOW.timestamp,
    )
    try:
        await asyncio.sleep(0)
        assert resumed == [] and runner.ran == []
        assert journal.records[-1]["state"] == "cancelled"
    finally:
        await owner.close()


async def test_a_recovery_of_a_webhook_given_up_meanwhile_is_left_to_its_owner() -> None:
    """Owned when the turn looked, given up (a rebalance began) by the time it resumes: the
    fence refuses it, nothing is written, and the turn goes on with the others."""
    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    view.apply(0, 0, b"r-a", recorded("r-a", WEBHOOKS["a"], runner=None, age=60.0))
    view.apply(0, 1, b"r-b", recorded("r-b", WEBHOOKS["b"], runner=None, age=60.0))
    locks = KeyedLocks(may_write=lambda webhook_id: webhook_id == "b")
    journal = ViewJournal(view)
    recoveries = Recoveries(Never(), journal=journal, url="http://w2", writing=locks.writing)
    resumed = await take_over(
        view, recoveries, owns=lambda _: True, webhook=WEBHOOKS.get, wall_time=NOW.timestamp
    )
    assert resumed == ["r-b"] and [r["id"] for r in journal.records] == ["r-b"]
    await recoveries.close()


@pytest.mark.parametrize(
    "change",
    [
        {"rate": 0},  # released with a rate no recovery can go at
        {"since": "yesterday"},
        {"scanned": 2**62},  # nor can it be written back as it is
    ],
)
async def test_a_running_record_that_is_not_a_recovery_ends_failed_and_is_forgotten(
    change: dict[str, Any],
) -> None:
    """Recorded failed (``invalid_record``), so that no worker looks at it again and it is
    forgotten after the retention (until 2026-12-07 it was skipped with a warning every turn,
    running for ever)."""
    view = RecoveryView(TableFreshness(_ends, timeout=1.0))
    record = jsoncanon.loads(recorded("odd", WEBHOOKS["a"], runner=None, age=60.0))
    view.apply(0, 0, b"odd", json.dumps({**record, **change}).encode())
    assert [r["id"] for r in view.running()] == ["odd"]
    journal, runner = ViewJournal(view), Never()
    recoveries = Recoveries(runner, journal=journal, url="http://w2")

    async def turn() -> list[str]:
        return await take_over(
            view, recoveries, owns=lambda _: True, webhook=WEBHOOKS.get, wall_time=NOW.timestamp
        )

    assert await turn() == [] and runner.ran == []
    [failed] = journal.records
    assert (failed["state"], failed["error"], failed["runner"]) == (
        "failed",
        "invalid_record",
        None,
    )
    view.apply(0, 1, b"odd", jsoncanon.dumps(failed))  # as the topic gives it back
    assert list(view.running()) == [] and await turn() == [] and len(journal.records) == 1
    forgotten = await forget_ended(
        view,
        journal,
        owns=lambda _: True,
        retention=3600.0,
        wall_time=lambda: NOW.timestamp() + 3601,
    )
    assert forgotten == ["odd"]
