"""bridge.worker.disables: which disables the owner of a webhook writes, and that it writes them
under the lock of the API's changes, with its table current, once per status record."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.config import Settings
from bridge.contract.schemas import is_valid
from bridge.metrics import Metrics
from bridge.subscriptions.changes import disabled_record
from bridge.subscriptions.freshness import Placed
from bridge.subscriptions.serial import KeyedLocks
from bridge.subscriptions.webhook import Webhook, webhook_from_record
from bridge.worker import disables
from bridge.worker.disables import DisableWriter, disable_verdict
from tests.support.jobs import spec_webhook
from tests.support.metrics import sample
from tests.support.waiting import PROMPT

CREATED = "2024-01-15T09:00:00.000Z"
VERSION = "2024-01-15T09:30:00.000Z"
VERSION_KEY = "webhook_updated_at"
T_FAIL = 1705312800.0  # 2024-01-15T10:00:00Z


def webhook(created: str = CREATED, version: str | None = VERSION, **changes: Any) -> Webhook:
    """``version`` None: a producer's record without ``updated_at``."""
    times = {"created_at": created, "updated_at": version}
    extra = MappingProxyType({k: v for k, v in times.items() if v is not None})
    return spec_webhook("https://example.test/hook", "whsec_x", extra=extra, **changes)


def disabled(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "webhook_id": "webhook_abc",
        "state": "disabled",
        "failing_since": T_FAIL,
        "reason": "gone",
        "updated_at": "2024-01-15T10:00:01.000Z",
        "webhook_created_at": CREATED,
        "webhook_updated_at": VERSION,
    }
    record.update(changes)
    return record


UNVERSIONED = {k: v for k, v in disabled().items() if k not in ("webhook_created_at", VERSION_KEY)}
NO_VERSION = {
    k: v for k, v in disabled(applied_at="2024-01-15T10:00:02.000Z").items() if k != VERSION_KEY
}


@pytest.mark.parametrize(
    ("current", "status", "verdict"),
    [
        (webhook(), disabled(), "written"),
        (webhook(), {**disabled(), "state": "failing"}, None),
        (webhook(), None, None),
        (None, disabled(), "deleted"),
        (webhook(active=False), disabled(), "inactive"),
        # another webhook of the id: the deleted webhook's endpoint failed
        (webhook(created="2024-01-15T09:10:00.000Z"), disabled(), "other_webhook"),
        # a record without webhook_created_at: created after the failing period began
        (
            webhook(created="2024-01-15T10:30:00.000Z"),
            {k: v for k, v in disabled().items() if k != "webhook_created_at"},
            "other_webhook",
        ),
        # changed (PATCH, rotation) after the deciding delivery was made
        (webhook(version="2024-01-15T10:00:00.500Z"), disabled(), "changed"),
        # status records written before 2026-12-04, naming no version: the deciding worker
        # turned the webhook off itself, so one on now was turned on since
        (webhook(), UNVERSIONED, "changed"),
        # 2026-12-04 to 2026-12-06, made for a webhook without updated_at, unmarked: applied
        # by an owner that did not mark it, or not: left on
        (
            webhook(version=None),
            {k: v for k, v in disabled().items() if k != VERSION_KEY},
            "changed",
        ),
        (webhook(version=None), UNVERSIONED, "changed"),
        (webhook(active=False), UNVERSIONED, "inactive"),
        (webhook(), disabled(failing_since=None), "written"),
        # applied by the owner already: never again, whatever the webhook is now
        (webhook(), disabled(applied_at="2024-01-15T10:00:02.000Z"), None),
        (webhook(version=None), NO_VERSION, None),
        # made for a webhook without updated_at (a producer's record): that one, not another
        (webhook(version=None), {**NO_VERSION, "applied_at": None}, "written"),
        (webhook(), {**NO_VERSION, "applied_at": None}, "changed"),
    ],
)
def test_the_verdict(current: Webhook | None, status: dict[str, Any] | None, verdict: str) -> None:
    assert disable_verdict(current, status) == verdict


class _Freshness:
    def __init__(self, current: bool = True) -> None:
        self.current = current
        self.waits = 0

    async def wait_current(self, received_at: float) -> bool:
        self.waits += 1
        return self.current


