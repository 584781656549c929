"""bridge.worker.disables: which disables the owner of a webhook writes, and that it writes them
under the lock of the API's changes, with its table current, once per status record."""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.subscriptions.serial import KeyedLocks
from bridge.subscriptions.webhook import Webhook
from bridge.worker import disables
from bridge.worker.disables import DisableWriter, disable_verdict
from tests.support.jobs import spec_webhook
from tests.support.metrics import sample

CREATED = "2024-01-15T09:00:00.000Z"
VERSION = "2024-01-15T09:30:00.000Z"
VERSION_KEY = "webhook_updated_at"
T_FAIL = 1705312800.0  # 2024-01-15T10:00:00Z


def webhook(created: str = CREATED, version: str = VERSION, **changes: Any) -> Webhook:
    extra = MappingProxyType({"created_at": created, "updated_at": version})
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
        # status records written before webhook_updated_at: the webhook as it is
        (
            webhook(),
            {k: v for k, v in disabled().items() if k not in ("webhook_created_at", VERSION_KEY)},
            "written",
        ),
        (webhook(), disabled(failing_since=None), "written"),
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

    async def disable(self, current: Webhook, reason: str) -> Webhook:
        # The API's changes of this webhook wait meanwhile: the lock is held.
        self.calls.append(("disable", (current.id, reason, len(self.locks))))
        return current

    async def put_status(self, record: dict[str, Any]) -> None:
        self.calls.append(("status", record["state"]))


def _writer(
    monkeypatch: pytest.MonkeyPatch,
    *,
    current: Webhook | None,
    statuses: dict[str, dict[str, Any]],
    owns: bool = True,
    fresh: bool = True,
    may_write: bool = True,
) -> tuple[DisableWriter, _Store, _Freshness, CollectorRegistry]:
    registry = CollectorRegistry()
    locks = KeyedLocks(may_write=lambda _: may_write)
    store = _Store(locks)
    freshness = _Freshness(fresh)
    writer = DisableWriter(
        Settings(),
        index_get=lambda _: current,
        statuses=statuses,
        freshness=freshness,  # type: ignore[arg-type]
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
    assert store.calls == [("disable", ("webhook_abc", "gone", 1))]
    assert freshness.waits == 1
    # A rebalance offers it again: judged already, not written nor counted twice.
    writer.offer_owned(lambda _: True)
    await _settled(writer)
    assert len(store.calls) == 1
    assert sample(registry, "webhook_bridge_disable_writes_total", result="written") == 1


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
    assert store.calls == [("disable", ("webhook_abc", "gone", 1))]
    await writer.aclose()