class _Store:
    def __init__(self, locks: KeyedLocks) -> None:
        self.locks = locks
        self.calls: list[tuple[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []

    async def disable(self, current: Webhook, reason: str) -> Webhook:
        # The API's changes of this webhook wait meanwhile: the lock is held.
        self.calls.append(("disable", (current.id, reason, len(self.locks))))
        return webhook_from_record(disabled_record(current, reason, datetime.now(UTC)))

    def placed(self, webhook_id: str) -> Placed | None:
        """Where its disable was acknowledged."""
        return Placed(0, 7) if ("disable", (webhook_id, "gone", 1)) in self.calls else None

    async def put_status(self, record: dict[str, Any]) -> None:
        self.calls.append(("status", record["state"]))
        self.statuses.append(record)

    async def delete_status(self, webhook_id: str) -> None:
        self.calls.append(("status deleted", webhook_id))


def _writer(
    monkeypatch: pytest.MonkeyPatch,
    *,
    current: Webhook | None,
    statuses: dict[str, dict[str, Any]],
    owns: bool = True,
    fresh: bool = True,
    may_write: bool = True,
    applied: Callable[[Placed], bool] | None = None,
) -> tuple[DisableWriter, _Store, _Freshness, CollectorRegistry]:
    registry = CollectorRegistry()
    if applied is None:
        locks = KeyedLocks(may_write=lambda _: may_write)
    else:  # waits for a write until its place is applied, never by time
        locks = KeyedLocks(may_write=lambda _: may_write, applied=applied, seen_within=0.0)
    store = _Store(locks)
    freshness = _Freshness(fresh)
    writer = DisableWriter(
        Settings(),
        index_get=lambda _: current,
        statuses=statuses,
        freshness=freshness,
        locks=locks,
        owns=lambda _: owns,
        metrics=Metrics(registry),
    )

    async def opened() -> _Store:
        return store

    monkeypatch.setattr(writer, "_opened", opened)
    return writer, store, freshness, registry


async def _settled(writer: DisableWriter) -> None:
    for _ in range(100):
        task = writer._task
        if task is None or task.done():
            return
        await asyncio.wait({task}, timeout=1.0)
    raise AssertionError("the writer did not settle")


async def test_the_owner_writes_the_disable_under_the_lock_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    statuses = {"webhook_abc": disabled()}
    writer, store, freshness, registry = _writer(monkeypatch, current=webhook(), statuses=statuses)
    writer.offer(["webhook_abc", "webhook_abc"])
    await _settled(writer)
    # Turned off, then the record marked applied (the same decision, under the lock still).
    assert store.calls == [("disable", ("webhook_abc", "gone", 1)), ("status", "disabled")]
    (applied,) = store.statuses
    assert applied == {**disabled(), "applied_at": applied["applied_at"]}
    assert is_valid("schemas/status.json", applied) and isinstance(applied["applied_at"], str)
    assert freshness.waits == 1
    # A rebalance offers it again: judged already, not written nor counted twice.
    writer.offer_owned(lambda _: True)
    await _settled(writer)
    assert len(store.calls) == 2
    assert sample(registry, "webhook_bridge_disable_writes_total", result="written") == 1
    assert sample(registry, "webhook_bridge_webhooks_disabled_total", reason="gone") == 1


async def test_a_change_after_the_owners_disable_waits_until_the_table_applied_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disable's place on the topic is kept under its lock: a change of the webhook read
    from a table that still shows the version before waits for the table to apply it, however
    long (until 2026-12-07, at most 5 s after the disable)."""
    applied: set[Placed] = set()
    statuses = {"webhook_abc": disabled()}
    writer, store, _, _ = _writer(
        monkeypatch, current=webhook(), statuses=statuses, applied=applied.__contains__
    )
    writer.offer(["webhook_abc"])
    await _settled(writer)
    assert store.calls[0][0] == "disable"

    async def before() -> Webhook | None:
        return webhook()  # on: the table has not applied the disable

    read = store.locks.read_as_written
    assert await read("webhook_abc", before, timeout=0.02) == (False, webhook())
    applied.add(Placed(0, 7))
    assert await read("webhook_abc", before, timeout=PROMPT) == (True, webhook())


async def test_a_webhook_turned_on_after_its_disable_was_applied_stays_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Disabled by its owner; then a producer publishes the webhook active again without
    updated_at, which cannot be told from the version the delivery was made for. The next
    owner (a rebalance) reads the applied record and leaves it on: until 2026-12-06 it
    turned the webhook off again at every rebalance."""
    decided = {**disabled(), "applied_at": None}
    del decided[VERSION_KEY]  # made for a producer's record without updated_at
    statuses = {"webhook_abc": decided}
    timeless = webhook(version=None)
    writer, store, _, _ = _writer(monkeypatch, current=timeless, statuses=statuses)
    writer.offer(["webhook_abc"])
    await _settled(writer)
    assert store.calls == [("disable", ("webhook_abc", "gone", 1)), ("status", "disabled")]
    statuses["webhook_abc"] = store.statuses[-1]  # the status topic now holds the mark
    assert writer._judged.keys() == {"webhook_abc"}
    writer.offer(["webhook_abc"])  # as the mark arrives: nothing left to remember of it
    assert writer._judged == {} and writer._task is not None and writer._task.done()
    # The next owner, the webhook on again as the producer wrote it.
    other, other_store, freshness, registry = _writer(
        monkeypatch, current=timeless, statuses=statuses
    )
    other.offer_owned(lambda _: True)
    await _settled(other)
    assert other_store.calls == [] and freshness.waits == 0
    assert sample(registry, "webhook_bridge_disable_writes_total", result="written") == 0


async def test_a_disable_of_a_webhook_off_already_is_marked_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing is written but the mark, so a webhook turned on later without updated_at is
    not turned off by this old decision."""
    statuses = {"webhook_abc": {**disabled(), "applied_at": None}}
    current = webhook(active=False)
    writer, store, _, registry = _writer(monkeypatch, current=current, statuses=statuses)
    writer.offer(["webhook_abc"])
    await _settled(writer)
    assert store.calls == [("status", "disabled")]
    assert isinstance(store.statuses[0]["applied_at"], str)
    assert sample(registry, "webhook_bridge_disable_writes_total", result="inactive") == 1
    assert sample(registry, "webhook_bridge_webhooks_disabled_total", reason="gone") == 0


async def test_the_disable_of_a_deleted_webhook_is_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A status left for a deleted webhook would be kept by every worker for ever."""
    statuses = {"webhook_abc": {**disabled(), "applied_at": None}}
    writer, store, _, registry = _writer(monkeypatch, current=None, statuses=statuses)
    writer.offer(["webhook_abc"])
    await _settled(writer)
    assert store.calls == [("status deleted", "webhook_abc")]
    assert sample(registry, "webhook_bridge_disable_writes_total", result="deleted") == 1


@pytest.mark.parametrize("state", ["failing", "healthy", "disabled"])
async def test_the_status_of_a_webhook_that_is_gone_is_deleted_by_its_owner(
    monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """A delivery in flight at the webhook's delete publishes its status after the delete's
    tombstone (a producer's delete writes none): the owner, its table current, deletes it;
    a status of a webhook that exists is left."""
    statuses = {"webhook_abc": {**disabled(), "state": state}}
    writer, store, freshness, registry = _writer(monkeypatch, current=None, statuses=statuses)
    writer.offer(["webhook_abc"])
    await _settled(writer)
    assert store.calls == [("status deleted", "webhook_abc")] and freshness.waits == 1
    counted = sample(registry, "webhook_bridge_disable_writes_total", result="deleted")
    assert counted == (1 if state == "disabled" else 0)
    kept, kept_store, _, _ = _writer(
        monkeypatch, current=webhook(), statuses={"webhook_abc": {**disabled(), "state": state}}
    )
    kept.offer(["webhook_abc"])
    await _settled(kept)
    assert ("status deleted", "webhook_abc") not in kept_store.calls


async def test_a_webhook_changed_since_the_delivery_stays_on_and_its_health_starts_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    statuses = {"webhook_abc": disabled()}
    changed = webhook(version="2024-01-15T10:00:00.700Z")
    writer, store, _, registry = _writer(monkeypatch, current=changed, statuses=statuses)
    writer.offer(["webhook_abc"])
    await _settled(writer)
    assert store.calls == [("status", "healthy")]
    assert sample(registry, "webhook_bridge_disable_writes_total", result="changed") == 1


async def test_a_webhook_this_worker_does_not_own_is_left_to_its_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, store, freshness, _ = _writer(
        monkeypatch, current=webhook(), statuses={"webhook_abc": disabled()}, owns=False
    )
    writer.offer(["webhook_abc"])
    await _settled(writer)
    assert store.calls == [] and freshness.waits == 0


@pytest.mark.parametrize("current", [webhook(), webhook(version="2024-01-15T10:00:00.700Z")])
async def test_nothing_is_written_once_the_worker_gave_the_webhook_up(
    monkeypatch: pytest.MonkeyPatch, current: Webhook
) -> None:
    """Owned when the round began, given up (a rebalance began) by the time it is written:
    neither the disable nor the healthy status is written, nor is it judged, so this worker
    judges it again if it is given the webhook back."""
    statuses = {"webhook_abc": disabled()}
    writer, store, _, registry = _writer(
        monkeypatch, current=current, statuses=statuses, may_write=False
    )
    writer.offer(["webhook_abc"])
    await _settled(writer)
    assert store.calls == [] and writer._judged == {}
    assert sample(registry, "webhook_bridge_disable_writes_total", result="written") == 0


async def test_other_statuses_are_not_looked_at(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = {"webhook_abc": {**disabled(), "state": "failing"}}
    writer, store, freshness, _ = _writer(monkeypatch, current=webhook(), statuses=statuses)
    writer.offer(["webhook_abc", "unknown"])
    await _settled(writer)
    assert store.calls == [] and freshness.waits == 0 and writer._task is None


async def test_a_table_not_shown_current_is_tried_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(disables, "RETRY_AFTER", 0.01)
    statuses = {"webhook_abc": disabled()}
    writer, store, freshness, _ = _writer(
        monkeypatch, current=webhook(), statuses=statuses, fresh=False
    )
    writer.offer(["webhook_abc"])
    await _settled(writer)
    assert store.calls == []
    freshness.current = True
    for _ in range(200):
        await asyncio.sleep(0.01)
        await _settled(writer)
        if store.calls:
            break
    assert store.calls[0] == ("disable", ("webhook_abc", "gone", 1))
    await writer.aclose()
